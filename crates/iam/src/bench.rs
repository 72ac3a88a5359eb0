//! A benchmark of the hot path that the workspace's `bench` binary (and this
//! crate's tests) can call: one [`crate::evaluate`] per question, against a
//! project policy and the target service's policy.
//!
//! The fixture is `n_services` services in one project, each with
//! `bindings_per_service` bindings (a mix of predefined roles, one member
//! each, every fifth with a time-bounded condition), and a project policy of
//! ten bindings including groups. Each check picks a service and a caller
//! with a fixed pseudo-random sequence: a third are granted by the service
//! policy, a third through a group on the project policy, and a third are
//! denied (the costliest path: every caller key is looked up and nothing
//! matches). Callers are built beforehand, as the request path builds one per
//! token, not per check.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use crate::compiled::CompiledPolicy;
use crate::decision::{Request, evaluate};
use crate::permission::Permission;
use crate::policy::{Condition, Policy};
use crate::principal::{Caller, GroupName, Principal};
use crate::resource::Resource;
use crate::role::Roles;

/// Roles the fixture cycles through.
const ROLES: [&str; 5] = [
    "roles/serviceUser",
    "roles/invoker",
    "roles/viewer",
    "roles/deployer",
    "roles/editor",
];

/// Everything a run needs, built once.
#[derive(Debug)]
pub struct Fixture {
    pub project: CompiledPolicy,
    pub services: Vec<(Resource, CompiledPolicy)>,
    pub roles: Roles,
    members: Vec<Vec<Caller>>,
    grouped: Caller,
    stranger: Caller,
}

fn principal(s: &str) -> Option<Principal> {
    Principal::parse(s).ok()
}

impl Fixture {
    pub fn new(n_services: usize, bindings_per_service: usize) -> Self {
        let far_future = Condition {
            expression: r#"request.time < timestamp("9999-01-01T00:00:00Z")"#.to_owned(),
            title: "far future".to_owned(),
            description: None,
        };
        let project_name = "bench";
        let mut project = Policy::default();
        project.add_binding("roles/owner", "user:owner@example.com", None);
        project.add_binding("roles/viewer", "group:everyone", None);
        project.add_binding("roles/serviceUser", "group:askers", None);
        project.add_binding("roles/deployer", "group:deployers", None);
        project.add_binding("roles/iamAdmin", "user:admin@example.com", None);
        project.add_binding("roles/auditor", "user:auditor@example.com", None);
        project.add_binding("roles/editor", "group:editors", None);
        project.add_binding("roles/invoker", "serviceAccount:ci@bench.rouse", None);
        project.add_binding("roles/viewer", "allAuthenticatedUsers", None);
        project.add_binding(
            "roles/serviceUser",
            "user:temp@example.com",
            Some(far_future.clone()),
        );
        let project_resource =
            Resource::parse(&format!("projects/{project_name}")).unwrap_or(Resource::Root);
        let project = CompiledPolicy::new(project_resource, &project);

        let mut services = Vec::with_capacity(n_services);
        let mut members = Vec::with_capacity(n_services);
        for i in 0..n_services {
            let resource = Resource::parse(&format!("projects/{project_name}/services/s-{i}"))
                .unwrap_or(Resource::Root);
            let mut policy = Policy::default();
            let mut callers = Vec::with_capacity(bindings_per_service);
            for j in 0..bindings_per_service {
                let member = format!("serviceAccount:sa-{i}-{j}@{project_name}.rouse");
                let condition = (j % 5 == 4).then(|| far_future.clone());
                // Everyone on a service may ask it; the roles vary.
                let role = if j % 2 == 0 {
                    ROLES[0]
                } else {
                    ROLES[j % ROLES.len()]
                };
                policy.add_binding(role, &member, condition);
                if let Some(caller) =
                    principal(&member).and_then(|p| Caller::authenticated(p, []).ok())
                {
                    callers.push(caller);
                }
            }
            services.push((resource.clone(), CompiledPolicy::new(resource, &policy)));
            members.push(callers);
        }
        let groups = ["askers", "team-a", "team-b"]
            .into_iter()
            .filter_map(|g| GroupName::parse(g).ok());
        let grouped = principal("user:someone@example.com")
            .and_then(|p| Caller::authenticated(p, groups).ok())
            .unwrap_or_else(Caller::anonymous);
        let stranger = principal("serviceAccount:stranger@other.rouse")
            .and_then(|p| Caller::authenticated(p, []).ok())
            .unwrap_or_else(Caller::anonymous);
        Self {
            project,
            services,
            roles: Roles::new(),
            members,
            grouped,
            stranger,
        }
    }
}

/// Times `iterations` single checks of `services.ask` (see the module docs)
/// and returns each check's duration. Sort and take the middle one for p50.
pub fn bench_evaluate(
    n_services: usize,
    bindings_per_service: usize,
    iterations: usize,
) -> Vec<Duration> {
    let fixture = Fixture::new(n_services.max(1), bindings_per_service);
    run(&fixture, iterations)
}

/// Times `iterations` checks against a prepared fixture.
pub fn run(fixture: &Fixture, iterations: usize) -> Vec<Duration> {
    let now = SystemTime::now();
    let mut samples = Vec::with_capacity(iterations);
    // A fixed LCG (Knuth's MMIX constants): the same sequence every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..iterations {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let pick = (state >> 33) as usize;
        let s = pick % fixture.services.len();
        let (resource, service_policy) = &fixture.services[s];
        let members = &fixture.members[s];
        let caller = match i % 3 {
            0 if !members.is_empty() => &members[pick / 7 % members.len()],
            1 => &fixture.grouped,
            _ => &fixture.stranger,
        };
        let request = Request {
            caller,
            permission: Permission::ServicesAsk,
            resource,
            time: now,
        };
        let policies = [&fixture.project, service_policy];
        let start = Instant::now();
        let decision = evaluate(black_box(&request), black_box(&policies), &fixture.roles);
        let took = start.elapsed();
        let _ = black_box(decision);
        samples.push(took);
    }
    samples
}

/// The `q`-quantile (0.0–1.0) of `samples` (sorts a copy).
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[rank]
}
