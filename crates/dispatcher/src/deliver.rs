//! Delivering a question to an instance, and what came of it.
//!
//! Server mode POSTs the standard Pub/Sub push envelope to `/` (docs/protocol.md):
//! a 2xx with a body is a plain service's answer; a 2xx without one (an
//! Octue service's 204) means the service publishes its own events; anything
//! else is an error the asker hears about. Job mode passes the question as
//! `--attributes <json> --input-values <json>` (Octue's `ask-local` style)
//! and in `ROUSE_QUESTION`/`ROUSE_QUESTION_ATTRIBUTES`.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rouse_core::protocol::{Attributes, Reply, format_datetime};
use serde_json::{Value, json};

/// Longest piece of a service's error body or log quoted back to the asker.
const MAX_QUOTE: usize = 2000;

/// What came of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The dispatcher answers for the service (a plain service's result, or an error).
    Reply(Reply),
    /// The service publishes its own events. If its terminal event has not
    /// been seen within the grace period, `fallback` is sent instead.
    SelfReported { fallback: Reply, grace: Duration },
    /// The connection failed or broke off: the instance probably died. The
    /// caller waits briefly for its exit, so that the asker hears how it
    /// ended and its last log lines.
    Crashed { detail: String },
    /// No connection could be made: the question never reached the
    /// instance (gone, or its node's engine stopped), so it can go to
    /// another one.
    NotDelivered { detail: String },
}

/// How long to wait for an Octue service's own result after it answered the
/// push request: its events reach the dispatcher through Pub/Sub a tick later.
pub const SELF_REPORT_GRACE: Duration = Duration::from_secs(10);
/// The same after a job exited: a plain job publishes nothing, so this delays
/// its result; short, because an Octue job publishes before it exits.
pub const JOB_REPORT_GRACE: Duration = Duration::from_millis(1500);

fn quote(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_QUOTE {
        return s.to_owned();
    }
    let mut end = MAX_QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The Pub/Sub push envelope for a question.
pub fn push_envelope(
    attributes: &Attributes,
    data: &[u8],
    message_id: &str,
    subscription: &str,
) -> Value {
    json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attributes,
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": format_datetime(SystemTime::now()),
            "orderingKey": attributes.get("question_uuid").cloned().unwrap_or_default(),
        },
        "subscription": subscription,
    })
}

/// POSTs the envelope to `url` (with `bearer` as its `Authorization`, for
/// a target that checks an ID token) and interprets the answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    envelope: &Value,
    timeout: Duration,
) -> Outcome {
    let mut request = client.post(url).json(envelope).timeout(timeout);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let sent = request.send().await;
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Outcome::Reply(Reply::exception(
                "QuestionTimeout",
                format!(
                    "the service did not answer within its request timeout of {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        Err(e) if e.is_connect() => {
            return Outcome::NotDelivered {
                detail: format!("the service's instance cannot be reached ({e})"),
            };
        }
        Err(e) => {
            return Outcome::Crashed {
                detail: format!("the service's instance failed while answering ({e})"),
            };
        }
    };
    let status = response.status();
    let body = match tokio::time::timeout(timeout, response.bytes()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Outcome::Crashed {
                detail: format!("the service's answer broke off ({e})"),
            };
        }
        Err(_) => {
            return Outcome::Reply(Reply::exception(
                "QuestionTimeout",
                format!(
                    "the service's answer did not complete within {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
    };
    if !status.is_success() {
        return Outcome::Reply(Reply::exception(
            "ServiceError",
            format!(
                "the service answered HTTP {status}: {}",
                quote(&String::from_utf8_lossy(&body))
            ),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Outcome::SelfReported {
            fallback: Reply::exception(
                "NoResult",
                format!(
                    "the service answered HTTP {status} without a body but published no result within {}",
                    humantime::format_duration(SELF_REPORT_GRACE)
                ),
            ),
            grace: SELF_REPORT_GRACE,
        };
    }
    let output_values = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Outcome::Reply(Reply::Result { output_values })
}

/// The exception for a crashed instance: how it ended, and its last words.
pub fn crashed(detail: &str, exit: Option<&str>, logs: &str) -> Reply {
    let ended = exit
        .map(|e| format!("; the instance {e}"))
        .unwrap_or_default();
    Reply::exception(
        "ServiceCrashed",
        format!("{detail}{ended}; its last log lines:\n{}", quote(logs)),
    )
}

/// Arguments appended to a job's command.
pub fn job_args(attributes: &Attributes, input_values: &Value) -> Vec<String> {
    vec![
        "--attributes".into(),
        serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into()),
        "--input-values".into(),
        input_values.to_string(),
    ]
}

/// What a finished job means: exit 0 is success (its result is its last JSON
/// line on stdout, for plain jobs), anything else a crash. Either way an
/// Octue job's own events win.
pub fn job_outcome(exit_code: Option<i64>, exit_description: &str, logs: &str) -> Outcome {
    if exit_code == Some(0) {
        let last = logs
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .unwrap_or(Value::Null);
        // An Octue job (`octue twined question ask-local`) prints the result
        // event it published: its own event is on its way, so wait for it as
        // long as for a server's, and fall back to the same output.
        if last.get("kind").and_then(Value::as_str) == Some("result") {
            return Outcome::SelfReported {
                fallback: Reply::Result {
                    output_values: last.get("output_values").cloned().unwrap_or(Value::Null),
                },
                grace: SELF_REPORT_GRACE,
            };
        }
        Outcome::SelfReported {
            fallback: Reply::Result {
                output_values: last,
            },
            grace: JOB_REPORT_GRACE,
        }
    } else {
        Outcome::SelfReported {
            fallback: Reply::exception(
                "ServiceCrashed",
                format!(
                    "the job {exit_description}; its last log lines:\n{}",
                    quote(logs)
                ),
            ),
            grace: JOB_REPORT_GRACE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_base64_data_and_attributes() {
        let attrs: Attributes = [("question_uuid".to_owned(), "q".to_owned())].into();
        let env = push_envelope(
            &attrs,
            br#"{"kind":"question"}"#,
            "m1",
            "projects/p/subscriptions/s",
        );
        let data = env["message"]["data"].as_str().expect("data");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64");
        assert_eq!(decoded, br#"{"kind":"question"}"#);
        assert_eq!(env["message"]["orderingKey"], "q");
        assert_eq!(env["subscription"], "projects/p/subscriptions/s");
    }

    #[test]
    fn job_outcomes() {
        match job_outcome(Some(0), "exited with code 0", "log\n{\"echo\": 1}\n") {
            Outcome::SelfReported {
                fallback: Reply::Result { output_values },
                ..
            } => {
                assert_eq!(output_values["echo"], 1);
            }
            other => panic!("{other:?}"),
        }
        match job_outcome(
            Some(0),
            "exited with code 0",
            "{\"kind\": \"result\", \"output_values\": {\"doubled\": 42}}",
        ) {
            Outcome::SelfReported {
                fallback: Reply::Result { output_values },
                grace,
            } => {
                assert_eq!(output_values["doubled"], 42, "an Octue job's printed event");
                assert_eq!(grace, SELF_REPORT_GRACE);
            }
            other => panic!("{other:?}"),
        }
        match job_outcome(Some(3), "exited with code 3", "boom") {
            Outcome::SelfReported {
                fallback:
                    Reply::Exception {
                        exception_message, ..
                    },
                ..
            } => {
                assert!(
                    exception_message.contains("exited with code 3")
                        && exception_message.contains("boom")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_quotes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_QUOTE);
        assert!(quote(&s).ends_with('…'));
    }
}
