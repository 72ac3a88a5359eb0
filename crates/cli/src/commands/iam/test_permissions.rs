//! `rouse iam test-permissions RESOURCE --permissions …`: which of them a
//! member (by default the caller) holds there.

use rouse_proto as pb;
use rouse_proto::iam_client::IamClient;
use serde::Serialize;

use super::{member, permissions, resource};
use crate::args::Format;
use crate::context::Context;
use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct TestPermissionsArgs {
    /// `projects/P` or `projects/P/services/S`.
    resource: String,
    /// Whose permissions (default: the caller's).
    #[arg(long)]
    member: Option<String>,
    /// Permissions to test, comma-separated, e.g. services.ask,services.get.
    #[arg(long, required = true, value_delimiter = ',')]
    permissions: Vec<String>,
}

pub async fn run(ctx: &Context, args: TestPermissionsArgs) -> Result<(), CliError> {
    let resource_name = resource(&args.resource)?;
    let member_name = args.member.as_deref().map(member).transpose()?;
    let perms = permissions(&args.permissions)?;
    let mut api = ctx.client(IamClient::new).await?;
    let held = ctx
        .call(api.test_iam_permissions(pb::TestIamPermissionsRequest {
            resource: resource_name.clone(),
            member: member_name.unwrap_or_default(),
            permissions: perms,
        }))
        .await?;
    #[derive(Serialize)]
    struct Held<'a> {
        member: &'a str,
        resource: &'a str,
        permissions: &'a [String],
    }
    if held.permissions.is_empty() && ctx.format() == Format::Table {
        ctx.note(format_args!(
            "`{}` holds none of these permissions on `{resource_name}`",
            held.member
        ));
    }
    let view = Held {
        member: &held.member,
        resource: &resource_name,
        permissions: &held.permissions,
    };
    ctx.print_value(&view, || {
        held.permissions.iter().map(|p| format!("{p}\n")).collect()
    })
}
