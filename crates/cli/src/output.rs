//! What client commands print: `table` for people, `json` and `yaml` for
//! programs (one document on stdout, nothing else there).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use rouse_api::pb;
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
    pub create_time: String,
    pub update_time: String,
    pub generation: u64,
}

fn duration(d: Option<&prost_types::Duration>) -> String {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default()
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
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
            },
            env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
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

pub fn print_one(s: &ServiceView, format: Format) -> Result<(), CliError> {
    emit(&render(s, format, || describe_table(s))?)
}

pub fn print_list(list: &[ServiceView], format: Format) -> Result<(), CliError> {
    emit(&render(list, format, || list_table(list))?)
}

/// Key/value lines, like `gcloud … describe`.
fn describe_table(s: &ServiceView) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("project", s.project.clone()),
        ("name", s.name.clone()),
        ("status", s.status.clone()),
        ("uuid", s.uuid.clone()),
        ("topic", s.topic.clone()),
        ("subscription", s.subscription.clone()),
        ("sruid", format!("{}/{}", s.sruid.namespace, s.sruid.name)),
        ("context root", s.context_root.clone()),
        ("min instances", s.scaling.min_instances.to_string()),
        ("max instances", s.scaling.max_instances.to_string()),
        ("concurrency", s.scaling.concurrency.to_string()),
        ("idle timeout", s.scaling.idle_timeout.clone()),
        ("wake timeout", s.scaling.wake_timeout.clone()),
        ("request timeout", s.scaling.request_timeout.clone()),
    ];
    if s.env.is_empty() {
        rows.push(("env", "(none)".into()));
    }
    for (k, v) in &s.env {
        rows.push(("env", format!("{k}={v}")));
    }
    rows.push(("created", s.create_time.clone()));
    rows.push(("updated", s.update_time.clone()));
    rows.push(("generation", s.generation.to_string()));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
    out
}

/// Aligned columns with a header, like `gcloud … list`.
fn list_table(list: &[ServiceView]) -> String {
    if list.is_empty() {
        return "no services\n".into();
    }
    let header = [
        "PROJECT",
        "NAME",
        "STATUS",
        "SRUID",
        "INSTANCES",
        "CONCURRENCY",
        "UUID",
    ];
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|s| {
            [
                s.project.clone(),
                s.name.clone(),
                s.status.clone(),
                format!("{}/{}", s.sruid.namespace, s.sruid.name),
                format!("{}-{}", s.scaling.min_instances, s.scaling.max_instances),
                s.scaling.concurrency.to_string(),
                s.uuid.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(widths) {
            let _ = write!(l, "{cell:w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
