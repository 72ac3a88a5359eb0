//! What client commands print: `table` for people, `json` and `yaml` for
//! programs (one document on stdout, nothing else there).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use rouse_proto as pb;
use serde::Serialize;

use crate::args::Format;
use crate::exit::CliError;

#[derive(Debug, Serialize)]
pub struct ScalingView {
    pub min_instances: u32,
    pub max_instances: u32,
    pub concurrency: u32,
    pub idle_timeout: String,
    pub wake_timeout: String,
    pub request_timeout: String,
    pub freeze: bool,
    pub frozen_timeout: String,
    pub max_retries: u32,
}

#[derive(Debug, Serialize)]
pub struct SruidView {
    pub namespace: String,
    pub name: String,
}

/// A service as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub project: String,
    pub name: String,
    pub uuid: String,
    pub status: String,
    pub topic: String,
    pub subscription: String,
    pub sruid: SruidView,
    pub context_root: String,
    pub scaling: ScalingView,
    pub env: BTreeMap<String, String>,
    /// Labels a node must carry for the service's image instances; empty:
    /// any engine.
    pub node_selector: BTreeMap<String, String>,
    /// Where its HTTP requests may come from: `all` or `internal`.
    pub ingress: String,
    /// Where questions go after their last attempt failed; `null`: nowhere.
    pub dead_letter_topic: Option<String>,
    /// Where its images are pushed; `null` without a registry.
    pub image_repository: Option<String>,
    /// The revision serving untagged questions when no split applies;
    /// `null` while none can serve.
    pub serving_revision: Option<String>,
    /// The SRUID that reaches it, `namespace/name:revision`; `null` while
    /// nothing serves.
    pub serving_sruid: Option<String>,
    /// Tag → revision: questions to `namespace/name:tag` go there.
    pub tags: BTreeMap<String, String>,
    /// Revision → percent of untagged questions; empty: all go to the
    /// serving revision.
    pub traffic: BTreeMap<String, u32>,
    pub create_time: String,
    pub update_time: String,
    pub generation: u64,
}

fn duration(d: Option<&prost_types::Duration>) -> String {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default()
}

pub fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .map(|t| humantime::format_rfc3339_micros(t).to_string())
        .unwrap_or_default()
}

impl From<&pb::Service> for ServiceView {
    fn from(s: &pb::Service) -> Self {
        let scaling = s.scaling.unwrap_or_default();
        Self {
            project: s.project.clone(),
            name: s.name.clone(),
            uuid: s.uuid.clone(),
            status: s.status.clone(),
            topic: s.topic.clone(),
            subscription: s.subscription.clone(),
            sruid: SruidView {
                namespace: s.sruid_namespace.clone(),
                name: s.sruid_name.clone(),
            },
            context_root: s.context_root.clone(),
            scaling: ScalingView {
                min_instances: scaling.min_instances,
                max_instances: scaling.max_instances,
                concurrency: scaling.concurrency,
                idle_timeout: duration(scaling.idle_timeout.as_ref()),
                wake_timeout: duration(scaling.wake_timeout.as_ref()),
                request_timeout: duration(scaling.request_timeout.as_ref()),
                freeze: scaling.freeze,
                frozen_timeout: duration(scaling.frozen_timeout.as_ref()),
                max_retries: scaling.max_retries,
            },
            env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            node_selector: s
                .node_selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ingress: if s.ingress.is_empty() {
                "all".to_owned()
            } else {
                s.ingress.clone()
            },
            dead_letter_topic: Some(s.dead_letter_topic.clone()).filter(|t| !t.is_empty()),
            image_repository: Some(s.image_repository.clone()).filter(|r| !r.is_empty()),
            serving_revision: Some(s.serving_revision.clone()).filter(|r| !r.is_empty()),
            serving_sruid: Some(s.sruid.clone()).filter(|r| !r.is_empty()),
            tags: s.tags.iter().map(|(t, r)| (t.clone(), r.clone())).collect(),
            traffic: s.traffic.iter().map(|(r, p)| (r.clone(), *p)).collect(),
            create_time: timestamp(s.create_time.as_ref()),
            update_time: timestamp(s.update_time.as_ref()),
            generation: s.generation,
        }
    }
}

fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not a failure of the command.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::internal(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// Something the CLI shows: a key/value description for `describe` and a
/// row for `list`, besides its JSON/YAML form.
pub trait View: Serialize {
    /// Column headers of `list`.
    const COLUMNS: &'static [&'static str];
    /// What `list` prints when there is nothing.
    const NONE: &'static str;
    fn row(&self) -> Vec<String>;
    fn describe(&self) -> Vec<(&'static str, String)>;
}

/// Renders `value` in `format`; `table` draws the human view.
fn render<T: Serialize + ?Sized>(
    value: &T,
    format: Format,
    table: impl FnOnce() -> String,
) -> Result<String, CliError> {
    match format {
        Format::Table => Ok(table()),
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::internal(format!("cannot render JSON: {e}"))),
        Format::Yaml => serde_yaml::to_string(value)
            .map_err(|e| CliError::internal(format!("cannot render YAML: {e}"))),
    }
}

pub fn print_one<V: View>(v: &V, format: Format) -> Result<(), CliError> {
    emit(&render(v, format, || describe_table(&v.describe()))?)
}

pub fn print_list<V: View>(list: &[V], format: Format) -> Result<(), CliError> {
    emit(&render(list, format, || list_table(list))?)
}

/// Key/value lines, like `gcloud … describe`.
fn describe_table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
    out
}

/// Aligned columns with a header, like `gcloud … list`.
fn list_table<V: View>(list: &[V]) -> String {
    if list.is_empty() {
        return format!("{}\n", V::NONE);
    }
    let rows: Vec<Vec<String>> = list.iter().map(View::row).collect();
    let mut widths: Vec<usize> = V::COLUMNS.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(l, "{cell:w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut V::COLUMNS.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

impl ServiceView {
    /// The full SRUID while a revision serves, else `namespace/name` (which
    /// reaches whatever will serve).
    fn sruid(&self) -> String {
        self.serving_sruid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.sruid.namespace, self.sruid.name))
    }
}

impl View for ServiceView {
    const COLUMNS: &'static [&'static str] = &[
        "PROJECT",
        "NAME",
        "STATUS",
        "SRUID",
        "INSTANCES",
        "CONCURRENCY",
        "UUID",
    ];
    const NONE: &'static str = "no services";

    fn row(&self) -> Vec<String> {
        vec![
            self.project.clone(),
            self.name.clone(),
            self.status.clone(),
            self.sruid(),
            format!(
                "{}-{}",
                self.scaling.min_instances, self.scaling.max_instances
            ),
            self.scaling.concurrency.to_string(),
            self.uuid.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let s = self;
        let mut rows: Vec<(&str, String)> = vec![
            ("project", s.project.clone()),
            ("name", s.name.clone()),
            ("status", s.status.clone()),
            ("uuid", s.uuid.clone()),
            ("topic", s.topic.clone()),
            ("subscription", s.subscription.clone()),
            ("sruid", s.sruid()),
            (
                "serving revision",
                s.serving_revision
                    .clone()
                    .unwrap_or_else(|| "(none: `rouse revisions create` adds one)".into()),
            ),
        ];
        if s.traffic.is_empty() {
            rows.push((
                "traffic",
                match &s.serving_revision {
                    Some(r) => format!("100% {r}"),
                    None => "(none)".into(),
                },
            ));
        }
        for (revision, percent) in &s.traffic {
            rows.push(("traffic", format!("{percent}% {revision}")));
        }
        if s.tags.is_empty() {
            rows.push(("tag", "(none)".into()));
        }
        for (tag, revision) in &s.tags {
            rows.push((
                "tag",
                format!(
                    "{tag} → {revision} ({}/{}:{tag})",
                    s.sruid.namespace, s.sruid.name
                ),
            ));
        }
        rows.extend([
            ("context root", s.context_root.clone()),
            ("min instances", s.scaling.min_instances.to_string()),
            ("max instances", s.scaling.max_instances.to_string()),
            ("concurrency", s.scaling.concurrency.to_string()),
            ("idle timeout", s.scaling.idle_timeout.clone()),
            ("wake timeout", s.scaling.wake_timeout.clone()),
            ("request timeout", s.scaling.request_timeout.clone()),
            (
                "idle instances",
                match s.scaling.freeze {
                    true => format!("frozen, stopped after {}", s.scaling.frozen_timeout),
                    false => "stopped".to_owned(),
                },
            ),
            (
                "failed by the platform",
                match (s.scaling.max_retries, &s.dead_letter_topic) {
                    (0, None) => "not retried".to_owned(),
                    (0, Some(t)) => format!("not retried; then to topic {t}"),
                    (n, None) => format!("retried up to {n} times"),
                    (n, Some(t)) => format!("retried up to {n} times, then to topic {t}"),
                },
            ),
        ]);
        if s.env.is_empty() {
            rows.push(("env", "(none)".into()));
        }
        for (k, v) in &s.env {
            rows.push(("env", format!("{k}={v}")));
        }
        for (k, v) in &s.node_selector {
            rows.push(("node selector", format!("{k}={v}")));
        }
        rows.push(("ingress", s.ingress.clone()));
        if let Some(repository) = &s.image_repository {
            rows.push(("image repository", repository.clone()));
        }
        rows.push(("created", s.create_time.clone()));
        rows.push(("updated", s.update_time.clone()));
        rows.push(("generation", s.generation.to_string()));
        rows
    }
}

/// A revision as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct RevisionView {
    pub name: String,
    pub project: String,
    pub service: String,
    pub serving: bool,
    pub runtime: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workdir: String,
    pub mode: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub probe_path: String,
    /// `http/1.1`, or `h2c` for `--use-http2`.
    pub protocol: &'static str,
    pub create_time: String,
}

impl From<&pb::Revision> for RevisionView {
    fn from(r: &pb::Revision) -> Self {
        let command = r.command.clone().unwrap_or_default();
        Self {
            name: r.name.clone(),
            project: r.project.clone(),
            service: r.service.clone(),
            serving: r.serving,
            runtime: r.runtime.clone(),
            image: r.image.clone(),
            command: command.argv,
            workdir: command.workdir,
            mode: r.mode.clone(),
            probe_path: r.probe_path.clone(),
            protocol: if r.use_http2 { "h2c" } else { "http/1.1" },
            create_time: timestamp(r.create_time.as_ref()),
        }
    }
}

impl RevisionView {
    fn source(&self) -> String {
        if self.image.is_empty() {
            self.command.join(" ")
        } else {
            self.image.clone()
        }
    }
}

impl View for RevisionView {
    const COLUMNS: &'static [&'static str] =
        &["NAME", "SERVING", "RUNTIME", "MODE", "SOURCE", "CREATED"];
    const NONE: &'static str = "no revisions";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            if self.serving { "yes" } else { "" }.into(),
            self.runtime.clone(),
            self.mode.clone(),
            self.source(),
            self.create_time.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("name", self.name.clone()),
            ("service", format!("{}/{}", self.project, self.service)),
            ("serving", self.serving.to_string()),
            ("runtime", self.runtime.clone()),
            ("mode", self.mode.clone()),
            ("source", self.source()),
        ];
        if !self.workdir.is_empty() {
            rows.push(("workdir", self.workdir.clone()));
        }
        rows.push((
            "readiness",
            if self.probe_path.is_empty() {
                "any HTTP answer to GET /".into()
            } else {
                format!("HTTP GET {}", self.probe_path)
            },
        ));
        rows.push(("protocol", self.protocol.into()));
        rows.push(("created", self.create_time.clone()));
        rows
    }
}

/// An event as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: i64,
    pub kind: String,
    pub time: String,
    pub sender: String,
    pub data: serde_json::Value,
}

impl From<&pb::Event> for EventView {
    fn from(e: &pb::Event) -> Self {
        Self {
            id: e.id,
            kind: e.kind.clone(),
            time: timestamp(e.record_time.as_ref()),
            sender: e.attributes.get("sender").cloned().unwrap_or_default(),
            data: serde_json::from_str(&e.data_json).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// An execution as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct ExecutionView {
    pub id: String,
    pub retry_count: u32,
    pub project: String,
    pub service: String,
    pub status: String,
    pub asker: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub asked_by: String,
    pub revision: String,
    pub instance: String,
    pub cold_start: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub receive_time: String,
    pub ready_time: String,
    pub deliver_time: String,
    pub finish_time: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventView>,
    /// The result's output values, once answered (`executions get` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

impl From<&pb::Execution> for ExecutionView {
    fn from(e: &pb::Execution) -> Self {
        Self {
            id: e.id.clone(),
            retry_count: e.retry_count,
            project: e.project.clone(),
            service: e.service.clone(),
            status: e.status.clone(),
            asker: e.asker.clone(),
            asked_by: e.asked_by.clone(),
            revision: e.revision.clone(),
            instance: e.instance.clone(),
            cold_start: e.cold_start,
            reason: e.reason.clone(),
            receive_time: timestamp(e.receive_time.as_ref()),
            ready_time: timestamp(e.ready_time.as_ref()),
            deliver_time: timestamp(e.deliver_time.as_ref()),
            finish_time: timestamp(e.finish_time.as_ref()),
            events: e.events.iter().map(EventView::from).collect(),
            output: (!e.output_json.is_empty())
                .then(|| serde_json::from_str(&e.output_json).ok())
                .flatten(),
        }
    }
}

impl View for ExecutionView {
    const COLUMNS: &'static [&'static str] =
        &["ID", "SERVICE", "STATUS", "COLD", "RECEIVED", "REASON"];
    const NONE: &'static str = "no executions";

    fn row(&self) -> Vec<String> {
        let mut reason = self.reason.clone();
        if reason.chars().count() > 60 {
            reason = reason.chars().take(59).collect::<String>() + "…";
        }
        vec![
            self.id.clone(),
            format!("{}/{}", self.project, self.service),
            self.status.clone(),
            match self.cold_start {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => String::new(),
            },
            self.receive_time.clone(),
            reason.replace('\n', " "),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("id", self.id.clone()),
            ("retry", self.retry_count.to_string()),
            ("service", format!("{}/{}", self.project, self.service)),
            ("status", self.status.clone()),
            ("asker", self.asker.clone()),
            (
                "asked by",
                match self.asked_by.as_str() {
                    "" => "anonymous".into(),
                    principal => principal.to_owned(),
                },
            ),
            ("revision", self.revision.clone()),
            ("instance", self.instance.clone()),
            (
                "cold start",
                self.cold_start.map(|c| c.to_string()).unwrap_or_default(),
            ),
            ("received", self.receive_time.clone()),
            ("ready", self.ready_time.clone()),
            ("delivered", self.deliver_time.clone()),
            ("finished", self.finish_time.clone()),
        ];
        if !self.reason.is_empty() {
            rows.push(("reason", self.reason.clone()));
        }
        if let Some(output) = &self.output {
            rows.push(("output", output.to_string()));
        }
        for e in &self.events {
            rows.push(("event", format!("{} {} from {}", e.time, e.kind, e.sender)));
        }
        rows
    }
}

/// Renders `value` as JSON or YAML, or with `table` for people: for outputs
/// that are neither one [`View`] nor a list of them.
pub fn print_value<T: Serialize + ?Sized>(
    value: &T,
    format: Format,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    emit(&render(value, format, table)?)
}

/// Output format of IAM policies: Google's document, YAML (gcloud's default)
/// or JSON; both can be edited and given back to `set-iam-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PolicyFormat {
    #[default]
    Yaml,
    Json,
}

pub fn print_policy(policy: &rouse_iam::Policy, format: PolicyFormat) -> Result<(), CliError> {
    emit(&match format {
        PolicyFormat::Yaml => policy.to_yaml(),
        PolicyFormat::Json => policy.to_json() + "\n",
    })
}

/// A project's settings as the CLI shows them.
#[derive(Debug, Serialize)]
pub struct ProjectView {
    pub name: String,
    pub trust_sender_attribute: bool,
}

impl From<&pb::Project> for ProjectView {
    fn from(p: &pb::Project) -> Self {
        Self {
            name: p.name.clone(),
            trust_sender_attribute: p.trust_sender_attribute,
        }
    }
}

impl View for ProjectView {
    const COLUMNS: &'static [&'static str] = &["NAME", "TRUST SENDER ATTRIBUTE"];
    const NONE: &'static str = "no projects";

    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), self.trust_sender_attribute.to_string()]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            (
                "trust sender attribute",
                self.trust_sender_attribute.to_string(),
            ),
        ]
    }
}

/// A group as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub name: String,
    pub description: String,
    pub members: Vec<String>,
    pub create_time: String,
}

impl From<&pb::Group> for GroupView {
    fn from(g: &pb::Group) -> Self {
        Self {
            name: g.name.clone(),
            description: g.description.clone(),
            members: g.members.clone(),
            create_time: timestamp(g.created_at.as_ref()),
        }
    }
}

impl View for GroupView {
    const COLUMNS: &'static [&'static str] = &["NAME", "MEMBERS", "DESCRIPTION"];
    const NONE: &'static str = "no groups";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.members.len().to_string(),
            self.description.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("member", format!("group:{}", self.name)),
            ("description", self.description.clone()),
            ("members", self.members.join(", ")),
            ("created", self.create_time.clone()),
        ]
    }
}

/// A service account as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct ServiceAccountView {
    pub email: String,
    pub project: String,
    pub display_name: String,
    pub description: String,
    pub disabled: bool,
    pub create_time: String,
}

impl From<&pb::ServiceAccount> for ServiceAccountView {
    fn from(a: &pb::ServiceAccount) -> Self {
        Self {
            email: a.email.clone(),
            project: a.project.clone(),
            display_name: a.display_name.clone(),
            description: a.description.clone(),
            disabled: a.disabled,
            create_time: timestamp(a.created_at.as_ref()),
        }
    }
}

impl View for ServiceAccountView {
    const COLUMNS: &'static [&'static str] = &["DISPLAY NAME", "EMAIL", "DISABLED"];
    const NONE: &'static str = "no service accounts";

    fn row(&self) -> Vec<String> {
        vec![
            self.display_name.clone(),
            self.email.clone(),
            self.disabled.to_string(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("email", self.email.clone()),
            ("project", self.project.clone()),
            ("display name", self.display_name.clone()),
            ("description", self.description.clone()),
            ("disabled", self.disabled.to_string()),
            ("created", self.create_time.clone()),
        ]
    }
}

/// A service account key (its public half) as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub key_id: String,
    pub principal: String,
    pub create_time: String,
}

impl From<&pb::ServiceAccountKey> for KeyView {
    fn from(k: &pb::ServiceAccountKey) -> Self {
        Self {
            key_id: k.key_id.clone(),
            principal: k.principal.clone(),
            create_time: timestamp(k.created_at.as_ref()),
        }
    }
}

impl View for KeyView {
    const COLUMNS: &'static [&'static str] = &["KEY_ID", "CREATED"];
    const NONE: &'static str = "no keys";

    fn row(&self) -> Vec<String> {
        vec![self.key_id.clone(), self.create_time.clone()]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("key id", self.key_id.clone()),
            ("principal", self.principal.clone()),
            ("created", self.create_time.clone()),
        ]
    }
}

/// A role as the CLI shows it. Its JSON/YAML form is Google's role document,
/// so `describe --format yaml > role.yaml` can be edited and given back to
/// `update --file`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleView {
    pub name: String,
    pub title: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub included_permissions: Vec<String>,
    pub stage: String,
}

impl From<&pb::Role> for RoleView {
    fn from(r: &pb::Role) -> Self {
        Self {
            name: r.name.clone(),
            title: r.title.clone(),
            description: r.description.clone(),
            included_permissions: r.included_permissions.clone(),
            stage: r.stage.clone(),
        }
    }
}

impl View for RoleView {
    const COLUMNS: &'static [&'static str] = &["NAME", "TITLE", "STAGE", "PERMISSIONS"];
    const NONE: &'static str = "no roles";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.title.clone(),
            self.stage.clone(),
            self.included_permissions.len().to_string(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("name", self.name.clone()),
            ("title", self.title.clone()),
            ("description", self.description.clone()),
            ("stage", self.stage.clone()),
        ];
        if self.included_permissions.is_empty() {
            rows.push(("permission", "(none)".into()));
        }
        for p in &self.included_permissions {
            rows.push(("permission", p.clone()));
        }
        rows
    }
}

/// An audit entry as the CLI shows it.
#[derive(Debug, Serialize)]
pub struct AuditView {
    pub id: i64,
    pub time: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub permission: String,
    pub decision: String,
    /// Before/after for changes, the reason for denials.
    pub detail: serde_json::Value,
}

impl From<&pb::AuditEntry> for AuditView {
    fn from(e: &pb::AuditEntry) -> Self {
        let detail = if e.detail.is_empty() {
            serde_json::Value::Null
        } else {
            // Kept as text if it is not JSON, rather than dropped.
            serde_json::from_str(&e.detail)
                .unwrap_or_else(|_| serde_json::Value::String(e.detail.clone()))
        };
        Self {
            id: e.id,
            time: timestamp(e.at.as_ref()),
            principal: e.principal.clone(),
            action: e.action.clone(),
            resource: e.resource.clone(),
            permission: e.permission.clone(),
            decision: e.decision.clone(),
            detail,
        }
    }
}

impl AuditView {
    fn detail_line(&self) -> String {
        match &self.detail {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.replace('\n', " "),
            other => other.to_string(),
        }
    }
}

impl View for AuditView {
    const COLUMNS: &'static [&'static str] = &[
        "TIME",
        "DECISION",
        "PRINCIPAL",
        "ACTION",
        "RESOURCE",
        "PERMISSION",
        "DETAIL",
    ];
    const NONE: &'static str = "no audit entries";

    fn row(&self) -> Vec<String> {
        let mut detail = self.detail_line();
        if detail.chars().count() > 60 {
            detail = detail.chars().take(59).collect::<String>() + "…";
        }
        vec![
            self.time.clone(),
            self.decision.clone(),
            self.principal.clone(),
            self.action.clone(),
            self.resource.clone(),
            self.permission.clone(),
            detail,
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("time", self.time.clone()),
            ("decision", self.decision.clone()),
            ("principal", self.principal.clone()),
            ("action", self.action.clone()),
            ("resource", self.resource.clone()),
            ("permission", self.permission.clone()),
            ("detail", self.detail_line()),
        ]
    }
}
