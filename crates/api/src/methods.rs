//! Who may call what: every RPC of `rouse.v1`, with the permission it needs
//! and what the permission is checked on. This table is the one place that
//! says it.
//!
//! [`MethodLayer`] wraps the whole API. It finds the called method in the
//! table (a method with no entry is refused before any handler runs), hands
//! the handler a [`Gate`] through the request's extensions, and after the
//! handler answers makes sure a permission check was made: a successful
//! answer given without a [`crate::auth::Permit`] is replaced by INTERNAL
//! and logged as a bug. Handlers only supply the resource the request
//! names; the permission, and the action name audited, come from here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use rouse_iam::Permission;
use rouse_iam::Permission as P;
use tonic::Status;

/// What a method's permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The whole installation (`rouse`): groups.
    Root,
    /// `projects/P`: creating services, service accounts, roles, projects.
    Project,
    /// `projects/P/services/S`.
    Service,
    /// A project or one of its services, whichever the request names (lists).
    Scope,
    /// Whatever resource the request names: root, project or service
    /// (policies, audit).
    Named,
    /// A record found by id (an execution, a build, a trigger): checked on
    /// its service, or on the root when it does not exist, so that only
    /// callers who could see anything learn that an id is unknown.
    Record,
}

impl On {
    /// Whether a check on `resource` is one this method declares.
    pub fn admits(self, resource: &rouse_iam::Resource) -> bool {
        use rouse_iam::Resource as R;
        matches!(
            (self, resource),
            (Self::Root, R::Root)
                | (Self::Project, R::Project(_))
                | (Self::Service, R::Service(..))
                | (Self::Scope, R::Project(_) | R::Service(..))
                | (Self::Named, _)
                | (Self::Record, R::Root | R::Service(..))
        )
    }
}

/// Who passes without the permission, besides those who hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Also {
    /// Nobody.
    Nobody,
    /// The principal a record belongs to: an execution's asker may read and
    /// follow it (a service account with only `roles/serviceUser` runs
    /// `rouse ask --wait`). Audited as granted with `"as": "owner"`.
    Owner,
    /// Asked across every project, the call is made by any caller and shows
    /// only the items the permission holds on (each checked, not audited).
    EachItem,
    /// A caller asking about themselves (`TestIamPermissions` without a
    /// member), as Google's `testIamPermissions` allows.
    Themselves,
    /// Any authenticated caller (predefined roles are public knowledge).
    Authenticated,
}

/// One RPC's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `rouse.v1.Services/CreateService`: the HTTP/2 path without its `/`.
    pub path: &'static str,
    pub permission: Permission,
    pub on: On,
    pub also: Also,
}

impl Method {
    /// Whether a check on `resource` is one this entry declares: its
    /// [`On`], or the root for an anonymous caller of a method open to
    /// every authenticated one.
    pub fn admits(&self, resource: &rouse_iam::Resource) -> bool {
        self.on.admits(resource)
            || (self.also == Also::Authenticated && *resource == rouse_iam::Resource::Root)
    }

    /// The method's name, as the audit log records it (`CreateService`).
    pub fn action(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }
}

const fn m(path: &'static str, permission: Permission, on: On, also: Also) -> Method {
    Method {
        path,
        permission,
        on,
        also,
    }
}

use Also::{Authenticated, EachItem, Nobody, Owner, Themselves};
use On::{Named, Project, Record, Root, Scope, Service};

/// Every method of the API.
#[rustfmt::skip]
pub const METHODS: &[Method] = &[
    m("rouse.v1.Services/CreateService", P::ServicesCreate, Project, Nobody),
    m("rouse.v1.Services/GetService", P::ServicesGet, Service, Nobody),
    m("rouse.v1.Services/ListServices", P::ServicesList, Project, EachItem),
    m("rouse.v1.Services/UpdateService", P::ServicesUpdate, Service, Nobody),
    m("rouse.v1.Services/DeleteService", P::ServicesDelete, Service, Nobody),
    m("rouse.v1.Services/IssueDockerCredentials", P::ServicesDeploy, Service, Nobody),
    m("rouse.v1.Revisions/CreateRevision", P::RevisionsCreate, Service, Nobody),
    m("rouse.v1.Revisions/ListRevisions", P::RevisionsList, Service, Nobody),
    m("rouse.v1.Executions/Ask", P::ServicesAsk, Service, Nobody),
    m("rouse.v1.Executions/GetExecution", P::ExecutionsGet, Record, Owner),
    m("rouse.v1.Executions/ListExecutions", P::ExecutionsList, Scope, EachItem),
    m("rouse.v1.Executions/CancelExecution", P::ExecutionsCancel, Record, Nobody),
    m("rouse.v1.Executions/WatchExecution", P::ExecutionsGet, Record, Owner),
    m("rouse.v1.Logs/ReadLogs", P::LogsRead, Service, Nobody),
    m("rouse.v1.Rollouts/DescribeRevision", P::RevisionsGet, Service, Nobody),
    m("rouse.v1.Rollouts/Rollback", P::ServicesDeploy, Service, Nobody),
    m("rouse.v1.Rollouts/DeployTagged", P::ServicesDeploy, Service, Nobody),
    m("rouse.v1.Rollouts/Promote", P::ServicesDeploy, Service, Nobody),
    m("rouse.v1.Rollouts/SetTraffic", P::ServicesDeploy, Service, Nobody),
    m("rouse.v1.Rollouts/GetRouting", P::ServicesGet, Service, Nobody),
    m("rouse.v1.Builds/ListBuilds", P::BuildsList, Scope, EachItem),
    m("rouse.v1.Builds/GetBuild", P::BuildsGet, Record, Nobody),
    m("rouse.v1.Builds/CancelBuild", P::BuildsCancel, Record, Nobody),
    m("rouse.v1.Builds/SubmitBuild", P::BuildsCreate, Service, Nobody),
    m("rouse.v1.Builds/StreamBuildLogs", P::BuildsGet, Record, Nobody),
    m("rouse.v1.Builds/DeployFunction", P::BuildsCreate, Service, Nobody),
    m("rouse.v1.Builds/DeployImage", P::BuildsCreate, Service, Nobody),
    m("rouse.v1.Triggers/CreateTrigger", P::TriggersCreate, Service, Nobody),
    m("rouse.v1.Triggers/GetTrigger", P::TriggersGet, Record, Nobody),
    m("rouse.v1.Triggers/ListTriggers", P::TriggersList, Scope, EachItem),
    m("rouse.v1.Triggers/DeleteTrigger", P::TriggersDelete, Record, Nobody),
    m("rouse.v1.Secrets/SetSecret", P::ServicesUpdate, Service, Nobody),
    m("rouse.v1.Secrets/ListSecrets", P::ServicesGet, Service, Nobody),
    m("rouse.v1.Secrets/DeleteSecret", P::ServicesUpdate, Service, Nobody),
    m("rouse.v1.Iam/GetIamPolicy", P::IamGetPolicy, Named, Nobody),
    m("rouse.v1.Iam/SetIamPolicy", P::IamSetPolicy, Named, Nobody),
    m("rouse.v1.Iam/TestIamPermissions", P::IamGetPolicy, Named, Themselves),
    m("rouse.v1.Iam/ExplainPermission", P::IamGetPolicy, Named, Nobody),
    m("rouse.v1.Iam/GetProject", P::ProjectsGet, Project, Nobody),
    m("rouse.v1.Iam/UpdateProject", P::ProjectsUpdate, Project, Nobody),
    m("rouse.v1.Iam/ListAudit", P::AuditRead, Named, Nobody),
    m("rouse.v1.ServiceAccounts/CreateServiceAccount", P::ServiceAccountsCreate, Project, Nobody),
    m("rouse.v1.ServiceAccounts/GetServiceAccount", P::ServiceAccountsGet, Project, Nobody),
    m("rouse.v1.ServiceAccounts/ListServiceAccounts", P::ServiceAccountsList, Project, EachItem),
    m("rouse.v1.ServiceAccounts/DeleteServiceAccount", P::ServiceAccountsDelete, Project, Nobody),
    m("rouse.v1.ServiceAccounts/SetServiceAccountDisabled", P::ServiceAccountsUpdate, Project, Nobody),
    m("rouse.v1.ServiceAccounts/CreateKey", P::ServiceAccountKeysCreate, Project, Nobody),
    m("rouse.v1.ServiceAccounts/ListKeys", P::ServiceAccountKeysList, Project, Nobody),
    m("rouse.v1.ServiceAccounts/DeleteKey", P::ServiceAccountKeysDelete, Project, Nobody),
    m("rouse.v1.Nodes/AddNode", P::NodesCreate, Root, Nobody),
    m("rouse.v1.Nodes/ListNodes", P::NodesList, Root, Nobody),
    m("rouse.v1.Nodes/DrainNode", P::NodesUpdate, Root, Nobody),
    m("rouse.v1.Nodes/RemoveNode", P::NodesDelete, Root, Nobody),
    m("rouse.v1.Groups/CreateGroup", P::GroupsCreate, Root, Nobody),
    m("rouse.v1.Groups/GetGroup", P::GroupsGet, Root, Nobody),
    m("rouse.v1.Groups/ListGroups", P::GroupsList, Root, Nobody),
    m("rouse.v1.Groups/DeleteGroup", P::GroupsDelete, Root, Nobody),
    m("rouse.v1.Groups/AddGroupMember", P::GroupsUpdate, Root, Nobody),
    m("rouse.v1.Groups/RemoveGroupMember", P::GroupsUpdate, Root, Nobody),
    m("rouse.v1.Roles/CreateRole", P::RolesCreate, Project, Nobody),
    m("rouse.v1.Roles/GetRole", P::RolesGet, Project, Authenticated),
    m("rouse.v1.Roles/ListRoles", P::RolesList, Project, Authenticated),
    m("rouse.v1.Roles/UpdateRole", P::RolesUpdate, Project, Nobody),
    m("rouse.v1.Roles/DeleteRole", P::RolesDelete, Project, Nobody),
];

/// The entry of the method at HTTP/2 path `path` (`/rouse.v1.X/Y`).
pub fn find(path: &str) -> Option<&'static Method> {
    let path = path.strip_prefix('/')?;
    METHODS.iter().find(|m| m.path == path)
}

/// What the layer hands a handler: its method's entry, and a mark that a
/// permission check was made.
#[derive(Debug, Clone)]
pub struct Gate {
    pub method: &'static Method,
    checked: Arc<AtomicBool>,
}

impl Gate {
    pub fn new(method: &'static Method) -> Self {
        Self {
            method,
            checked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records that the handler's permission check passed.
    pub(crate) fn pass(&self) {
        self.checked.store(true, Ordering::Release);
    }

    pub fn passed(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }
}

/// Wraps the API: see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodLayer;

impl<S> tower_layer::Layer<S> for MethodLayer {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated { inner }
    }
}

/// The service [`MethodLayer`] makes.
#[derive(Debug, Clone)]
pub struct Gated<S> {
    inner: S,
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S, B> tower_service::Service<http::Request<B>> for Gated<S>
where
    S: tower_service::Service<http::Request<B>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(method) = find(request.uri().path()) else {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!(
                    "`{path}` is not a method of this server; `rouse --help` lists what it serves"
                ))
                .into_http())
            });
        };
        let gate = Gate::new(method);
        request.extensions_mut().insert(gate.clone());
        // The service polled ready is the one that is called; a fresh clone
        // takes its place for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(check_passed(&gate, response))
        })
    }
}

/// `response`, unless it is a success given without a permission check.
fn check_passed(gate: &Gate, response: HttpResponse) -> HttpResponse {
    // A handler's error is answered trailers-only: `grpc-status` in the
    // headers. A success carries it in the trailers.
    let failed = response.headers().contains_key("grpc-status");
    if failed || gate.passed() {
        return response;
    }
    tracing::error!(
        method = gate.method.path,
        "a handler answered without a permission check; the answer was withheld"
    );
    Status::internal("internal error; the server log has the details").into_http()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    fn rpcs() -> BTreeSet<String> {
        let set = FileDescriptorSet::decode(rouse_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let mut out = BTreeSet::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    out.insert(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn every_rpc_of_the_schema_has_exactly_one_entry() {
        let rpcs = rpcs();
        assert!(
            rpcs.len() > 50,
            "the descriptor set lists the API: {rpcs:?}"
        );
        let missing: Vec<_> = rpcs
            .iter()
            .filter(|r| find(&format!("/{r}")).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "RPCs with no authorization entry: {missing:?}"
        );
        let stale: Vec<_> = METHODS.iter().filter(|m| !rpcs.contains(m.path)).collect();
        assert!(
            stale.is_empty(),
            "entries for RPCs the schema lacks: {stale:?}"
        );
        let distinct: BTreeSet<_> = METHODS.iter().map(|m| m.path).collect();
        assert_eq!(distinct.len(), METHODS.len(), "a method is listed twice");
    }

    #[test]
    fn reads_need_read_permissions_and_changes_need_write_ones() {
        for method in METHODS {
            let action = method.action();
            let verb = method
                .permission
                .as_str()
                .rsplit('.')
                .next()
                .unwrap_or_default();
            let reads = [
                "Get", "List", "Describe", "Read", "Watch", "Stream", "Explain", "Test",
            ]
            .iter()
            .any(|p| action.starts_with(p));
            let read_verb = matches!(verb, "get" | "list" | "getPolicy" | "read");
            assert_eq!(
                reads,
                read_verb,
                "{} needs `{}`: a read must need a read permission and a change a write one",
                method.path,
                method.permission.as_str()
            );
        }
    }

    #[test]
    fn unknown_paths_have_no_entry() {
        assert!(find("/rouse.v1.Services/DropEverything").is_none());
        assert!(
            find("rouse.v1.Services/GetService").is_none(),
            "paths start with /"
        );
        assert_eq!(
            find("/rouse.v1.Services/GetService").map(Method::action),
            Some("GetService")
        );
    }

    #[test]
    fn resources_outside_the_declared_kind_are_not_admitted() {
        use rouse_core::{ProjectName, ServiceName};
        use rouse_iam::Resource;
        let p = ProjectName::parse("p").expect("a valid project");
        let s = ServiceName::parse(&p, "s").expect("a valid service");
        let project = Resource::Project(p.clone());
        let service = Resource::Service(p, s);
        assert!(On::Project.admits(&project));
        assert!(!On::Project.admits(&service));
        assert!(!On::Service.admits(&Resource::Root));
        assert!(On::Record.admits(&Resource::Root) && On::Record.admits(&service));
        assert!(!On::Record.admits(&project));
        assert!(On::Scope.admits(&project) && On::Scope.admits(&service));
    }

    #[tokio::test]
    async fn a_success_without_a_check_is_withheld() {
        use tower_layer::Layer;
        use tower_service::Service;

        #[derive(Clone)]
        struct Handler {
            check: bool,
        }
        impl Service<http::Request<()>> for Handler {
            type Response = HttpResponse;
            type Error = std::convert::Infallible;
            type Future = futures::future::Ready<Result<HttpResponse, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, request: http::Request<()>) -> Self::Future {
                let gate = request
                    .extensions()
                    .get::<Gate>()
                    .expect("the layer adds a gate");
                if self.check {
                    gate.pass();
                }
                futures::future::ready(Ok(http::Response::new(tonic::body::Body::default())))
            }
        }
        let call = |check: bool, path: &'static str| async move {
            let mut service = MethodLayer.layer(Handler { check });
            let request = http::Request::builder()
                .uri(path)
                .body(())
                .expect("a request");
            let Ok(response) = service.call(request).await;
            response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().expect("ASCII").to_owned())
        };
        assert_eq!(call(true, "/rouse.v1.Services/GetService").await, None);
        // 13 = INTERNAL
        assert_eq!(
            call(false, "/rouse.v1.Services/GetService")
                .await
                .as_deref(),
            Some("13")
        );
        // 12 = UNIMPLEMENTED, and the handler never ran
        assert_eq!(
            call(true, "/rouse.v1.Services/Nope").await.as_deref(),
            Some("12")
        );
    }
}
