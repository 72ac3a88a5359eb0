//! `rouse audit list`: who changed what (before/after), and every granted or
//! denied question and API call, newest first.

use std::time::SystemTime;

use rouse_proto as pb;
use rouse_proto::iam_client::IamClient;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::AuditView;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit entries, newest first.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only entries from then on: a duration back from now (30m, 1h, 7d) or a
    /// time (2026-01-31T12:00:00Z, 2026-01-31).
    #[arg(long, value_parser = parse_since_now)]
    since: Option<SystemTime>,
    /// Only this caller's entries, e.g. serviceAccount:a@p.rouse.
    #[arg(long)]
    principal: Option<String>,
    /// Only resources whose name starts with this, e.g. projects/p (or groups/NAME).
    #[arg(long)]
    resource: Option<String>,
    /// Only granted or denied checks, or changes.
    #[arg(long, value_enum)]
    decision: Option<Decision>,
    /// At most this many entries (default: the server's).
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Decision {
    Granted,
    Denied,
    Changed,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Denied => "denied",
            Self::Changed => "changed",
        }
    }
}

fn parse_since_now(value: &str) -> Result<SystemTime, String> {
    parse_since(value, SystemTime::now())
}

/// `--since`: a duration before `now`, an RFC 3339 time, or a date (its
/// midnight, UTC).
fn parse_since(value: &str, now: SystemTime) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "`{value}` is neither a duration (e.g. 30m, 1h, 7d) nor a time (e.g. 2026-01-31T12:00:00Z or 2026-01-31)"
        )
    };
    if let Ok(ago) = humantime::parse_duration(value) {
        return now.checked_sub(ago).ok_or_else(bad);
    }
    let value = value.trim();
    let time = if value.len() == "2026-01-31".len() {
        format!("{value}T00:00:00Z")
    } else {
        value.to_owned()
    };
    rouse_iam::Timestamp::parse_rfc3339(&time)
        .ok()
        .and_then(rouse_iam::Timestamp::to_system_time)
        .ok_or_else(bad)
}

pub async fn run(ctx: &Context, cmd: AuditCommand) -> Result<(), CliError> {
    let AuditCommand::List(ListArgs {
        since,
        principal,
        resource,
        decision,
        limit,
    }) = cmd;
    let mut api = ctx.client(IamClient::new).await?;
    let list = ctx
        .call(api.list_audit(pb::ListAuditRequest {
            resource: resource.unwrap_or_default(),
            since: since.map(prost_types::Timestamp::from),
            principal: principal.unwrap_or_default(),
            decision: decision.map(|d| d.as_str().to_owned()).unwrap_or_default(),
            limit: limit.unwrap_or_default(),
        }))
        .await?;
    let views: Vec<_> = list.entries.iter().map(AuditView::from).collect();
    ctx.print_list(&views)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn since_a_duration_ago() {
        let now = at(1_800_000_000);
        assert_eq!(parse_since("1h", now), Ok(now - HOUR));
        assert_eq!(parse_since("90m", now), Ok(now - HOUR * 3 / 2));
        assert_eq!(parse_since("7d", now), Ok(now - HOUR * 24 * 7));
    }

    #[test]
    fn since_a_time() {
        let now = at(0);
        // 2026-01-31T12:00:00Z
        assert_eq!(
            parse_since("2026-01-31T12:00:00Z", now),
            Ok(at(1_769_860_800))
        );
        assert_eq!(
            parse_since("2026-01-31T13:00:00+01:00", now),
            Ok(at(1_769_860_800))
        );
        assert_eq!(parse_since("2026-01-31", now), Ok(at(1_769_817_600)));
    }

    #[test]
    fn since_refuses_anything_else() {
        let e = parse_since("yesterday", at(0)).unwrap_err();
        assert!(e.contains("`yesterday`"), "{e}");
        assert!(parse_since("2026-13-01", at(0)).is_err());
    }
}
