//! Project and service names.
//!
//! Service names follow the service-deployment manual exactly: they begin with a
//! lower-case letter, contain only `a-z`, `0-9` and `-`, end with a letter or a
//! digit, and have at most 32 characters counting the `<project>-` prefix. Like
//! Octue's kebab case they may not contain two hyphens in a row.
//!
//! Project names are what users log in with (`experiment_2`): they begin with a
//! lower-case letter, contain `a-z`, `0-9`, `-` and `_`, end with a letter or a
//! digit, hold no two separators in a row, and have at most 30 characters (so a
//! one-letter service still fits the 32-character limit). A project's SRUID
//! namespace is its name with every `_` turned into `-` (`experiment_2` →
//! `experiment-2`); two projects whose namespaces would be the same cannot both
//! exist, which the store enforces.

use std::fmt;

/// The longest `<project>-<service>` the deployment manual allows.
pub const MAX_QUALIFIED_NAME_LEN: usize = 32;
/// The longest project name: the manual's 32 less a hyphen and a one-letter service.
pub const MAX_PROJECT_LEN: usize = MAX_QUALIFIED_NAME_LEN - 2;

/// Why a project or service name was refused. Every message names the value and
/// the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} name `{value}` must begin with a lower-case letter (a-z)")]
    BadStart { kind: &'static str, value: String },
    #[error(
        "{kind} name `{value}` may contain only {allowed}; `{found}` at position {position} is not allowed"
    )]
    BadChar {
        kind: &'static str,
        value: String,
        allowed: &'static str,
        found: char,
        position: usize,
    },
    #[error("{kind} name `{value}` must end with a lower-case letter or a digit, not `{found}`")]
    BadEnd {
        kind: &'static str,
        value: String,
        found: char,
    },
    #[error(
        "{kind} name `{value}` must not contain two separators in a row (`{pair}`); Octue names are kebab case"
    )]
    DoubleSeparator {
        kind: &'static str,
        value: String,
        pair: String,
    },
    #[error("project name `{value}` has {len} characters; at most {MAX_PROJECT_LEN} are allowed")]
    ProjectTooLong { value: String, len: usize },
    #[error(
        "service name `{value}` is too long: `{qualified}` has {len} characters, at most {MAX_QUALIFIED_NAME_LEN} are allowed counting the `<project>-` prefix; choose a name of at most {room} characters"
    )]
    QualifiedTooLong {
        value: String,
        qualified: String,
        len: usize,
        room: usize,
    },
}

/// A validated project name, e.g. `experiment_2`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectName(String);

/// A validated service name, e.g. `hpc-preprocessor`. Only meaningful with its
/// project: the length rule counts the `<project>-` prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

fn check_shape(
    kind: &'static str,
    value: &str,
    allowed: &'static str,
    is_allowed: impl Fn(char) -> bool,
    is_separator: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    let mut chars = value.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty { kind });
    };
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadStart {
            kind,
            value: value.to_owned(),
        });
    }
    if let Some((position, found)) = value.chars().enumerate().find(|&(_, c)| !is_allowed(c)) {
        return Err(NameError::BadChar {
            kind,
            value: value.to_owned(),
            allowed,
            found,
            position: position + 1,
        });
    }
    let last = value.chars().next_back().unwrap_or(first);
    if !(last.is_ascii_lowercase() || last.is_ascii_digit()) {
        return Err(NameError::BadEnd {
            kind,
            value: value.to_owned(),
            found: last,
        });
    }
    let pair = value
        .as_bytes()
        .windows(2)
        .find(|w| is_separator(w[0] as char) && is_separator(w[1] as char));
    if let Some(pair) = pair {
        return Err(NameError::DoubleSeparator {
            kind,
            value: value.to_owned(),
            pair: String::from_utf8_lossy(pair).into_owned(),
        });
    }
    Ok(())
}

impl ProjectName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_shape(
            "project",
            value,
            "lower-case letters, digits, `-` and `_`",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_',
            |c| c == '-' || c == '_',
        )?;
        let len = value.chars().count();
        if len > MAX_PROJECT_LEN {
            return Err(NameError::ProjectTooLong {
                value: value.to_owned(),
                len,
            });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The project's SRUID namespace: the name with `_` turned into `-`.
    pub fn namespace(&self) -> String {
        self.0.replace('_', "-")
    }
}

impl ServiceName {
    /// Validates `value` as the name of a service in `project`.
    pub fn parse(project: &ProjectName, value: &str) -> Result<Self, NameError> {
        check_shape(
            "service",
            value,
            "lower-case letters, digits and `-`",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
            |c| c == '-',
        )?;
        let qualified = format!("{}-{}", project.as_str(), value);
        let len = qualified.chars().count();
        if len > MAX_QUALIFIED_NAME_LEN {
            return Err(NameError::QualifiedTooLong {
                value: value.to_owned(),
                room: MAX_QUALIFIED_NAME_LEN.saturating_sub(project.as_str().len() + 1),
                qualified,
                len,
            });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(p: &str) -> ProjectName {
        ProjectName::parse(p).expect("valid project")
    }

    /// Every rule of the deployment manual, plus Octue's kebab-case rule, as a table.
    #[test]
    fn service_name_rules() {
        let p = project("experiment_2"); // 12 characters + `-` leaves 19 for the name
        let cases: &[(&str, Result<(), &str>)] = &[
            ("hpc-preprocessor", Ok(())),
            ("a", Ok(())),
            ("a1", Ok(())),
            ("svc-2-b", Ok(())),
            ("", Err("must not be empty")),
            ("1abc", Err("must begin with a lower-case letter")),
            ("-abc", Err("must begin with a lower-case letter")),
            ("Abc", Err("must begin with a lower-case letter")),
            ("aBc", Err("`B` at position 2 is not allowed")),
            ("a_b", Err("`_` at position 2 is not allowed")),
            ("a.b", Err("`.` at position 2 is not allowed")),
            ("a b", Err("` ` at position 2 is not allowed")),
            ("abé", Err("`é` at position 3 is not allowed")),
            (
                "abc-",
                Err("must end with a lower-case letter or a digit, not `-`"),
            ),
            ("a--b", Err("two separators in a row (`--`)")),
        ];
        for (name, expected) in cases {
            let got = ServiceName::parse(&p, name);
            match (expected, &got) {
                (Ok(()), Ok(_)) => {}
                (Err(needle), Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{name:?}: `{msg}` lacks `{needle}`");
                    if !name.is_empty() {
                        assert!(
                            msg.contains(&format!("`{name}`")),
                            "{msg} must name the value"
                        );
                    }
                }
                _ => panic!("{name:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    /// The 32-character limit counts `<project>-`: 31 and 32 pass, 33 fails.
    #[test]
    fn qualified_length_boundary() {
        let p = project("experiment_2");
        for (len, ok) in [(31, true), (32, true), (33, false)] {
            let name = "a".repeat(len - "experiment_2-".len());
            let got = ServiceName::parse(&p, &name);
            assert_eq!(got.is_ok(), ok, "qualified length {len}: {got:?}");
            if let Err(e) = got {
                let msg = e.to_string();
                assert!(msg.contains("33 characters"), "{msg}");
                assert!(msg.contains("at most 19 characters"), "{msg}");
            }
        }
    }

    #[test]
    fn project_name_rules() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("experiment_2", Ok("experiment-2")),
            ("octue", Ok("octue")),
            ("my-proj_1", Ok("my-proj-1")),
            ("", Err("must not be empty")),
            ("2fast", Err("must begin with a lower-case letter")),
            ("Exp", Err("must begin with a lower-case letter")),
            ("exp.2", Err("`.` at position 4")),
            ("exp_", Err("must end with")),
            ("exp__2", Err("(`__`)")),
            ("exp_-2", Err("(`_-`)")),
        ];
        for (name, expected) in cases {
            match (expected, ProjectName::parse(name)) {
                (Ok(ns), Ok(p)) => assert_eq!(&p.namespace(), ns),
                (Err(needle), Err(e)) => {
                    assert!(e.to_string().contains(needle), "{name:?}: {e}")
                }
                (exp, got) => panic!("{name:?}: expected {exp:?}, got {got:?}"),
            }
        }
        assert!(ProjectName::parse(&"a".repeat(30)).is_ok());
        let long = ProjectName::parse(&"a".repeat(31))
            .expect_err("must be refused")
            .to_string();
        assert!(long.contains("31 characters; at most 30"), "{long}");
    }
}
