//! The IAM policy of one resource, shaped like gcloud: `add-iam-policy-binding`,
//! `remove-iam-policy-binding`, `get-iam-policy` and `set-iam-policy`, shared
//! by `rouse services` (resource `projects/P/services/S`) and `rouse projects`
//! (resource `projects/P`).
//!
//! Bindings are changed by read-modify-write, like gcloud: read the policy
//! and its etag, change it locally with `rouse-iam`, set it with the etag
//! that was read. If another writer got in between, the API answers ABORTED
//! and the change is applied again to a fresh read, so no binding is lost.
//! `set-iam-policy FILE` does not retry: the file was made from an older
//! read, so the user has to look again.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_core::{ProjectName, ServiceName};
use rouse_iam::{
    Condition, ConditionFilter, Expr, Policy, Principal, RemoveBindingError, Resource, RoleName,
};
use rouse_proto as pb;
use rouse_proto::iam_client::IamClient;

use crate::context::{Api, Context};
use crate::exit::CliError;

/// How many times a binding change is applied again after ABORTED (another
/// writer changed the policy between our read and our write). Each retry
/// re-reads, so this bounds only sustained contention; gcloud retries too.
const RETRIES: u32 = 5;
/// First pause before a retry, doubled each time (plus jitter, so that two
/// CLIs that collided do not collide again in lockstep).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// The resource whose policy a command reads or changes.
#[derive(Debug, Clone)]
pub struct Target {
    resource: Resource,
    /// The resource's name on the wire, e.g. `projects/p/services/s`.
    name: String,
    /// How messages name it, e.g. "service `s` of project `p`".
    pub what: String,
    /// The command that reads its policy, for hints.
    get_command: String,
}

impl Target {
    pub fn project(project: &str) -> Result<Self, CliError> {
        let p = ProjectName::parse(project).map_err(usage)?;
        Ok(Self {
            resource: Resource::Project(p),
            name: format!("projects/{project}"),
            what: format!("project `{project}`"),
            get_command: format!("rouse projects get-iam-policy {project}"),
        })
    }

    pub fn service(project: &str, service: &str) -> Result<Self, CliError> {
        let p = ProjectName::parse(project).map_err(usage)?;
        let s = ServiceName::parse(&p, service).map_err(usage)?;
        Ok(Self {
            resource: Resource::Service(p, s),
            name: format!("projects/{project}/services/{service}"),
            what: format!("service `{service}` of project `{project}`"),
            get_command: format!("rouse services get-iam-policy {service} --project {project}"),
        })
    }
}

fn usage(e: impl Display) -> CliError {
    CliError::usage(e.to_string())
}

/// `--member`, `--role` and `--condition`, validated before anything is sent.
#[derive(Debug, Clone, clap::Args)]
pub struct BindingArgs {
    /// Who: `user:EMAIL`, `serviceAccount:NAME@PROJECT.rouse`, `group:NAME`,
    /// `service:NAMESPACE/NAME`, `allAuthenticatedUsers` or `allUsers`.
    #[arg(long)]
    pub member: String,
    /// The role: `roles/NAME` or `projects/P/roles/ID`.
    #[arg(long)]
    pub role: String,
    /// `expression=EXPR,title=TITLE[,description=TEXT]`, or `None` for the
    /// binding without a condition. Start with `^;^` to separate by `;`
    /// instead of `,`.
    #[arg(long, value_name = "CONDITION", value_parser = parse_condition)]
    pub condition: Option<ConditionArg>,
}

impl BindingArgs {
    /// The member and role, checked locally: the error names the bad value.
    fn validate(&self) -> Result<(), CliError> {
        Principal::parse(&self.member).map_err(|e| CliError::usage(format!("--member: {e}")))?;
        RoleName::parse(&self.role).map_err(|e| CliError::usage(format!("--role: {e}")))?;
        Ok(())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RemoveBindingArgs {
    #[command(flatten)]
    pub binding: BindingArgs,
    /// Remove the member from the role's bindings whatever their condition.
    #[arg(long, conflicts_with = "condition")]
    pub all: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SetPolicyArgs {
    /// Policy document, JSON or YAML (Google's shape, as get-iam-policy prints
    /// it). Keep its `etag` so that a concurrent change is not overwritten.
    pub file: PathBuf,
}

/// A parsed `--condition`: a condition, or none (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionArg(pub Option<Condition>);

/// gcloud's `--condition` syntax: `KEY=VALUE` pairs separated by `,` (or by
/// `D` when the value starts with `^D^`), keys `expression` and `title`
/// (required) and `description`; or `None`. The expression must parse.
pub fn parse_condition(value: &str) -> Result<ConditionArg, String> {
    const SHAPE: &str = "write expression=EXPR,title=TITLE[,description=TEXT], or None";
    if value == "None" {
        return Ok(ConditionArg(None));
    }
    let (delimiter, body) = match value
        .strip_prefix('^')
        .and_then(|rest| rest.split_once('^'))
    {
        Some((d, body)) if !d.is_empty() => (d, body),
        _ => (",", value),
    };
    let (mut expression, mut title, mut description) = (None, None, None);
    for pair in body.split(delimiter) {
        let Some((key, v)) = pair.split_once('=') else {
            return Err(format!(
                "`{pair}` is not KEY=VALUE; {SHAPE} (if a value contains `{delimiter}`, pick another separator: --condition='^;^expression=…;title=…')"
            ));
        };
        let slot = match key.trim() {
            "expression" => &mut expression,
            "title" => &mut title,
            "description" => &mut description,
            other => {
                return Err(format!(
                    "unknown key `{other}`; the keys are expression, title and description"
                ));
            }
        };
        if slot.replace(v.to_owned()).is_some() {
            return Err(format!("`{}` is given twice", key.trim()));
        }
    }
    let expression = expression
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| format!("`expression` is required; {SHAPE}"))?;
    let title = title.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        format!("`title` is required (like Google IAM, every condition has a title); {SHAPE}")
    })?;
    Expr::parse(&expression).map_err(|e| e.to_string())?;
    Ok(ConditionArg(Some(Condition {
        expression,
        title,
        description: description.filter(|d| !d.is_empty()),
    })))
}

/// Parses a document by the file's extension: `.json` as JSON, `.yaml` and
/// `.yml` as YAML, anything else as JSON if it parses, else as YAML (the error
/// is JSON's when the text looks like JSON).
pub fn parse_by_extension<T, E>(
    path: &Path,
    text: &str,
    json: impl Fn(&str) -> Result<T, E>,
    yaml: impl Fn(&str) -> Result<T, E>,
) -> Result<T, E> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("json") => json(text),
        Some("yaml" | "yml") => yaml(text),
        _ => json(text).or_else(|e| {
            if text.trim_start().starts_with('{') {
                Err(e)
            } else {
                yaml(text)
            }
        }),
    }
}

/// Reads a file for a command argument; a missing file is a usage error.
pub fn read_text(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {what} {}: {e}", path.display())))
}

/// A policy file parsed and checked locally (members, roles, conditions,
/// version) against `on`. Errors name the file and the field.
pub fn parse_policy_file(path: &Path, text: &str, on: &Resource) -> Result<Policy, CliError> {
    let in_file = |e: &dyn Display| CliError::usage(format!("policy file {}: {e}", path.display()));
    let policy = parse_by_extension(path, text, Policy::from_json, Policy::from_yaml)
        .map_err(|e| in_file(&e))?;
    if let Some(problem) = policy.problems(on, None).first() {
        return Err(in_file(problem));
    }
    Ok(policy)
}

/// The policy in an API answer, with the answer's etag.
fn from_document(doc: &pb::PolicyDocument, target: &Target) -> Result<Policy, CliError> {
    let mut policy = if doc.policy_json.trim().is_empty() {
        Policy::default()
    } else {
        Policy::from_json(&doc.policy_json).map_err(|e| {
            CliError::internal(format!(
                "the API returned a policy for {} that cannot be read: {e}",
                target.what
            ))
        })?
    };
    if !doc.etag.is_empty() {
        policy.etag = Some(doc.etag.clone());
    }
    Ok(policy)
}

async fn read(
    ctx: &Context,
    api: &mut IamClient<Api>,
    target: &Target,
) -> Result<Policy, CliError> {
    let doc = ctx
        .call(api.get_iam_policy(pb::GetIamPolicyRequest {
            resource: target.name.clone(),
        }))
        .await?;
    from_document(&doc, target)
}

/// Read-modify-write: applies `change` to the current policy and sets it with
/// the etag read, again on a fresh read after ABORTED. `change` says whether
/// it changed anything; if not, nothing is written. Returns the policy now in
/// force and whether it was written.
async fn modify(
    ctx: &Context,
    target: &Target,
    mut change: impl FnMut(&mut Policy) -> Result<bool, CliError>,
) -> Result<(Policy, bool), CliError> {
    let mut api = ctx.client(IamClient::new).await?;
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]);
            let pause = RETRY_BACKOFF * 2u32.pow(attempt - 1) + Duration::from_millis(jitter);
            tokio::time::sleep(pause).await;
        }
        let mut policy = read(ctx, &mut api, target).await?;
        if !change(&mut policy)? {
            return Ok((policy, false));
        }
        let set = ctx
            .call(api.set_iam_policy(pb::SetIamPolicyRequest {
                resource: target.name.clone(),
                policy_json: policy.to_json(),
            }))
            .await;
        match set {
            Ok(doc) => return Ok((from_document(&doc, target)?, true)),
            Err(CliError::Server {
                code: tonic::Code::Aborted,
                ..
            }) => {
                tracing::debug!(resource = %target.name, attempt, "policy changed concurrently; reading it again");
            }
            Err(e) => return Err(e),
        }
    }
    Err(CliError::internal(format!(
        "the policy of {} kept changing while this change was applied ({} attempts); try again",
        target.what,
        RETRIES + 1
    )))
}

pub async fn add_binding(
    ctx: &Context,
    target: &Target,
    binding: BindingArgs,
) -> Result<(), CliError> {
    let format = ctx.policy_format()?;
    binding.validate()?;
    let condition = binding.condition.and_then(|c| c.0);
    let (policy, written) = modify(ctx, target, |p| {
        Ok(p.add_binding(&binding.role, &binding.member, condition.clone()))
    })
    .await?;
    if written {
        ctx.note(format_args!("updated the IAM policy of {}", target.what));
    } else {
        ctx.note(format_args!(
            "`{}` already has `{}` on {} with that condition; nothing changed",
            binding.member, binding.role, target.what
        ));
    }
    ctx.print_policy(&policy, format)
}

/// Grants (`public`) or takes away `roles/invoker` for `allUsers` on
/// `target`, without a condition (gcloud's `--[no-]allow-unauthenticated`).
/// `false` when there was nothing to change.
pub async fn set_public(ctx: &Context, target: &Target, public: bool) -> Result<bool, CliError> {
    const ROLE: &str = "roles/invoker";
    const MEMBER: &str = "allUsers";
    let (_, written) = modify(ctx, target, |p| match public {
        true => Ok(p.add_binding(ROLE, MEMBER, None)),
        false => Ok(p
            .remove_binding(ROLE, MEMBER, &ConditionFilter::Unconditional)
            .is_ok()),
    })
    .await?;
    Ok(written)
}

pub async fn remove_binding(
    ctx: &Context,
    target: &Target,
    args: RemoveBindingArgs,
) -> Result<(), CliError> {
    let format = ctx.policy_format()?;
    let RemoveBindingArgs { binding, all } = args;
    binding.validate()?;
    let filter = match (all, binding.condition) {
        (true, _) => ConditionFilter::All,
        (false, Some(ConditionArg(Some(c)))) => ConditionFilter::Exactly(c),
        (false, Some(ConditionArg(None)) | None) => ConditionFilter::Unconditional,
    };
    let (policy, _) = modify(ctx, target, |p| {
        match p.remove_binding(&binding.role, &binding.member, &filter) {
            Ok(_) => Ok(true),
            // How the command was called: say which condition.
            Err(e @ RemoveBindingError::OnlyConditional { .. }) => {
                Err(CliError::usage(format!("{}: {e}", target.what)))
            }
            Err(e @ RemoveBindingError::NotFound { .. }) => {
                Err(CliError::internal(format!("{}: {e}", target.what)))
            }
        }
    })
    .await?;
    ctx.note(format_args!("updated the IAM policy of {}", target.what));
    ctx.print_policy(&policy, format)
}

pub async fn get(ctx: &Context, target: &Target) -> Result<(), CliError> {
    let format = ctx.policy_format()?;
    let mut api = ctx.client(IamClient::new).await?;
    let policy = read(ctx, &mut api, target).await?;
    ctx.print_policy(&policy, format)
}

pub async fn set(ctx: &Context, target: &Target, args: SetPolicyArgs) -> Result<(), CliError> {
    let format = ctx.policy_format()?;
    let text = read_text(&args.file, "policy file")?;
    let policy = parse_policy_file(&args.file, &text, &target.resource)?;
    let mut api = ctx.client(IamClient::new).await?;
    let doc = ctx
        .call(api.set_iam_policy(pb::SetIamPolicyRequest {
            resource: target.name.clone(),
            policy_json: policy.to_json(),
        }))
        .await
        .map_err(|e| match e {
            CliError::Server {
                code: tonic::Code::Aborted,
                ..
            } => CliError::internal(format!(
                "the policy of {} was changed after {} was read (its etag is stale); read it again with `{}`, reapply your change and set it again",
                target.what,
                args.file.display(),
                target.get_command
            )),
            other => other,
        })?;
    ctx.note(format_args!("updated the IAM policy of {}", target.what));
    ctx.print_policy(&from_document(&doc, target)?, format)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::args::{ClientArgs, Format};

    fn condition(value: &str) -> Result<Option<Condition>, String> {
        parse_condition(value).map(|c| c.0)
    }

    const EXPIRES: &str = r#"request.time < timestamp("2027-01-01T00:00:00Z")"#;

    #[test]
    fn condition_with_every_key() {
        let c = condition(&format!(
            "expression={EXPIRES},title=expires,description=until 2027"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.expression, EXPIRES);
        assert_eq!(c.title, "expires");
        assert_eq!(c.description.as_deref(), Some("until 2027"));
    }

    #[test]
    fn condition_without_description() {
        let c = condition(&format!("title=expires,expression={EXPIRES}"))
            .unwrap()
            .unwrap();
        assert_eq!(c.description, None);
    }

    #[test]
    fn condition_none_means_no_condition() {
        assert_eq!(condition("None"), Ok(None));
    }

    #[test]
    fn condition_needs_a_title() {
        let e = condition(&format!("expression={EXPIRES}")).unwrap_err();
        assert!(e.contains("`title` is required"), "{e}");
        let e = condition(&format!("expression={EXPIRES},title=")).unwrap_err();
        assert!(e.contains("`title` is required"), "{e}");
    }

    #[test]
    fn condition_needs_an_expression() {
        let e = condition("title=t").unwrap_err();
        assert!(e.contains("`expression` is required"), "{e}");
    }

    #[test]
    fn condition_refuses_unknown_keys() {
        let e = condition(&format!("expression={EXPIRES},title=t,owner=me")).unwrap_err();
        assert!(e.contains("unknown key `owner`"), "{e}");
    }

    #[test]
    fn condition_refuses_pairs_without_equals_and_repeated_keys() {
        let e = condition("expression=true,title=a,b").unwrap_err();
        assert!(e.contains("`b` is not KEY=VALUE"), "{e}");
        let e = condition("expression=true,title=a,title=b").unwrap_err();
        assert!(e.contains("`title` is given twice"), "{e}");
    }

    #[test]
    fn condition_with_another_delimiter_allows_commas() {
        let c = condition(&format!("^;^expression={EXPIRES};title=t;description=a, b"))
            .unwrap()
            .unwrap();
        assert_eq!(c.description.as_deref(), Some("a, b"));
    }

    #[test]
    fn condition_expression_must_parse() {
        let e = condition("expression=request.time <,title=t").unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }

    fn service() -> Resource {
        Target::service("p", "s").unwrap().resource
    }

    #[test]
    fn policy_file_json() {
        let text = r#"{"bindings":[{"role":"roles/serviceUser","members":["serviceAccount:a@p.rouse"]}],"etag":"abc","version":1}"#;
        let p = parse_policy_file(Path::new("policy.json"), text, &service()).unwrap();
        assert_eq!(p.bindings[0].members, ["serviceAccount:a@p.rouse"]);
        assert_eq!(p.etag.as_deref(), Some("abc"));
    }

    #[test]
    fn policy_file_yaml_and_by_content() {
        let text = format!(
            "bindings:\n- role: roles/viewer\n  members:\n  - user:a@example.com\n  condition:\n    expression: '{EXPIRES}'\n    title: expires\netag: abc\nversion: 3\n"
        );
        for name in ["policy.yaml", "policy.yml", "policy.txt"] {
            let p = parse_policy_file(Path::new(name), &text, &service()).unwrap();
            assert_eq!(p.version, 3, "{name}");
            assert_eq!(p.bindings[0].condition.as_ref().unwrap().title, "expires");
        }
        let json = r#"{"bindings":[{"role":"roles/viewer","members":["allUsers"]}]}"#;
        let p = parse_policy_file(Path::new("policy"), json, &service()).unwrap();
        assert_eq!(p.bindings[0].members, ["allUsers"]);
    }

    #[test]
    fn policy_file_names_unknown_fields_and_the_file() {
        let e = parse_policy_file(
            Path::new("p.json"),
            r#"{"bindings":[],"etga":"x"}"#,
            &service(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("p.json"), "{e}");
        assert!(e.to_string().contains("`etga`"), "{e}");
        let e = parse_policy_file(
            Path::new("p.yaml"),
            "bindings:\n- role: roles/viewer\n  members: [allUsers]\n  memebrs: [allUsers]\n",
            &service(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`memebrs`"), "{e}");
    }

    #[test]
    fn policy_file_is_validated_locally() {
        let e = parse_policy_file(
            Path::new("p.json"),
            r#"{"bindings":[{"role":"roles/viewer","members":["alice"]}]}"#,
            &service(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("bindings[0].members[0]"), "{e}");
        assert!(e.to_string().contains("`alice`"), "{e}");
    }

    /// An Iam API that keeps one policy with content etags, like the real
    /// one, and lets `interfere` other writers change it just before the
    /// next sets (which then answer ABORTED).
    #[derive(Default)]
    struct FakeIam {
        policy: std::sync::Mutex<Policy>,
        interfere: std::sync::atomic::AtomicU32,
        sets: std::sync::atomic::AtomicU32,
    }

    impl FakeIam {
        fn document(&self) -> pb::PolicyDocument {
            let policy = self.policy.lock().unwrap().clone().with_etag();
            pb::PolicyDocument {
                resource: "projects/p/services/s".into(),
                etag: policy.etag.clone().unwrap_or_default(),
                policy_json: policy.to_json(),
            }
        }
    }

    #[tonic::async_trait]
    impl pb::iam_server::Iam for FakeIam {
        async fn get_iam_policy(
            &self,
            _: tonic::Request<pb::GetIamPolicyRequest>,
        ) -> Result<tonic::Response<pb::PolicyDocument>, tonic::Status> {
            Ok(tonic::Response::new(self.document()))
        }

        async fn set_iam_policy(
            &self,
            request: tonic::Request<pb::SetIamPolicyRequest>,
        ) -> Result<tonic::Response<pb::PolicyDocument>, tonic::Status> {
            use std::sync::atomic::Ordering::SeqCst;
            self.sets.fetch_add(1, SeqCst);
            let new = Policy::from_json(&request.into_inner().policy_json)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            {
                let mut current = self.policy.lock().unwrap();
                if self
                    .interfere
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let n = self.sets.load(SeqCst);
                    current.add_binding(
                        "roles/viewer",
                        &format!("user:other{n}@example.com"),
                        None,
                    );
                }
                new.check_etag(&current)
                    .map_err(|e| tonic::Status::aborted(e.to_string()))?;
                *current = Policy { etag: None, ..new };
            }
            Ok(tonic::Response::new(self.document()))
        }

        async fn test_iam_permissions(
            &self,
            _: tonic::Request<pb::TestIamPermissionsRequest>,
        ) -> Result<tonic::Response<pb::TestIamPermissionsResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }

        async fn explain_permission(
            &self,
            _: tonic::Request<pb::ExplainPermissionRequest>,
        ) -> Result<tonic::Response<pb::ExplainPermissionResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }

        async fn get_project(
            &self,
            _: tonic::Request<pb::GetProjectRequest>,
        ) -> Result<tonic::Response<pb::Project>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }

        async fn update_project(
            &self,
            _: tonic::Request<pb::UpdateProjectRequest>,
        ) -> Result<tonic::Response<pb::Project>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }

        async fn list_audit(
            &self,
            _: tonic::Request<pb::ListAuditRequest>,
        ) -> Result<tonic::Response<pb::ListAuditResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
    }

    /// Serves `fake` on a free port; returns a context calling it (with a
    /// fresh key, so no credentials file of the machine is read) that
    /// prints policies as `format`.
    async fn serve(
        fake: std::sync::Arc<FakeIam>,
        dir: &tempfile::TempDir,
        format: Format,
    ) -> Context {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let service = pb::iam_server::IamServer::from_arc(fake);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let account = rouse_identity::Account::service_account_email("admin@p.rouse").unwrap();
        let (key, _) =
            rouse_identity::KeyFile::generate(account, &endpoint, std::time::SystemTime::now())
                .unwrap();
        let credentials = dir.path().join("key.json");
        key.write_new(&credentials).unwrap();
        Context::new(
            ClientArgs {
                endpoint,
                credentials: Some(credentials),
            },
            Some(format),
        )
    }

    fn binding(member: &str, condition: Option<&str>) -> BindingArgs {
        BindingArgs {
            member: member.into(),
            role: "roles/serviceUser".into(),
            condition: condition.map(|c| parse_condition(c).unwrap()),
        }
    }

    #[tokio::test]
    async fn add_binding_retries_after_aborted_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeIam::default());
        fake.interfere.store(2, std::sync::atomic::Ordering::SeqCst);
        let ctx = serve(fake.clone(), &dir, Format::Yaml).await;
        let target = Target::service("p", "s").unwrap();
        add_binding(&ctx, &target, binding("serviceAccount:a@p.rouse", None))
            .await
            .unwrap();
        let policy = fake.policy.lock().unwrap().clone();
        assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), 3);
        let members: Vec<&str> = policy
            .bindings
            .iter()
            .flat_map(|b| b.members.iter().map(String::as_str))
            .collect();
        assert_eq!(
            members,
            [
                "user:other1@example.com",
                "user:other2@example.com",
                "serviceAccount:a@p.rouse"
            ]
        );
    }

    #[tokio::test]
    async fn add_binding_gives_up_under_sustained_contention() {
        let dir = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeIam::default());
        fake.interfere
            .store(100, std::sync::atomic::Ordering::SeqCst);
        let ctx = serve(fake.clone(), &dir, Format::Yaml).await;
        let e = add_binding(
            &ctx,
            &Target::service("p", "s").unwrap(),
            binding("serviceAccount:a@p.rouse", None),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("kept changing"), "{e}");
        assert_eq!(
            fake.sets.load(std::sync::atomic::Ordering::SeqCst),
            RETRIES + 1
        );
    }

    #[tokio::test]
    async fn a_table_format_is_refused_before_the_policy_changes() {
        let dir = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeIam::default());
        let ctx = serve(fake.clone(), &dir, Format::Table).await;
        let e = add_binding(
            &ctx,
            &Target::service("p", "s").unwrap(),
            binding("serviceAccount:a@p.rouse", None),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("--format table"), "{e}");
        assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(fake.policy.lock().unwrap().bindings.is_empty());
    }

    #[tokio::test]
    async fn remove_binding_by_condition_and_missing_binding() {
        let dir = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeIam::default());
        let condition = format!("expression={EXPIRES},title=expires");
        {
            let mut p = fake.policy.lock().unwrap();
            let c = parse_condition(&condition).unwrap().0;
            p.add_binding("roles/serviceUser", "serviceAccount:a@p.rouse", c);
        }
        let ctx = serve(fake.clone(), &dir, Format::Json).await;
        let target = Target::service("p", "s").unwrap();
        let remove = |b: BindingArgs, all: bool| RemoveBindingArgs { binding: b, all };
        // Only a conditional binding exists: say which.
        let e = remove_binding(
            &ctx,
            &target,
            remove(binding("serviceAccount:a@p.rouse", None), false),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("--condition"), "{e}");
        remove_binding(
            &ctx,
            &target,
            remove(binding("serviceAccount:a@p.rouse", Some(&condition)), false),
        )
        .await
        .unwrap();
        assert!(fake.policy.lock().unwrap().bindings.is_empty());
        let e = remove_binding(
            &ctx,
            &target,
            remove(binding("user:b@example.com", None), true),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("`user:b@example.com`"), "{e}");
        assert!(e.to_string().contains("`roles/serviceUser`"), "{e}");
    }

    #[tokio::test]
    async fn set_with_a_stale_etag_says_to_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeIam::default());
        let ctx = serve(fake.clone(), &dir, Format::Yaml).await;
        let file = dir.path().join("policy.yaml");
        std::fs::write(
            &file,
            "bindings:\n- role: roles/viewer\n  members: [allUsers]\netag: stale\n",
        )
        .unwrap();
        let args = || SetPolicyArgs { file: file.clone() };
        let target = Target::service("p", "s").unwrap();
        let e = set(&ctx, &target, args()).await.unwrap_err();
        assert!(e.to_string().contains("stale"), "{e}");
        assert!(
            e.to_string()
                .contains("rouse services get-iam-policy s --project p"),
            "{e}"
        );
        // Without an etag it is Google's blind overwrite.
        std::fs::write(
            &file,
            "bindings:\n- role: roles/viewer\n  members: [allUsers]\n",
        )
        .unwrap();
        set(&ctx, &target, args()).await.unwrap();
        assert_eq!(
            fake.policy.lock().unwrap().bindings[0].members,
            ["allUsers"]
        );
    }

    #[test]
    fn targets_validate_names() {
        assert_eq!(
            Target::project("my_project").unwrap().name,
            "projects/my_project"
        );
        assert_eq!(Target::project("Bad").unwrap_err().exit_code(), 2);
        assert_eq!(Target::service("p", "Bad").unwrap_err().exit_code(), 2);
    }
}
