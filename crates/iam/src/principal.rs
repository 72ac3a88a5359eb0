//! Principals (Google's "members" of a binding) and the caller of a request.
//!
//! | form | who |
//! |---|---|
//! | `user:EMAIL` | a person |
//! | `serviceAccount:NAME@PROJECT.rouse` | a service account of project `PROJECT` |
//! | `group:NAME` | everyone the identity layer says is in the group |
//! | `allAuthenticatedUsers` | every caller that proved who it is |
//! | `allUsers` | everyone, anonymous callers included |
//! | `service:NAMESPACE/NAME` | an Octue service, named by its sender SRUID without the tag |
//!
//! Values are validated on parse and kept in one canonical spelling (lower
//! case; no case folding happens, upper case is refused with a hint), so a
//! principal's [`Display`](fmt::Display) form is the key the policy index
//! matches on.

use std::fmt;
use std::str::FromStr;

use rouse_core::ProjectName;
use rouse_core::sruid::{Sruid, is_kebab};

/// The longest e-mail address (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Google's limit on a service-account id.
const MAX_ACCOUNT_NAME_LEN: usize = 30;
/// Generous for group names, short enough to keep index keys small.
const MAX_GROUP_LEN: usize = 128;

const EXPECTED_FORMS: &str = "`user:EMAIL`, `serviceAccount:NAME@PROJECT.rouse`, `group:NAME`, `service:NAMESPACE/NAME`, `allAuthenticatedUsers` or `allUsers`";

/// Why a principal was refused. Every message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error("principal `{value}` is not one of the known forms: {EXPECTED_FORMS}")]
    UnknownForm { value: String },
    #[error("principal `{value}`: {problem}")]
    Invalid { value: String, problem: String },
}

/// A principal: who a binding is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    User(Email),
    ServiceAccount(ServiceAccountId),
    Group(GroupName),
    AllAuthenticatedUsers,
    AllUsers,
    Service(ServiceId),
}

/// A lower-case e-mail address, `local@domain.tld`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Email(String);

/// A service account, `NAME@PROJECT.rouse`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccountId {
    name: String,
    project: ProjectName,
}

/// A group name: lower-case letters, digits, `-`, `_`, `.` and `@` (so an
/// e-mail-style group works too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

/// An Octue service as a sender: `NAMESPACE/NAME`, its SRUID without the tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    namespace: String,
    name: String,
}

fn invalid(value: &str, problem: impl Into<String>) -> PrincipalError {
    PrincipalError::Invalid {
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn lower_case_hint(whole: &str, part: &str) -> Option<PrincipalError> {
    part.chars().any(|c| c.is_ascii_uppercase()).then(|| {
        invalid(
            whole,
            format!(
                "must be lower case; write `{}`",
                whole
                    .to_ascii_lowercase()
                    .replace("serviceaccount:", "serviceAccount:")
            ),
        )
    })
}

impl Email {
    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        let whole = format!("user:{value}");
        if let Some(err) = lower_case_hint(&whole, value) {
            return Err(err);
        }
        let problem = if value.len() > MAX_EMAIL_LEN {
            Some(format!(
                "e-mail address is longer than {MAX_EMAIL_LEN} bytes"
            ))
        } else if let Some((local, domain)) = value.split_once('@') {
            if local.is_empty() {
                Some("e-mail address has nothing before `@`".to_owned())
            } else if let Some(c) = value
                .chars()
                .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '"' | '<' | '>'))
            {
                Some(format!("e-mail address must not contain {c:?}"))
            } else if domain.contains('@') {
                Some("e-mail address must contain exactly one `@`".to_owned())
            } else if !domain.contains('.')
                || domain.starts_with('.')
                || domain.ends_with('.')
                || domain.contains("..")
            {
                Some(format!(
                    "e-mail domain `{domain}` must look like `example.com`"
                ))
            } else {
                None
            }
        } else {
            Some("expected an e-mail address, `user:NAME@DOMAIN`".to_owned())
        };
        match problem {
            Some(problem) => Err(invalid(&whole, problem)),
            None => Ok(Self(value.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, Google's service-account id shape.
fn is_account_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ACCOUNT_NAME_LEN
        && b[0].is_ascii_lowercase()
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl ServiceAccountId {
    /// Parses `NAME@PROJECT.rouse`.
    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        let whole = format!("serviceAccount:{value}");
        if let Some(err) = lower_case_hint(&whole, value) {
            return Err(err);
        }
        let Some((name, project)) = value
            .split_once('@')
            .and_then(|(n, rest)| Some((n, rest.strip_suffix(".rouse")?)))
        else {
            return Err(invalid(
                &whole,
                "expected `serviceAccount:NAME@PROJECT.rouse`",
            ));
        };
        if !is_account_name(name) {
            return Err(invalid(
                &whole,
                format!(
                    "service account name `{name}` must be 1 to {MAX_ACCOUNT_NAME_LEN} lower-case letters, digits and `-`, starting with a letter and not ending with `-`"
                ),
            ));
        }
        let project = ProjectName::parse(project).map_err(|e| invalid(&whole, e.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            project,
        })
    }

    pub fn new(name: &str, project: &ProjectName) -> Result<Self, PrincipalError> {
        Self::parse(&format!("{name}@{project}.rouse"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn project(&self) -> &ProjectName {
        &self.project
    }
}

impl GroupName {
    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        let whole = format!("group:{value}");
        if let Some(err) = lower_case_hint(&whole, value) {
            return Err(err);
        }
        let b = value.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_GROUP_LEN
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'-' | b'_' | b'.' | b'@')
            });
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(invalid(
                &whole,
                format!(
                    "group name must be 1 to {MAX_GROUP_LEN} lower-case letters, digits, `-`, `_`, `.` or `@`, starting with a letter or digit"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ServiceId {
    /// Parses `NAMESPACE/NAME` (no revision tag).
    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        let whole = format!("service:{value}");
        if let Some((_, tag)) = value.split_once(':') {
            return Err(invalid(
                &whole,
                format!(
                    "name the service without its revision tag `:{tag}` (services are identified by `NAMESPACE/NAME`)"
                ),
            ));
        }
        match value.split_once('/') {
            Some((namespace, name)) if is_kebab(namespace) && is_kebab(name) => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(invalid(
                &whole,
                "expected `service:NAMESPACE/NAME`, both lower kebab case ([a-z0-9]+(-[a-z0-9]+)*)",
            )),
        }
    }

    /// The service that sent a question, from its sender SRUID (the tag is dropped).
    pub fn from_sruid(sruid: &Sruid) -> Self {
        Self {
            namespace: sruid.namespace.clone(),
            name: sruid.name.clone(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Principal {
    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        match value {
            "allUsers" => return Ok(Self::AllUsers),
            "allAuthenticatedUsers" => return Ok(Self::AllAuthenticatedUsers),
            _ => {}
        }
        let Some((kind, rest)) = value.split_once(':') else {
            return Err(PrincipalError::UnknownForm {
                value: value.to_owned(),
            });
        };
        match kind {
            "user" => Email::parse(rest).map(Self::User),
            "serviceAccount" => ServiceAccountId::parse(rest).map(Self::ServiceAccount),
            "group" => GroupName::parse(rest).map(Self::Group),
            "service" => ServiceId::parse(rest).map(Self::Service),
            _ => Err(PrincipalError::UnknownForm {
                value: value.to_owned(),
            }),
        }
    }

    /// Whether this principal can be a request's caller (a user, a service
    /// account or a service), as opposed to a set of callers.
    pub fn is_identity(&self) -> bool {
        matches!(
            self,
            Self::User(_) | Self::ServiceAccount(_) | Self::Service(_)
        )
    }
}

impl FromStr for Principal {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(email) => write!(f, "user:{}", email.0),
            Self::ServiceAccount(sa) => write!(f, "serviceAccount:{sa}"),
            Self::Group(group) => write!(f, "group:{}", group.0),
            Self::AllAuthenticatedUsers => f.write_str("allAuthenticatedUsers"),
            Self::AllUsers => f.write_str("allUsers"),
            Self::Service(service) => write!(f, "service:{service}"),
        }
    }
}

impl fmt::Display for ServiceAccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}.rouse", self.name, self.project)
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller given as a group, `allUsers` or `allAuthenticatedUsers`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` cannot be a caller: a caller is a user, a service account or a service (`user:…`, `serviceAccount:…`, `service:…`)"
)]
pub struct CallerError(pub String);

/// Who makes a request: an authenticated identity with the groups it belongs
/// to, or nobody in particular (a question without a token).
///
/// The caller precomputes the index keys it matches (its principal, each group,
/// `allAuthenticatedUsers`, `allUsers`), so a check allocates nothing for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    principal: Option<Principal>,
    groups: Vec<GroupName>,
    /// `(key, principal)` in match order: identity, groups, allAuthenticatedUsers, allUsers.
    keys: Vec<(String, Principal)>,
}

impl Caller {
    /// An anonymous caller: matches only `allUsers`.
    pub fn anonymous() -> Self {
        Self {
            principal: None,
            groups: Vec::new(),
            keys: vec![("allUsers".to_owned(), Principal::AllUsers)],
        }
    }

    /// An authenticated caller. `principal` must be an identity (user, service
    /// account or service), never a group or `all…`.
    pub fn authenticated(
        principal: Principal,
        groups: impl IntoIterator<Item = GroupName>,
    ) -> Result<Self, CallerError> {
        if !principal.is_identity() {
            return Err(CallerError(principal.to_string()));
        }
        let mut groups: Vec<GroupName> = groups.into_iter().collect();
        groups.sort();
        groups.dedup();
        let mut keys = Vec::with_capacity(groups.len() + 3);
        keys.push((principal.to_string(), principal.clone()));
        for g in &groups {
            let p = Principal::Group(g.clone());
            keys.push((p.to_string(), p));
        }
        keys.push((
            "allAuthenticatedUsers".to_owned(),
            Principal::AllAuthenticatedUsers,
        ));
        keys.push(("allUsers".to_owned(), Principal::AllUsers));
        Ok(Self {
            principal: Some(principal),
            groups,
            keys,
        })
    }

    /// `None` for an anonymous caller.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    pub fn groups(&self) -> &[GroupName] {
        &self.groups
    }

    pub fn is_anonymous(&self) -> bool {
        self.principal.is_none()
    }

    /// Whether a binding's `member` includes this caller.
    pub fn matches(&self, member: &Principal) -> bool {
        self.keys.iter().any(|(_, p)| p == member)
    }

    /// The principals this caller matches, most specific first.
    pub(crate) fn keys(&self) -> &[(String, Principal)] {
        &self.keys
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.principal {
            Some(p) => p.fmt(f),
            None => f.write_str("an anonymous caller"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Principal {
        Principal::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_form_round_trips() {
        for s in [
            "user:alice@example.com",
            "serviceAccount:a@p.rouse",
            "serviceAccount:build-bot@experiment_2.rouse",
            "group:eng",
            "group:eng@example.com",
            "allAuthenticatedUsers",
            "allUsers",
            "service:octue/my-service",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        let sa = match p("serviceAccount:a@p.rouse") {
            Principal::ServiceAccount(sa) => sa,
            other => panic!("{other:?}"),
        };
        assert_eq!(sa.name(), "a");
        assert_eq!(sa.project().as_str(), "p");
    }

    #[test]
    fn errors_name_the_value_and_the_forms() {
        for (bad, needle) in [
            ("alice@example.com", "known forms"),
            ("robot:x", "known forms"),
            ("allusers", "known forms"),
            ("user:alice", "e-mail"),
            ("user:@example.com", "before `@`"),
            ("user:a b@example.com", "must not contain"),
            ("user:Alice@example.com", "write `user:alice@example.com`"),
            ("user:a@localhost", "domain"),
            ("serviceAccount:a@p", "NAME@PROJECT.rouse"),
            ("serviceAccount:1a@p.rouse", "service account name `1a`"),
            ("serviceAccount:a@P.rouse", "lower case"),
            ("serviceAccount:a@bad--project.rouse", "two separators"),
            ("group:", "group name"),
            ("group:Eng", "lower case"),
            ("service:octue", "NAMESPACE/NAME"),
            ("service:octue/x:1.0", "without its revision tag"),
            ("service:Octue/x", "kebab"),
        ] {
            let err = Principal::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn service_from_sruid_drops_the_tag() {
        let sruid = Sruid::parse("octue/my-service:1.2.0").expect("sruid");
        assert_eq!(
            Principal::Service(ServiceId::from_sruid(&sruid)),
            p("service:octue/my-service")
        );
    }

    #[test]
    fn matching_rules() {
        let eng = GroupName::parse("eng").expect("group");
        let alice = Caller::authenticated(p("user:alice@example.com"), [eng]).expect("identity");
        assert!(alice.matches(&p("user:alice@example.com")));
        assert!(!alice.matches(&p("user:bob@example.com")));
        assert!(alice.matches(&p("group:eng")));
        assert!(!alice.matches(&p("group:ops")));
        assert!(alice.matches(&p("allAuthenticatedUsers")));
        assert!(alice.matches(&p("allUsers")));

        let anon = Caller::anonymous();
        assert!(anon.is_anonymous());
        assert!(!anon.matches(&p("allAuthenticatedUsers")));
        assert!(anon.matches(&p("allUsers")));
        assert!(!anon.matches(&p("group:eng")));

        for not_identity in ["group:eng", "allUsers", "allAuthenticatedUsers"] {
            let err = Caller::authenticated(p(not_identity), []).expect_err(not_identity);
            assert!(err.to_string().contains(not_identity));
        }
    }
}
