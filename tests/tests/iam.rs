//! IAM end to end: the real binary, the real emulator, real tokens.
//!
//! - A service account asks another service: refused → granted → refused by
//!   an expired condition → granted → refused after the binding is removed;
//!   forged, expired and replayed tokens are refused.
//! - Every gRPC method refuses a caller without the permission, anonymous
//!   or authenticated.
//! - Administration: policies (concurrent set: exactly one wins), service
//!   accounts and keys (revocation at once), custom roles, test-permissions,
//!   explain, the audit log, and bad input named.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rouse_identity::KeyFile;
use rouse_proto as pb;
use rouse_tests::asker::{Asker, question_attributes};
use rouse_tests::{Emulator, Server};
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

const NETWORK: &str = "octue.services";
const ANSWER: Duration = Duration::from_secs(60);

struct Platform {
    emulator: Emulator,
    server: Server,
    dir: tempfile::TempDir,
}

fn platform() -> Platform {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&emulator, &dir.path().join("data"), &[]);
    Platform {
        emulator,
        server,
        dir,
    }
}

/// Service `name` in project `project` with an echo revision; its topic.
fn echo_service(server: &Server, project: &str, name: &str) -> String {
    let created = server.echo_service(project, name, &[], &[]);
    created["topic"].as_str().expect("topic").to_owned()
}

/// Creates service account `name@project.rouse` with a key; the key file.
fn service_account(server: &Server, dir: &Path, project: &str, name: &str) -> PathBuf {
    server.service_account(dir, project, name)
}

fn sign(key: &KeyFile, audience: &str, question: Option<&str>, at: SystemTime) -> String {
    rouse_identity::sign(key, audience, question, at, Duration::from_secs(600)).expect("sign")
}

/// Asks through Pub/Sub like a service would, with `token(question_uuid)`
/// as the `authorization` attribute; returns the question uuid.
async fn ask(
    asker: &mut Asker,
    topic: &str,
    recipient: &str,
    token: impl FnOnce(&str) -> Option<String>,
) -> String {
    let q = uuid::Uuid::new_v4().to_string();
    let mut attributes = question_attributes(&q, recipient);
    if let Some(t) = token(&q) {
        attributes.insert("authorization".into(), t);
    }
    asker
        .publish(
            topic,
            attributes,
            json!({"kind": "question", "input_values": {"n": 1}}),
        )
        .await;
    q
}

fn exception_message(data: &Value) -> String {
    data["exception_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_asks_another_service_only_while_a_policy_says_so() {
    let p = platform();
    let server = &p.server;
    let topic = echo_service(server, "p", "b");
    let a_file = service_account(server, p.dir.path(), "p", "a");
    let a = KeyFile::read(&a_file).expect("a's key");
    let audience = "projects/p/services/b";
    let mut asker = Asker::new(p.emulator.host(), NETWORK).await;
    let as_a = |q: &str| Some(sign(&a, audience, Some(q), SystemTime::now()));

    // No binding: refused, with a PermissionDenied naming principal and permission.
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    let answer = asker.answer(&q, ANSWER).await;
    assert_eq!(answer.kind, "exception", "{:?}", answer.data);
    assert_eq!(answer.data["exception_type"], "PermissionDenied");
    let message = exception_message(&answer.data);
    assert!(
        message.contains("serviceAccount:a@p.rouse") && message.contains("services.ask"),
        "{message}"
    );
    assert!(
        !message.contains("roles/"),
        "a denial never shows the policy: {message}"
    );
    let execution = server
        .rouse(&["executions", "get", &q, "--format", "json"])
        .json();
    assert_eq!(execution["status"], "failed", "{execution}");
    let audit = server
        .rouse(&[
            "audit",
            "list",
            "--decision",
            "denied",
            "--principal",
            "serviceAccount:a@p.rouse",
            "--format",
            "json",
        ])
        .json();
    let entries = audit.as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["resource"] == audience && e["permission"] == "services.ask"),
        "{audit}"
    );

    // Granted: the next question is answered.
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=roles/serviceUser",
        ])
        .ok();
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    let answer = asker.answer(&q, ANSWER).await;
    assert_eq!(answer.kind, "result", "{:?}\n{}", answer.data, server.log());

    // Forged (the right key id, another key), expired and replayed tokens.
    let forged = {
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&a_file).expect("read")).expect("json");
        let other = service_account(server, p.dir.path(), "p", "other");
        let other: Value =
            serde_json::from_str(&std::fs::read_to_string(other).expect("read")).expect("json");
        doc["private_key"] = other["private_key"].clone();
        KeyFile::from_json(&doc.to_string()).expect("forged key file")
    };
    type Token<'a> = Box<dyn FnOnce(&str) -> Option<String> + 'a>;
    let cases: Vec<(&str, Token<'_>)> = vec![
        (
            "signature",
            Box::new(|q: &str| Some(sign(&forged, audience, Some(q), SystemTime::now()))),
        ),
        (
            "expired",
            Box::new(|q: &str| {
                Some(sign(
                    &a,
                    audience,
                    Some(q),
                    SystemTime::now() - Duration::from_secs(3600),
                ))
            }),
        ),
        (
            "question",
            Box::new(|_q: &str| {
                Some(sign(
                    &a,
                    audience,
                    Some(&uuid::Uuid::new_v4().to_string()),
                    SystemTime::now(),
                ))
            }),
        ),
    ];
    for (needle, token) in cases {
        let q = ask(&mut asker, &topic, "p/b", token).await;
        let answer = asker.answer(&q, ANSWER).await;
        assert_eq!(
            answer.data["exception_type"], "PermissionDenied",
            "{needle}"
        );
        let message = exception_message(&answer.data);
        assert!(message.contains(needle), "{needle}: {message}");
    }

    // A time-bounded grant that has expired denies again.
    server
        .rouse(&[
            "services",
            "remove-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=roles/serviceUser",
        ])
        .ok();
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=roles/serviceUser",
            "--condition=expression=request.time < timestamp(\"2020-01-01T00:00:00Z\"),title=expired",
        ])
        .ok();
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    let answer = asker.answer(&q, ANSWER).await;
    assert_eq!(
        answer.data["exception_type"], "PermissionDenied",
        "{:?}",
        answer.data
    );

    // One that has not: granted; then removing every binding of the member denies.
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=roles/serviceUser",
            "--condition=expression=request.time < timestamp(\"2099-01-01T00:00:00Z\"),title=until 2099",
        ])
        .ok();
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    assert_eq!(asker.answer(&q, ANSWER).await.kind, "result");
    server
        .rouse(&[
            "services",
            "remove-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=roles/serviceUser",
            "--all",
        ])
        .ok();
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    let answer = asker.answer(&q, ANSWER).await;
    assert_eq!(
        answer.data["exception_type"], "PermissionDenied",
        "{:?}",
        answer.data
    );

    // Through a group: a binding for group:askers grants its members only,
    // and a membership change takes effect at once.
    server
        .rouse(&[
            "iam",
            "groups",
            "create",
            "askers",
            "--description",
            "may ask b",
        ])
        .ok();
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=group:askers",
            "--role=roles/serviceUser",
        ])
        .ok();
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    let answer = asker.answer(&q, ANSWER).await;
    assert_eq!(
        answer.data["exception_type"], "PermissionDenied",
        "not a member yet: {:?}",
        answer.data
    );
    let group = server
        .rouse(&[
            "iam",
            "groups",
            "add-member",
            "askers",
            "--member=serviceAccount:a@p.rouse",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(
        group["members"],
        serde_json::json!(["serviceAccount:a@p.rouse"])
    );
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    assert_eq!(asker.answer(&q, ANSWER).await.kind, "result", "a member");
    let explained = server.rouse(&[
        "iam",
        "explain",
        "projects/p/services/b",
        "--member=serviceAccount:a@p.rouse",
        "--permission=services.ask",
    ]);
    assert!(
        explained.ok().contains("group:askers"),
        "{}",
        explained.stdout
    );
    let again = server.rouse(&[
        "iam",
        "groups",
        "add-member",
        "askers",
        "--member=serviceAccount:a@p.rouse",
    ]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("already a member"),
        "{}",
        again.stderr
    );
    let nested = server.rouse(&[
        "iam",
        "groups",
        "add-member",
        "askers",
        "--member=group:eng",
    ]);
    assert_eq!(nested.code, 2, "{}", nested.stderr);
    assert!(nested.stderr.contains("`group:eng`"), "{}", nested.stderr);
    let missing = server.rouse(&[
        "iam",
        "groups",
        "add-member",
        "nobody",
        "--member=serviceAccount:a@p.rouse",
    ]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("`nobody` does not exist"),
        "{}",
        missing.stderr
    );
    server
        .rouse(&[
            "iam",
            "groups",
            "remove-member",
            "askers",
            "--member=serviceAccount:a@p.rouse",
        ])
        .ok();
    let q = ask(&mut asker, &topic, "p/b", as_a).await;
    let answer = asker.answer(&q, ANSWER).await;
    assert_eq!(
        answer.data["exception_type"], "PermissionDenied",
        "removed from the group: {:?}",
        answer.data
    );
    let audit = server
        .rouse(&[
            "audit",
            "list",
            "--resource",
            "groups/askers",
            "--format",
            "json",
        ])
        .json();
    let actions: Vec<&str> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["CreateGroup", "AddGroupMember", "RemoveGroupMember"] {
        assert!(actions.contains(&action), "{action}: {audit}");
    }

    // The owner asks through the CLI, which signs a question token.
    let out = server.rouse(&[
        "ask",
        "b",
        "--project",
        "p",
        "--input",
        "{\"n\": 2}",
        "--wait",
    ]);
    assert!(out.ok().contains("\"n\": 2"), "{}", out.stdout);
    // Piped, the progress is plain lines on stderr.
    assert!(out.stderr.contains("answered in"), "{}", out.stderr);
    assert!(!out.stderr.contains('\x1b'), "{}", out.stderr);
}

/// A gRPC client of every API, calling with `token` (`None`: anonymous).
struct Clients {
    services: pb::services_client::ServicesClient<tonic::transport::Channel>,
    revisions: pb::revisions_client::RevisionsClient<tonic::transport::Channel>,
    executions: pb::executions_client::ExecutionsClient<tonic::transport::Channel>,
    logs: pb::logs_client::LogsClient<tonic::transport::Channel>,
    iam: pb::iam_client::IamClient<tonic::transport::Channel>,
    accounts: pb::service_accounts_client::ServiceAccountsClient<tonic::transport::Channel>,
    roles: pb::roles_client::RolesClient<tonic::transport::Channel>,
    groups: pb::groups_client::GroupsClient<tonic::transport::Channel>,
    triggers: pb::triggers_client::TriggersClient<tonic::transport::Channel>,
    builds: pb::builds_client::BuildsClient<tonic::transport::Channel>,
    secrets: pb::secrets_client::SecretsClient<tonic::transport::Channel>,
    rollouts: pb::rollouts_client::RolloutsClient<tonic::transport::Channel>,
    token: Option<String>,
}

impl Clients {
    async fn new(endpoint: &str, token: Option<String>) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Self {
            services: pb::services_client::ServicesClient::new(channel.clone()),
            revisions: pb::revisions_client::RevisionsClient::new(channel.clone()),
            executions: pb::executions_client::ExecutionsClient::new(channel.clone()),
            logs: pb::logs_client::LogsClient::new(channel.clone()),
            iam: pb::iam_client::IamClient::new(channel.clone()),
            accounts: pb::service_accounts_client::ServiceAccountsClient::new(channel.clone()),
            roles: pb::roles_client::RolesClient::new(channel.clone()),
            groups: pb::groups_client::GroupsClient::new(channel.clone()),
            triggers: pb::triggers_client::TriggersClient::new(channel.clone()),
            builds: pb::builds_client::BuildsClient::new(channel.clone()),
            secrets: pb::secrets_client::SecretsClient::new(channel.clone()),
            rollouts: pb::rollouts_client::RolloutsClient::new(channel),
            token,
        }
    }

    fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(t) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {t}")).expect("ascii"),
            );
        }
        request
    }
}

fn refused<T: std::fmt::Debug>(method: &str, who: &str, result: Result<T, tonic::Status>) {
    match result {
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{method} as {who}: {status:?}"
            );
            assert!(
                status.message().contains("does not have permission"),
                "{method} as {who}: {}",
                status.message()
            );
        }
        Ok(answer) => panic!("{method} as {who} was allowed: {answer:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_method_refuses_an_unauthorised_caller() {
    let p = platform();
    let server = &p.server;
    echo_service(server, "p", "b");
    echo_service(server, "q", "mine");
    server
        .rouse(&["ask", "b", "--project", "p", "--input", "1", "--wait"])
        .ok();
    let execution = server
        .rouse(&["executions", "list", "--project", "p", "--format", "json"])
        .json()[0]["id"]
        .as_str()
        .expect("an execution")
        .to_owned();
    server
        .rouse(&[
            "iam",
            "roles",
            "create",
            "asker",
            "--project",
            "p",
            "--title",
            "Asker",
            "--permissions",
            "services.ask",
        ])
        .ok();
    server.rouse(&["iam", "groups", "create", "eng"]).ok();
    // The outsider is a viewer of project q, and nothing of project p.
    let key_file = service_account(server, p.dir.path(), "q", "outsider");
    server
        .rouse(&[
            "projects",
            "add-iam-policy-binding",
            "q",
            "--member=serviceAccount:outsider@q.rouse",
            "--role=roles/viewer",
        ])
        .ok();
    let key = KeyFile::read(&key_file).expect("key");
    let token = sign(&key, rouse_identity::API_AUDIENCE, None, SystemTime::now());

    for (who, token) in [("anonymous", None), ("outsider", Some(token))] {
        let mut c = Clients::new(server.endpoint(), token).await;
        let svc = || ("p".to_owned(), "b".to_owned());
        let (project, name) = svc();
        refused(
            "CreateService",
            who,
            c.services
                .create_service(c.req(pb::CreateServiceRequest {
                    project: project.clone(),
                    name: "new".into(),
                }))
                .await,
        );
        refused(
            "GetService",
            who,
            c.services
                .get_service(c.req(pb::GetServiceRequest {
                    project: project.clone(),
                    name: name.clone(),
                }))
                .await,
        );
        refused(
            "ListServices",
            who,
            c.services
                .list_services(c.req(pb::ListServicesRequest {
                    project: project.clone(),
                }))
                .await,
        );
        refused(
            "UpdateService",
            who,
            c.services
                .update_service(c.req(pb::UpdateServiceRequest {
                    project: project.clone(),
                    name: name.clone(),
                    max_instances: Some(2),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "DeleteService",
            who,
            c.services
                .delete_service(c.req(pb::DeleteServiceRequest {
                    project: project.clone(),
                    name: name.clone(),
                }))
                .await,
        );
        refused(
            "IssueDockerCredentials",
            who,
            c.services
                .issue_docker_credentials(c.req(pb::IssueDockerCredentialsRequest {
                    project: project.clone(),
                    name: name.clone(),
                }))
                .await,
        );
        refused(
            "CreateRevision",
            who,
            c.revisions
                .create_revision(c.req(pb::CreateRevisionRequest {
                    project: project.clone(),
                    service: name.clone(),
                    source: Some(pb::create_revision_request::Source::Image("x".into())),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "ListRevisions",
            who,
            c.revisions
                .list_revisions(c.req(pb::ListRevisionsRequest {
                    project: project.clone(),
                    service: name.clone(),
                }))
                .await,
        );
        refused(
            "Ask",
            who,
            c.executions
                .ask(c.req(pb::AskRequest {
                    project: project.clone(),
                    service: name.clone(),
                    input_json: "1".into(),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "GetExecution",
            who,
            c.executions
                .get_execution(c.req(pb::GetExecutionRequest {
                    id: execution.clone(),
                }))
                .await,
        );
        refused(
            "GetExecution (unknown id)",
            who,
            c.executions
                .get_execution(c.req(pb::GetExecutionRequest {
                    id: uuid::Uuid::new_v4().to_string(),
                }))
                .await,
        );
        refused(
            "ListExecutions",
            who,
            c.executions
                .list_executions(c.req(pb::ListExecutionsRequest {
                    project: project.clone(),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "CancelExecution",
            who,
            c.executions
                .cancel_execution(c.req(pb::CancelExecutionRequest {
                    id: execution.clone(),
                }))
                .await,
        );
        refused(
            "WatchExecution",
            who,
            c.executions
                .watch_execution(c.req(pb::WatchExecutionRequest {
                    id: execution.clone(),
                    after_event_id: 0,
                }))
                .await
                .map(|_| ()),
        );
        refused(
            "ReadLogs",
            who,
            c.logs
                .read_logs(c.req(pb::ReadLogsRequest {
                    project: project.clone(),
                    service: name.clone(),
                    ..Default::default()
                }))
                .await
                .map(|_| ()),
        );
        refused(
            "GetIamPolicy",
            who,
            c.iam
                .get_iam_policy(c.req(pb::GetIamPolicyRequest {
                    resource: "projects/p/services/b".into(),
                }))
                .await,
        );
        refused(
            "SetIamPolicy",
            who,
            c.iam
                .set_iam_policy(c.req(pb::SetIamPolicyRequest {
                    resource: "projects/p".into(),
                    policy_json: "{}".into(),
                }))
                .await,
        );
        refused(
            "TestIamPermissions (another member)",
            who,
            c.iam
                .test_iam_permissions(c.req(pb::TestIamPermissionsRequest {
                    resource: "projects/p".into(),
                    member: "user:x@y".into(),
                    permissions: vec!["services.ask".into()],
                }))
                .await,
        );
        refused(
            "ExplainPermission",
            who,
            c.iam
                .explain_permission(c.req(pb::ExplainPermissionRequest {
                    resource: "projects/p".into(),
                    member: "user:x@y".into(),
                    permission: "services.ask".into(),
                }))
                .await,
        );
        refused(
            "GetProject",
            who,
            c.iam
                .get_project(c.req(pb::GetProjectRequest {
                    project: project.clone(),
                }))
                .await,
        );
        refused(
            "UpdateProject",
            who,
            c.iam
                .update_project(c.req(pb::UpdateProjectRequest {
                    project: project.clone(),
                    trust_sender_attribute: Some(true),
                }))
                .await,
        );
        refused(
            "ListAudit",
            who,
            c.iam
                .list_audit(c.req(pb::ListAuditRequest::default()))
                .await,
        );
        refused(
            "CreateServiceAccount",
            who,
            c.accounts
                .create_service_account(c.req(pb::CreateServiceAccountRequest {
                    project: project.clone(),
                    name: "x".into(),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "GetServiceAccount",
            who,
            c.accounts
                .get_service_account(c.req(pb::GetServiceAccountRequest {
                    email: "a@p.rouse".into(),
                }))
                .await,
        );
        refused(
            "ListServiceAccounts",
            who,
            c.accounts
                .list_service_accounts(c.req(pb::ListServiceAccountsRequest {
                    project: project.clone(),
                }))
                .await,
        );
        refused(
            "DeleteServiceAccount",
            who,
            c.accounts
                .delete_service_account(c.req(pb::DeleteServiceAccountRequest {
                    email: "a@p.rouse".into(),
                }))
                .await,
        );
        refused(
            "SetServiceAccountDisabled",
            who,
            c.accounts
                .set_service_account_disabled(c.req(pb::SetServiceAccountDisabledRequest {
                    email: "a@p.rouse".into(),
                    disabled: true,
                }))
                .await,
        );
        refused(
            "CreateKey",
            who,
            c.accounts
                .create_key(c.req(pb::CreateKeyRequest {
                    email: "a@p.rouse".into(),
                    key_id: "0123456789abcdef".into(),
                    public_key: "x".into(),
                }))
                .await,
        );
        refused(
            "ListKeys",
            who,
            c.accounts
                .list_keys(c.req(pb::ListKeysRequest {
                    email: "a@p.rouse".into(),
                }))
                .await,
        );
        refused(
            "DeleteKey",
            who,
            c.accounts
                .delete_key(c.req(pb::DeleteKeyRequest {
                    email: "a@p.rouse".into(),
                    key_id: "0123456789abcdef".into(),
                }))
                .await,
        );
        refused(
            "CreateRole",
            who,
            c.roles
                .create_role(c.req(pb::CreateRoleRequest {
                    project: project.clone(),
                    role_id: "r".into(),
                    role: Some(pb::Role {
                        title: "R".into(),
                        included_permissions: vec!["services.ask".into()],
                        ..Default::default()
                    }),
                }))
                .await,
        );
        refused(
            "GetRole",
            who,
            c.roles
                .get_role(c.req(pb::GetRoleRequest {
                    name: "projects/p/roles/asker".into(),
                }))
                .await,
        );
        refused(
            "ListRoles",
            who,
            c.roles
                .list_roles(c.req(pb::ListRolesRequest {
                    project: project.clone(),
                }))
                .await,
        );
        refused(
            "UpdateRole",
            who,
            c.roles
                .update_role(c.req(pb::UpdateRoleRequest {
                    name: "projects/p/roles/asker".into(),
                    title: Some("T".into()),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "DeleteRole",
            who,
            c.roles
                .delete_role(c.req(pb::DeleteRoleRequest {
                    name: "projects/p/roles/asker".into(),
                }))
                .await,
        );
        // Groups belong to the root: a project viewer may not even read them.
        refused(
            "CreateGroup",
            who,
            c.groups
                .create_group(c.req(pb::CreateGroupRequest {
                    name: "mine".into(),
                    description: String::new(),
                }))
                .await,
        );
        refused(
            "GetGroup",
            who,
            c.groups
                .get_group(c.req(pb::GetGroupRequest { name: "eng".into() }))
                .await,
        );
        refused(
            "ListGroups",
            who,
            c.groups.list_groups(c.req(pb::ListGroupsRequest {})).await,
        );
        refused(
            "AddGroupMember",
            who,
            c.groups
                .add_group_member(c.req(pb::GroupMemberRequest {
                    name: "eng".into(),
                    member: "serviceAccount:outsider@q.rouse".into(),
                }))
                .await,
        );
        refused(
            "RemoveGroupMember",
            who,
            c.groups
                .remove_group_member(c.req(pb::GroupMemberRequest {
                    name: "eng".into(),
                    member: "serviceAccount:outsider@q.rouse".into(),
                }))
                .await,
        );
        refused(
            "DeleteGroup",
            who,
            c.groups
                .delete_group(c.req(pb::DeleteGroupRequest { name: "eng".into() }))
                .await,
        );
        // The builder's methods. Ids that do not exist are checked on the
        // root, so a refused caller does not learn whether they exist.
        let svc_req = || (project.clone(), name.clone());
        let (pj, sv) = svc_req();
        refused(
            "CreateTrigger",
            who,
            c.triggers
                .create_trigger(c.req(pb::CreateTriggerRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    repo: "/tmp/repo".into(),
                    branch_pattern: "^main$".into(),
                    webhook_secret: "s".into(),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "GetTrigger",
            who,
            c.triggers
                .get_trigger(c.req(pb::GetTriggerRequest {
                    id: "t-000000000000".into(),
                }))
                .await,
        );
        refused(
            "ListTriggers",
            who,
            c.triggers
                .list_triggers(c.req(pb::ListTriggersRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                }))
                .await,
        );
        refused(
            "DeleteTrigger",
            who,
            c.triggers
                .delete_trigger(c.req(pb::DeleteTriggerRequest {
                    id: "t-000000000000".into(),
                }))
                .await,
        );
        refused(
            "ListBuilds",
            who,
            c.builds
                .list_builds(c.req(pb::ListBuildsRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    limit: 0,
                }))
                .await,
        );
        refused(
            "GetBuild",
            who,
            c.builds
                .get_build(c.req(pb::GetBuildRequest {
                    id: "0000000000000000".into(),
                }))
                .await,
        );
        refused(
            "CancelBuild",
            who,
            c.builds
                .cancel_build(c.req(pb::CancelBuildRequest {
                    id: "0000000000000000".into(),
                }))
                .await,
        );
        refused(
            "SubmitBuild",
            who,
            c.builds
                .submit_build(c.req(pb::SubmitBuildRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    source_dir: "/tmp".into(),
                    ..Default::default()
                }))
                .await,
        );
        refused(
            "DeployImage",
            who,
            c.builds
                .deploy_image(c.req(pb::DeployImageRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    image: "v1".into(),
                }))
                .await,
        );
        refused(
            "StreamBuildLogs",
            who,
            c.builds
                .stream_build_logs(c.req(pb::StreamBuildLogsRequest {
                    id: "0000000000000000".into(),
                    follow: false,
                }))
                .await
                .map(|_| ()),
        );
        refused(
            "SetSecret",
            who,
            c.secrets
                .set_secret(c.req(pb::SetSecretRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    name: "TOKEN".into(),
                    value: b"x".to_vec(),
                }))
                .await,
        );
        refused(
            "ListSecrets",
            who,
            c.secrets
                .list_secrets(c.req(pb::ListSecretsRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                }))
                .await,
        );
        refused(
            "DeleteSecret",
            who,
            c.secrets
                .delete_secret(c.req(pb::DeleteSecretRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    name: "TOKEN".into(),
                }))
                .await,
        );
        refused(
            "DescribeRevision",
            who,
            c.rollouts
                .describe_revision(c.req(pb::DescribeRevisionRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    revision: "b-00001".into(),
                }))
                .await,
        );
        refused(
            "Rollback",
            who,
            c.rollouts
                .rollback(c.req(pb::RollbackRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    to_revision: "b-00001".into(),
                }))
                .await,
        );
        refused(
            "DeployTagged",
            who,
            c.rollouts
                .deploy_tagged(c.req(pb::DeployTaggedRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    revision: "b-00001".into(),
                    tag: "green".into(),
                }))
                .await,
        );
        refused(
            "Promote",
            who,
            c.rollouts
                .promote(c.req(pb::PromoteRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    tag: "green".into(),
                }))
                .await,
        );
        refused(
            "SetTraffic",
            who,
            c.rollouts
                .set_traffic(c.req(pb::SetTrafficRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                    targets: vec![pb::TrafficTarget {
                        revision: "b-00001".into(),
                        percent: 100,
                    }],
                }))
                .await,
        );
        refused(
            "GetRouting",
            who,
            c.rollouts
                .get_routing(c.req(pb::GetRoutingRequest {
                    project: pj.clone(),
                    service: sv.clone(),
                }))
                .await,
        );
        if who == "anonymous" {
            refused(
                "ListRoles (predefined)",
                who,
                c.roles
                    .list_roles(c.req(pb::ListRolesRequest::default()))
                    .await,
            );
        } else {
            // What the outsider may do, it can: read project q, and see only
            // q's services when listing everything.
            let all = c
                .services
                .list_services(c.req(pb::ListServicesRequest::default()))
                .await
                .expect("list")
                .into_inner();
            let names: Vec<_> = all
                .services
                .iter()
                .map(|s| format!("{}/{}", s.project, s.name))
                .collect();
            assert_eq!(names, vec!["q/mine".to_owned()]);
            c.services
                .get_service(c.req(pb::GetServiceRequest {
                    project: "q".into(),
                    name: "mine".into(),
                }))
                .await
                .expect("viewer reads q");
            refused(
                "UpdateService on q (viewer)",
                who,
                c.services
                    .update_service(c.req(pb::UpdateServiceRequest {
                        project: "q".into(),
                        name: "mine".into(),
                        max_instances: Some(2),
                        ..Default::default()
                    }))
                    .await,
            );
        }
    }
    // Nothing the refused calls asked for happened.
    let b = server
        .rouse(&[
            "services",
            "describe",
            "b",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(b["scaling"]["max_instances"], 3, "{b}");
    let groups = server
        .rouse(&["iam", "groups", "list", "--format", "json"])
        .json();
    assert_eq!(groups[0]["name"], "eng", "{groups}");
    assert_eq!(groups[0]["members"], serde_json::json!([]), "{groups}");
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    let denied = server
        .rouse(&[
            "audit",
            "list",
            "--decision",
            "denied",
            "--limit",
            "1000",
            "--format",
            "json",
        ])
        .json();
    assert!(denied.as_array().expect("entries").len() >= 90, "{denied}");
}

#[tokio::test(flavor = "multi_thread")]
async fn administration_commands_and_bad_input() {
    let p = platform();
    let server = &p.server;
    echo_service(server, "p", "b");
    let dir = p.dir.path();
    let a_file = service_account(server, dir, "p", "a");
    let a = a_file.to_str().expect("utf-8");

    // Concurrent set-iam-policy from the same read: exactly one wins, and
    // the winner's binding is there.
    let read = dir.join("policy.json");
    let current = server.rouse(&[
        "services",
        "get-iam-policy",
        "b",
        "--project",
        "p",
        "--format",
        "json",
    ]);
    std::fs::write(&read, current.ok()).expect("write");
    let mut files = Vec::new();
    for (i, member) in ["user:one@example.com", "user:two@example.com"]
        .iter()
        .enumerate()
    {
        let mut doc: Value = serde_json::from_str(current.ok()).expect("policy json");
        doc["bindings"] = json!([{"role": "roles/viewer", "members": [member]}]);
        let f = dir.join(format!("policy-{i}.json"));
        std::fs::write(&f, doc.to_string()).expect("write");
        files.push(f);
    }
    let endpoint = server.endpoint().to_owned();
    let owner = server.owner_key().to_owned();
    let handles: Vec<_> = files
        .iter()
        .map(|f| {
            let (endpoint, owner, f) = (endpoint.clone(), owner.clone(), f.clone());
            std::thread::spawn(move || {
                rouse_tests::rouse_as(
                    &endpoint,
                    Some(&owner),
                    &[
                        "services",
                        "set-iam-policy",
                        "b",
                        f.to_str().expect("utf-8"),
                        "--project",
                        "p",
                    ],
                )
            })
        })
        .collect();
    let outs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let winners: Vec<_> = outs.iter().filter(|o| o.code == 0).collect();
    assert_eq!(winners.len(), 1, "{outs:?}");
    let loser = outs.iter().find(|o| o.code != 0).expect("a loser");
    assert!(loser.stderr.contains("get-iam-policy"), "{}", loser.stderr);
    let now = server
        .rouse(&[
            "services",
            "get-iam-policy",
            "b",
            "--project",
            "p",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(now["bindings"].as_array().map(Vec::len), Some(1), "{now}");

    // Bad input is named, exit 2, and nothing changes.
    for (args, needle) in [
        (vec!["--member=bob", "--role=roles/viewer"], "bob"),
        (
            vec!["--member=user:bob@x.com", "--role=roles/wizard"],
            "roles/wizard",
        ),
        (
            vec![
                "--member=user:bob@x.com",
                "--role=roles/viewer",
                "--condition=expression=request.time <,title=t",
            ],
            "request.time",
        ),
    ] {
        let mut all = vec!["services", "add-iam-policy-binding", "b", "--project", "p"];
        all.extend(args);
        let out = server.rouse(&all);
        assert_eq!(out.code, 2, "{all:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{all:?}: {}", out.stderr);
    }
    let empty = dir.join("empty-members.json");
    std::fs::write(
        &empty,
        r#"{"bindings":[{"role":"roles/viewer","members":[]}]}"#,
    )
    .expect("write");
    let out = server.rouse(&[
        "services",
        "set-iam-policy",
        "b",
        empty.to_str().expect("utf-8"),
        "--project",
        "p",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no members"), "{}", out.stderr);
    let unknown = dir.join("unknown-field.yaml");
    std::fs::write(&unknown, "bindings: []\nbindigns: []\n").expect("write");
    let out = server.rouse(&[
        "services",
        "set-iam-policy",
        "b",
        unknown.to_str().expect("utf-8"),
        "--project",
        "p",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("bindigns"), "{}", out.stderr);

    // Custom roles, test-permissions, explain.
    server
        .rouse(&[
            "iam",
            "roles",
            "create",
            "asker",
            "--project",
            "p",
            "--title",
            "Asker",
            "--permissions",
            "services.ask,services.get",
        ])
        .ok();
    let role = server
        .rouse(&[
            "iam",
            "roles",
            "describe",
            "projects/p/roles/asker",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(role["title"], "Asker", "{role}");
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=projects/p/roles/asker",
        ])
        .ok();
    let held = server
        .rouse(&[
            "iam",
            "test-permissions",
            "projects/p/services/b",
            "--member=serviceAccount:a@p.rouse",
            "--permissions=services.ask,services.delete",
            "--format",
            "json",
        ])
        .json();
    assert!(held.to_string().contains("services.ask"), "{held}");
    assert!(!held.to_string().contains("services.delete"), "{held}");
    let explained = server
        .rouse(&[
            "iam",
            "explain",
            "projects/p/services/b",
            "--member=serviceAccount:a@p.rouse",
            "--permission=services.ask",
        ])
        .ok()
        .to_owned();
    assert!(explained.contains("projects/p/roles/asker"), "{explained}");
    server
        .rouse(&[
            "iam",
            "roles",
            "update",
            "projects/p/roles/asker",
            "--permissions",
            "services.get",
        ])
        .ok();
    let held = server
        .rouse(&[
            "iam",
            "test-permissions",
            "projects/p/services/b",
            "--member=serviceAccount:a@p.rouse",
            "--permissions=services.ask",
            "--format",
            "json",
        ])
        .json();
    assert!(
        !held.to_string().contains("services.ask"),
        "role change effective at once: {held}"
    );

    // Keys: the account's own calls work until its key is deleted or the
    // account disabled, and stop at once.
    server
        .rouse(&[
            "projects",
            "add-iam-policy-binding",
            "p",
            "--member=serviceAccount:a@p.rouse",
            "--role=roles/viewer",
        ])
        .ok();
    let as_a = |args: &[&str]| server.rouse_as(Some(Path::new(a)), args);
    as_a(&["services", "describe", "b", "--project", "p"]).ok();
    server
        .rouse(&["iam", "service-accounts", "disable", "a@p.rouse"])
        .ok();
    let out = as_a(&["services", "describe", "b", "--project", "p"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("disabled"), "{}", out.stderr);
    server
        .rouse(&["iam", "service-accounts", "enable", "a@p.rouse"])
        .ok();
    as_a(&["services", "describe", "b", "--project", "p"]).ok();
    let keys = server
        .rouse(&[
            "iam",
            "service-accounts",
            "keys",
            "list",
            "--iam-account=a@p.rouse",
            "--format",
            "json",
        ])
        .json();
    let key_id = keys[0]["key_id"].as_str().expect("key id").to_owned();
    server
        .rouse(&[
            "iam",
            "service-accounts",
            "keys",
            "delete",
            &key_id,
            "--iam-account=a@p.rouse",
        ])
        .ok();
    let out = as_a(&["services", "describe", "b", "--project", "p"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not known"), "{}", out.stderr);

    // The audit log has the changes with before and after.
    let changes = server
        .rouse(&[
            "audit",
            "list",
            "--decision",
            "changed",
            "--resource",
            "projects/p",
            "--format",
            "json",
        ])
        .json();
    let set = changes
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "SetIamPolicy")
        .unwrap_or_else(|| panic!("no SetIamPolicy entry: {changes}"));
    let detail = &set["detail"];
    assert!(
        detail.get("before").is_some() && detail.get("after").is_some(),
        "{detail}"
    );
    assert!(
        set["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with("user:"),
        "{set}"
    );
}

/// A caller with only a bearer token (curl, the HTTP API) asks as itself:
/// the dispatcher checks and records that principal, not an anonymous one.
#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_caller_asks_as_itself() {
    let p = platform();
    let server = &p.server;
    echo_service(server, "p", "b");
    let d = service_account(server, p.dir.path(), "p", "asker-d");
    server
        .rouse(&[
            "services",
            "add-iam-policy-binding",
            "b",
            "--project",
            "p",
            "--member=serviceAccount:asker-d@p.rouse",
            "--role=roles/serviceUser",
        ])
        .ok();
    let out = server.rouse_as(Some(&d), &["auth", "print-access-token"]);
    assert_eq!(out.code, 0, "{out:?}");
    let clients = Clients::new(server.endpoint(), Some(out.stdout.trim().to_owned())).await;
    let mut executions = clients.executions.clone();
    let asked = executions
        .ask(clients.req(pb::AskRequest {
            project: "p".into(),
            service: "b".into(),
            input_json: "{\"n\": 3}".into(),
            ..Default::default()
        }))
        .await
        .expect("ask")
        .into_inner();
    let deadline = std::time::Instant::now() + ANSWER;
    let execution = loop {
        // Until the dispatcher records it, the execution may not exist yet.
        let got = executions
            .get_execution(clients.req(pb::GetExecutionRequest {
                id: asked.id.clone(),
            }))
            .await
            .map(tonic::Response::into_inner);
        if let Ok(execution) = &got
            && ["succeeded", "failed", "cancelled"].contains(&execution.status.as_str())
        {
            break got.expect("checked");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer: {got:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(execution.status, "succeeded", "{execution:?}");
    assert_eq!(
        execution.asked_by, "serviceAccount:asker-d@p.rouse",
        "asked as the token's principal: {execution:?}"
    );
}

/// An asker may follow and read its own question without
/// `executions.get`; another asker with the same role may not.
#[tokio::test(flavor = "multi_thread")]
async fn an_asker_reads_its_own_execution_and_no_one_elses() {
    let p = platform();
    let server = &p.server;
    echo_service(server, "p", "b");
    let a = service_account(server, p.dir.path(), "p", "asker-a");
    let c = service_account(server, p.dir.path(), "p", "asker-c");
    for member in ["asker-a", "asker-c"] {
        server
            .rouse(&[
                "services",
                "add-iam-policy-binding",
                "b",
                "--project",
                "p",
                &format!("--member=serviceAccount:{member}@p.rouse"),
                "--role=roles/serviceUser",
            ])
            .ok();
    }

    // `ask --wait` follows the question (WatchExecution) and prints the answer.
    let out = server.rouse_as(
        Some(&a),
        &[
            "ask",
            "b",
            "--project",
            "p",
            "--input",
            "{\"n\": 7}",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, server.log());
    assert!(out.stdout.contains("\"n\": 7"), "{}", out.stdout);

    let listed = server
        .rouse(&[
            "executions",
            "list",
            "--project",
            "p",
            "--service",
            "b",
            "--format",
            "json",
        ])
        .json();
    let id = listed[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no execution listed: {listed}"))
        .to_owned();
    let own = server
        .rouse_as(Some(&a), &["executions", "get", &id, "--format", "json"])
        .json();
    assert_eq!(own["status"], "succeeded", "{own}");
    assert_eq!(
        own["asked_by"], "serviceAccount:asker-a@p.rouse",
        "the execution names who asked: {own}"
    );

    // The same role does not open someone else's question, and an id that
    // does not exist is refused the same way (existence is not revealed).
    for other in [id.as_str(), "00000000-0000-0000-0000-000000000000"] {
        let out = server.rouse_as(Some(&c), &["executions", "get", other]);
        assert_eq!(out.code, 1, "{other}: {}", out.stdout);
        assert!(
            out.stderr.contains("serviceAccount:asker-c@p.rouse")
                && out.stderr.contains("executions.get"),
            "{other}: {}",
            out.stderr
        );
    }

    // The permit by ownership is audited like any other decision.
    let audit = server
        .rouse(&[
            "audit",
            "list",
            "--decision",
            "granted",
            "--principal",
            "serviceAccount:asker-a@p.rouse",
            "--format",
            "json",
        ])
        .json();
    let actions: Vec<&str> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["permission"] == "executions.get")
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["WatchExecution", "GetExecution"] {
        assert!(actions.contains(&action), "{action}: {audit}");
    }
}
