//! Service revision unique identifiers (Octue SRUIDs): `<namespace>/<name>:<tag>`.
//!
//! Namespace and name are lower kebab case (`[a-z0-9]+(-[a-z0-9]+)*`); the tag is
//! `[A-Za-z0-9_]+([-.]*[A-Za-z0-9_]+)*`, at most 128 characters. A question may
//! name a service without a tag; Rouse then resolves it to the serving revision.

use std::fmt;

/// The longest revision tag Octue accepts.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SruidError {
    #[error("SRUID `{0}` must have the form `<namespace>/<name>[:<revision_tag>]`")]
    Shape(String),
    #[error("SRUID `{value}`: {part} `{found}` must be lower kebab case ([a-z0-9]+(-[a-z0-9]+)*)")]
    NotKebab {
        value: String,
        part: &'static str,
        found: String,
    },
    #[error(
        "SRUID `{value}`: revision tag `{tag}` must be letters, digits and `_`, joined by `-` or `.`, at most {MAX_TAG_LEN} characters"
    )]
    BadTag { value: String, tag: String },
}

/// A parsed SRUID. `revision_tag` is `None` when the asker named the service only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sruid {
    pub namespace: String,
    pub name: String,
    pub revision_tag: Option<String>,
}

/// `[a-z0-9]+(-[a-z0-9]+)*`
pub fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `[A-Za-z0-9_]+([-.]*[A-Za-z0-9_]+)*`, at most 128 characters.
pub fn is_revision_tag(s: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && bytes.iter().all(|&b| word(b) || b == b'-' || b == b'.')
        && word(bytes[0])
        && word(bytes[bytes.len() - 1])
}

impl Sruid {
    pub fn parse(value: &str) -> Result<Self, SruidError> {
        let (path, tag) = match value.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (value, None),
        };
        let (namespace, name) = path
            .split_once('/')
            .ok_or_else(|| SruidError::Shape(value.to_owned()))?;
        for (part, found) in [("namespace", namespace), ("name", name)] {
            if !is_kebab(found) {
                return Err(SruidError::NotKebab {
                    value: value.to_owned(),
                    part,
                    found: found.to_owned(),
                });
            }
        }
        if let Some(tag) = tag.filter(|t| !is_revision_tag(t)) {
            return Err(SruidError::BadTag {
                value: value.to_owned(),
                tag: tag.to_owned(),
            });
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            revision_tag: tag.map(str::to_owned),
        })
    }

    /// The form used in Pub/Sub resource names: `/` and `:` become `.`, and dots
    /// inside the tag become `-` (`octue/my-service:1.2.0` → `octue.my-service.1-2-0`).
    pub fn pubsub_form(&self) -> String {
        match &self.revision_tag {
            Some(tag) => format!("{}.{}.{}", self.namespace, self.name, tag.replace('.', "-")),
            None => format!("{}.{}", self.namespace, self.name),
        }
    }
}

impl fmt::Display for Sruid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(tag) = &self.revision_tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let s = Sruid::parse("octue/my-service:1.2.0").expect("valid");
        assert_eq!(s.namespace, "octue");
        assert_eq!(s.revision_tag.as_deref(), Some("1.2.0"));
        assert_eq!(s.to_string(), "octue/my-service:1.2.0");
        assert_eq!(s.pubsub_form(), "octue.my-service.1-2-0");
        let untagged = Sruid::parse("experiment-2/hpc").expect("valid");
        assert_eq!(untagged.revision_tag, None);
        assert_eq!(untagged.to_string(), "experiment-2/hpc");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "octue",
            "Octue/x:1",
            "octue/my--service",
            "octue/-x",
            "octue/x:",
            "octue/x:-1",
            "octue/x:a b",
            "",
        ] {
            let err = Sruid::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        assert!(Sruid::parse(&format!("a/b:{}", "t".repeat(128))).is_ok());
        assert!(Sruid::parse(&format!("a/b:{}", "t".repeat(129))).is_err());
    }
}
