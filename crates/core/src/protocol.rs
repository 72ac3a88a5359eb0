//! The Octue/Twined wire format (docs/protocol.md): parsing questions and building
//! the reply events the dispatcher publishes.
//!
//! Every event is one Pub/Sub message: JSON `data` with a `kind`, string
//! attributes, and the question uuid as ordering key. A reply copies the
//! question's attributes, swaps `sender` and `recipient`, sets `sender_type`
//! to `CHILD`, and gets a fresh `uuid` and `datetime`. Octue silently drops
//! events that fail its schema, so everything built here is schema-valid by
//! construction (an exception always carries a traceback list, a result never
//! an `output_manifest` Rouse did not get).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

/// Attribute map of one message.
pub type Attributes = BTreeMap<String, String>;

/// The largest question Rouse accepts: Pub/Sub's own message limit is 10 MB.
pub const MAX_QUESTION_BYTES: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message data is not UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("message data is JSON but not an object with a string `kind`")]
    NoKind,
    #[error(
        "event kind `{0}` is not a question; the dispatcher accepts only `question` on a service topic"
    )]
    NotAQuestion(String),
    #[error("required attribute `{0}` is missing")]
    MissingAttribute(&'static str),
    #[error("attribute `{name}` is `{value}`; {expected}")]
    BadAttribute {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("question is {size} bytes; at most {MAX_QUESTION_BYTES} are accepted")]
    TooLarge { size: usize },
}

/// A validated question.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question_uuid: String,
    pub retry_count: u32,
    /// SRUID of the asker (who replies go to).
    pub sender: String,
    /// Who the asker addressed, if anyone (required on the network topic).
    pub recipient: Option<String>,
    pub forward_logs: bool,
    /// Every attribute of the message, copied into replies.
    pub attributes: Attributes,
    /// The question's data: `{"kind": "question", "input_values": …, …}`.
    pub data: Value,
}

impl Question {
    /// Parses and validates a question message.
    pub fn parse(attributes: Attributes, data: &[u8]) -> Result<Self, ProtocolError> {
        if data.len() > MAX_QUESTION_BYTES {
            return Err(ProtocolError::TooLarge { size: data.len() });
        }
        let value: Value =
            serde_json::from_slice(data).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(ProtocolError::NoKind)?;
        if kind != "question" {
            return Err(ProtocolError::NotAQuestion(kind.to_owned()));
        }
        let get = |name: &'static str| {
            attributes
                .get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ProtocolError::MissingAttribute(name))
        };
        let question_uuid = get("question_uuid")?.clone();
        let sender = get("sender")?.clone();
        let retry = get("retry_count")?;
        let retry_count = retry
            .parse::<u32>()
            .map_err(|_| ProtocolError::BadAttribute {
                name: "retry_count",
                value: retry.clone(),
                expected: "it must be a non-negative integer such as \"0\"",
            })?;
        let forward_logs = match get("forward_logs")?.as_str() {
            "1" | "true" | "True" => true,
            "0" | "false" | "False" => false,
            other => {
                return Err(ProtocolError::BadAttribute {
                    name: "forward_logs",
                    value: other.to_owned(),
                    expected: "it must be \"1\" or \"0\"",
                });
            }
        };
        if let Some(t) = attributes.get("sender_type").filter(|t| *t != "PARENT") {
            return Err(ProtocolError::BadAttribute {
                name: "sender_type",
                value: t.clone(),
                expected: "a question's sender_type must be \"PARENT\"",
            });
        }
        let recipient = attributes
            .get("recipient")
            .filter(|v| !v.is_empty())
            .cloned();
        Ok(Self {
            question_uuid,
            retry_count,
            sender,
            recipient,
            forward_logs,
            attributes,
            data: value,
        })
    }

    /// The question's `input_values` (null if absent).
    pub fn input_values(&self) -> &Value {
        self.data.get("input_values").unwrap_or(&Value::Null)
    }

    /// The question's attributes, and the addressable fields, recovered from
    /// what was stored: validation already passed once.
    pub fn from_stored(attributes: Attributes, data: &[u8]) -> Result<Self, ProtocolError> {
        Self::parse(attributes, data)
    }
}

/// What kind of reply the dispatcher sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    DeliveryAcknowledgement,
    Heartbeat,
    Result {
        output_values: Value,
    },
    Exception {
        exception_type: String,
        exception_message: String,
        exception_traceback: Vec<String>,
    },
}

impl Reply {
    pub fn exception(exception_type: &str, message: impl Into<String>) -> Self {
        Self::Exception {
            exception_type: exception_type.to_owned(),
            exception_message: message.into(),
            exception_traceback: Vec::new(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::DeliveryAcknowledgement => "delivery_acknowledgement",
            Self::Heartbeat => "heartbeat",
            Self::Result { .. } => "result",
            Self::Exception { .. } => "exception",
        }
    }

    /// The event's `data` JSON.
    pub fn data(&self) -> Value {
        match self {
            Self::DeliveryAcknowledgement | Self::Heartbeat => json!({ "kind": self.kind() }),
            Self::Result { output_values } => {
                json!({ "kind": "result", "output_values": output_values })
            }
            Self::Exception {
                exception_type,
                exception_message,
                exception_traceback,
            } => json!({
                "kind": "exception",
                "exception_type": exception_type,
                "exception_message": exception_message,
                "exception_traceback": exception_traceback,
            }),
        }
    }

    /// Whether this reply ends the asker's wait.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Result { .. } | Self::Exception { .. })
    }
}

/// Whether an event kind ends the asker's wait.
pub fn is_terminal_kind(kind: &str) -> bool {
    kind == "result" || kind == "exception"
}

/// UTC ISO 8601 with microseconds and `+00:00`, as octue writes it.
pub fn format_datetime(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_micros(t).to_string();
    match s.strip_suffix('Z') {
        Some(stem) => format!("{stem}+00:00"),
        None => s,
    }
}

/// The attributes of a reply to `question`: its attributes with `sender` and
/// `recipient` swapped, `sender_type` CHILD, a fresh `uuid` and `datetime`.
/// `sender` is the replying service's SRUID.
pub fn reply_attributes(
    question: &Attributes,
    sender: &str,
    event_uuid: &str,
    now: SystemTime,
) -> Attributes {
    let mut attrs: Attributes = question
        .iter()
        .filter(|(k, _)| !QUESTION_ONLY_ATTRIBUTES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(asker) = question.get("sender") {
        attrs.insert("recipient".into(), asker.clone());
    }
    attrs.insert("sender".into(), sender.to_owned());
    attrs.insert("sender_type".into(), "CHILD".into());
    attrs.insert("uuid".into(), event_uuid.to_owned());
    attrs.insert("datetime".into(), format_datetime(now));
    attrs
}

/// Attributes that describe the question itself and are not echoed on replies
/// (the authorization token must never travel back).
const QUESTION_ONLY_ATTRIBUTES: &[&str] = &["authorization"];

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn question_attrs() -> Attributes {
        attrs(&[
            ("question_uuid", "q1"),
            ("sender", "octue/asker:1.0.0"),
            ("sender_type", "PARENT"),
            ("recipient", "p/svc"),
            ("retry_count", "0"),
            ("forward_logs", "1"),
            ("originator", "octue/asker:1.0.0"),
            ("parent", "octue/asker:1.0.0"),
        ])
    }

    #[test]
    fn parses_a_question() {
        let q = Question::parse(
            question_attrs(),
            br#"{"kind": "question", "input_values": {"n": 1}}"#,
        )
        .expect("valid");
        assert_eq!(q.retry_count, 0);
        assert!(q.forward_logs);
        assert_eq!(q.input_values()["n"], 1);
        assert_eq!(q.recipient.as_deref(), Some("p/svc"));
    }

    #[test]
    fn refuses_malformed_questions_with_the_reason() {
        let cases: &[(Attributes, &[u8], &str)] = &[
            (question_attrs(), b"not json", "not UTF-8 JSON"),
            (question_attrs(), b"[1]", "string `kind`"),
            (
                question_attrs(),
                br#"{"kind":"result"}"#,
                "`result` is not a question",
            ),
            (
                {
                    let mut a = question_attrs();
                    a.remove("retry_count");
                    a
                },
                br#"{"kind":"question"}"#,
                "`retry_count` is missing",
            ),
            (
                {
                    let mut a = question_attrs();
                    a.insert("retry_count".into(), "x".into());
                    a
                },
                br#"{"kind":"question"}"#,
                "`retry_count` is `x`",
            ),
            (
                {
                    let mut a = question_attrs();
                    a.insert("forward_logs".into(), "maybe".into());
                    a
                },
                br#"{"kind":"question"}"#,
                "`forward_logs` is `maybe`",
            ),
        ];
        for (a, data, needle) in cases {
            let err = Question::parse(a.clone(), data).expect_err("must be refused");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn replies_swap_sender_and_recipient() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let mut q = question_attrs();
        q.insert("authorization".into(), "secret".into());
        let r = reply_attributes(&q, "p/svc:svc-00001", "e1", now);
        assert_eq!(r["recipient"], "octue/asker:1.0.0");
        assert_eq!(r["sender"], "p/svc:svc-00001");
        assert_eq!(r["sender_type"], "CHILD");
        assert_eq!(r["retry_count"], "0");
        assert_eq!(r["question_uuid"], "q1");
        assert_eq!(r["uuid"], "e1");
        assert_eq!(r["datetime"], "2023-11-14T22:13:20.123456+00:00");
        assert!(!r.contains_key("authorization"));
    }

    #[test]
    fn exception_data_is_schema_shaped() {
        let d = Reply::exception("PermissionDenied", "no").data();
        assert_eq!(d["kind"], "exception");
        assert!(d["exception_traceback"].is_array());
    }
}
