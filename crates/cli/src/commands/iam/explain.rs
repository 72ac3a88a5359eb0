//! `rouse iam explain RESOURCE --member M --permission P`: whether M holds P
//! there, and which binding grants it or why none does.

use rouse_iam::Permission;
use rouse_proto as pb;
use rouse_proto::iam_client::IamClient;
use serde::Serialize;

use super::{member, resource};
use crate::context::Context;
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// `projects/P` or `projects/P/services/S`.
    resource: String,
    #[arg(long)]
    member: String,
    /// e.g. services.ask.
    #[arg(long)]
    permission: String,
}

pub async fn run(ctx: &Context, args: ExplainArgs) -> Result<(), CliError> {
    let resource_name = resource(&args.resource)?;
    let member_name = member(&args.member)?;
    let permission = Permission::parse(&args.permission)
        .map_err(|e| CliError::usage(format!("--permission: {e}")))?
        .as_str()
        .to_owned();
    let mut api = ctx.client(IamClient::new).await?;
    let answer = ctx
        .call(api.explain_permission(pb::ExplainPermissionRequest {
            resource: resource_name.clone(),
            member: member_name.clone(),
            permission: permission.clone(),
        }))
        .await?;
    #[derive(Serialize)]
    struct Explained<'a> {
        member: &'a str,
        permission: &'a str,
        resource: &'a str,
        granted: bool,
        lines: &'a [String],
    }
    let view = Explained {
        member: &member_name,
        permission: &permission,
        resource: &resource_name,
        granted: answer.granted,
        lines: &answer.lines,
    };
    // Exit 0 either way: the answer is the output, not a failure.
    ctx.print_value(&view, || {
        let verdict = if answer.granted {
            format!("GRANTED: `{member_name}` holds `{permission}` on `{resource_name}`\n")
        } else {
            format!("DENIED: `{member_name}` does not hold `{permission}` on `{resource_name}`\n")
        };
        answer
            .lines
            .iter()
            .fold(verdict, |out, line| out + "  " + line + "\n")
    })
}
