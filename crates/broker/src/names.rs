//! Resource names, checked as Google checks them: `projects/P/topics/T` and
//! `projects/P/subscriptions/S`, where an id starts with a letter, is 3 to
//! 255 characters of letters, digits and `- _ . ~ + %`, and does not start
//! with `goog`.

use crate::error::BrokerError;

/// What a topic's subscriptions name once the topic is deleted.
pub const DELETED_TOPIC: &str = "_deleted-topic_";

/// Checks a topic's full name.
pub fn topic(name: &str) -> Result<&str, BrokerError> {
    resource(name, "topics", "topic")
}

/// Checks a subscription's full name.
pub fn subscription(name: &str) -> Result<&str, BrokerError> {
    resource(name, "subscriptions", "subscription")
}

/// Checks a project's name (`projects/P`) and returns `P`.
pub fn project(name: &str) -> Result<&str, BrokerError> {
    match name.strip_prefix("projects/") {
        Some(p) if valid_project(p) => Ok(p),
        _ => Err(BrokerError::InvalidArgument(format!(
            "Invalid project name: (name={name}); expected `projects/PROJECT_ID`"
        ))),
    }
}

/// The project part of a valid full name.
pub fn project_of(full: &str) -> &str {
    full.split('/').nth(1).unwrap_or_default()
}

fn resource<'a>(name: &'a str, collection: &str, kind: &str) -> Result<&'a str, BrokerError> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = matches!(parts.as_slice(), ["projects", p, c, id]
        if valid_project(p) && *c == collection && valid_id(id));
    if ok {
        Ok(parts[3])
    } else {
        Err(BrokerError::InvalidArgument(format!(
            "Invalid [{collection}] name: (name={name}); expected `projects/PROJECT_ID/{collection}/ID` where the {kind} id starts with a letter, is 3 to 255 characters of letters, digits and - _ . ~ + %, and does not start with `goog`"
        )))
    }
}

fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn valid_id(id: &str) -> bool {
    (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && !id.to_ascii_lowercase().starts_with("goog")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '%'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_google_checks_them() {
        assert_eq!(
            topic("projects/p/topics/octue.services.x"),
            Ok("octue.services.x")
        );
        assert_eq!(
            subscription("projects/my-proj/subscriptions/abc"),
            Ok("abc")
        );
        for bad in [
            "projects/p/topics/ab",
            "projects/p/topics/1abc",
            "projects/p/topics/googabc",
            "projects/p/topics/a b c",
            "projects//topics/abc",
            "topics/abc",
            "projects/p/subscriptions/abc",
        ] {
            let err = topic(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
        assert_eq!(project("projects/p"), Ok("p"));
        assert!(project("p").is_err());
        assert_eq!(project_of("projects/p/topics/t"), "p");
    }
}
