//! The web console at `/ui` on the API port: server-rendered HTML (no
//! JavaScript toolchain; one inline script follows a build's log), every
//! page made from the very gRPC handlers behind the same [`Gate`]s as the
//! HTTP/JSON routes, so a viewer sees exactly what its permissions show
//! and every call is audited the same way.
//!
//! - Sign-in: the token from `rouse auth print-access-token`, pasted into
//!   `/ui/signin` (or given once as `/ui/signin?token=…&next=/ui/…`, as
//!   Jupyter's links do) becomes an `HttpOnly`, `SameSite=Strict` cookie
//!   sent as the bearer token; `Authorization: Bearer` works too.
//! - Pages: services (status, serving revision, traffic), a service
//!   (revisions with a rollback button, executions with their timings and
//!   cold-start marks, a cold-start chart), an execution (events, output),
//!   builds, a build (its log, followed live through server-sent events).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::StreamExt;
use http::{HeaderValue, Method, StatusCode, header};
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::{Apis, HttpResponse, gated, http_status, passed};
use crate::pb;
use pb::builds_server::Builds;
use pb::executions_server::Executions;
use pb::revisions_server::Revisions;
use pb::rollouts_server::Rollouts;
use pb::services_server::Services;

/// The cookie holding the caller's token.
const COOKIE: &str = "rouse_token";
/// Executions a service page shows (and charts).
const RECENT: u32 = 50;

/// Answers a request under `/ui`.
pub(super) async fn handle(
    apis: Arc<Apis>,
    parts: http::request::Parts,
    body: Bytes,
) -> HttpResponse {
    let path = parts.uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let query = parts.uri.query().unwrap_or_default();
    let method = parts.method.clone();
    if segments.first() == Some(&"signin") {
        return signin(&method, query, &body);
    }
    if segments.first() == Some(&"signout") {
        let mut response = redirect("/ui/signin");
        set_cookie(&mut response, "", 0);
        return response;
    }
    let Some(metadata) = caller(&parts.headers) else {
        return match method {
            Method::GET => redirect(&format!(
                "/ui/signin?next={}",
                percent_encoding::utf8_percent_encode(
                    parts.uri.path(),
                    percent_encoding::NON_ALPHANUMERIC
                )
            )),
            _ => page_error(&Status::unauthenticated("sign in first")),
        };
    };
    let ui = Ui { apis, metadata };
    let answer = match (method, segments.as_slice()) {
        (Method::GET, [] | [""]) => return redirect("/ui/services"),
        (Method::GET, ["services"]) => ui.services().await,
        (Method::GET, ["projects", project, "services", service]) => {
            ui.service(project, service, query).await
        }
        (Method::POST, ["projects", project, "services", service, "rollback"]) => {
            ui.rollback(project, service, &body).await
        }
        (Method::GET, ["executions", id]) => ui.execution(id).await,
        (Method::GET, ["builds"]) => ui.builds().await,
        (Method::GET, ["builds", id]) => ui.build(id).await,
        (Method::GET, ["builds", id, "events"]) => return ui.build_events(id).await,
        _ => Err(Status::not_found(format!(
            "no page `{path}`; start at /ui/services"
        ))),
    };
    match answer {
        Ok(response) => response,
        Err(e) => page_error(&e),
    }
}

/// The caller's token, from the cookie or an `Authorization` header, as
/// the metadata a handler reads.
fn caller(headers: &http::HeaderMap) -> Option<MetadataMap> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")))
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })?;
    let mut map = http::HeaderMap::new();
    map.insert(header::AUTHORIZATION, HeaderValue::from_str(&token).ok()?);
    Some(MetadataMap::from_headers(map))
}

/// `key=value&…` (a query or a form body), decoded.
fn form(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text).into_owned().collect()
}

fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn signin(method: &Method, query: &str, body: &[u8]) -> HttpResponse {
    let query = form(query.as_bytes());
    let posted = form(body);
    let token = match method {
        &Method::POST => field(&posted, "token"),
        _ => field(&query, "token"),
    };
    // Only a page of the console: never a redirect elsewhere.
    let next = field(&query, "next")
        .or(field(&posted, "next"))
        .filter(|n| n.starts_with("/ui/") && !n.starts_with("/ui//"))
        .unwrap_or("/ui/services");
    match token {
        Some(token) if HeaderValue::from_str(token.trim()).is_ok() => {
            let mut response = redirect(next);
            set_cookie(&mut response, token.trim(), 8 * 3600);
            response
        }
        Some(_) => page_error(&Status::invalid_argument(
            "that token is not printable text; paste the output of `rouse auth print-access-token`",
        )),
        None => html(
            StatusCode::OK,
            "Sign in",
            &format!(
                r#"<p>Paste a token from <code>rouse auth print-access-token</code> (it lasts an hour; the console keeps it in a cookie for this browser session).</p>
<form method="post" action="/ui/signin"><input type="hidden" name="next" value="{next}">
<textarea name="token" rows="4" cols="80" placeholder="eyJ…"></textarea><br><button type="submit">Sign in</button></form>"#,
                next = esc(next)
            ),
        ),
    }
}

fn set_cookie(response: &mut HttpResponse, token: &str, max_age: u64) {
    let cookie =
        format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

struct Ui {
    apis: Arc<Apis>,
    metadata: MetadataMap,
}

/// Calls `$trait::$method` on `apis.$api` as the caller, behind `$rpc`'s gate.
macro_rules! call {
    ($ui:expr, $api:ident, $trait:path, $method:ident, $rpc:literal, $message:expr) => {{
        let (request, gate) = gated(&$ui.metadata, $rpc, $message)?;
        let answer = <_ as $trait>::$method(&$ui.apis.$api, request).await?;
        passed(&gate)?;
        answer.into_inner()
    }};
}

impl Ui {
    async fn services(&self) -> Result<HttpResponse, Status> {
        let list = call!(
            self,
            services,
            Services,
            list_services,
            "rouse.v1.Services/ListServices",
            pb::ListServicesRequest::default()
        );
        let mut rows = String::new();
        for s in &list.services {
            let _ = write!(
                rows,
                "<tr><td>{project}</td><td><a href=\"/ui/projects/{project}/services/{name}\">{name}</a></td><td>{status}</td><td>{serving}</td><td>{traffic}</td><td>{scaling}</td></tr>",
                project = esc(&s.project),
                name = esc(&s.name),
                status = badge(&s.status),
                serving = esc(&s.serving_revision),
                traffic = esc(&traffic(&s.traffic)),
                scaling = esc(&scaling(s.scaling.as_ref())),
            );
        }
        let body = if list.services.is_empty() {
            "<p>No service you may see.</p>".to_owned()
        } else {
            format!(
                "<table><tr><th>project</th><th>service</th><th>status</th><th>serving revision</th><th>traffic</th><th>scaling</th></tr>{rows}</table>"
            )
        };
        Ok(html(StatusCode::OK, "Services", &body))
    }

    async fn service(
        &self,
        project: &str,
        name: &str,
        query: &str,
    ) -> Result<HttpResponse, Status> {
        let service = call!(
            self,
            services,
            Services,
            get_service,
            "rouse.v1.Services/GetService",
            pb::GetServiceRequest {
                project: project.to_owned(),
                name: name.to_owned()
            }
        );
        let revisions = call!(
            self,
            revisions,
            Revisions,
            list_revisions,
            "rouse.v1.Revisions/ListRevisions",
            pb::ListRevisionsRequest {
                project: project.to_owned(),
                service: name.to_owned()
            }
        );
        let executions = call!(
            self,
            executions,
            Executions,
            list_executions,
            "rouse.v1.Executions/ListExecutions",
            pb::ListExecutionsRequest {
                project: project.to_owned(),
                service: name.to_owned(),
                limit: RECENT,
                ..Default::default()
            }
        );
        let mut body = String::new();
        if let Some(done) = field(&form(query.as_bytes()), "done") {
            let _ = write!(body, "<p class=\"note\">{}</p>", esc(done));
        }
        let _ = write!(
            body,
            "<p>{status} · serving <b>{serving}</b> · traffic {traffic} · {scaling} · topic <code>{topic}</code> · SRUID <code>{sruid}</code></p>",
            status = badge(&service.status),
            serving = esc(if service.serving_revision.is_empty() {
                "nothing yet"
            } else {
                &service.serving_revision
            }),
            traffic = esc(&traffic(&service.traffic)),
            scaling = esc(&scaling(service.scaling.as_ref())),
            topic = esc(&service.topic),
            sruid = esc(&service.sruid),
        );
        body.push_str("<h2>Cold starts</h2>");
        body.push_str(&chart(&executions.executions));
        body.push_str("<h2>Revisions</h2><table><tr><th>revision</th><th>runtime</th><th>source</th><th>mode</th><th>created</th><th></th></tr>");
        let action = format!(
            "/ui/projects/{}/services/{}/rollback",
            esc(project),
            esc(name)
        );
        for r in &revisions.revisions {
            let source = match &r.command {
                Some(c) if r.image.is_empty() => c.argv.join(" "),
                _ => r.image.clone(),
            };
            let button = if r.serving {
                "<b>serving</b>".to_owned()
            } else {
                format!(
                    "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"revision\" value=\"{rev}\"><button type=\"submit\">Roll back to it</button></form>",
                    rev = esc(&r.name)
                )
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{button}</td></tr>",
                esc(&r.name),
                esc(&r.runtime),
                esc(&source),
                esc(&r.mode),
                when(r.create_time.as_ref()),
            );
        }
        body.push_str("</table><h2>Executions</h2>");
        body.push_str(&executions_table(&executions.executions));
        Ok(html(
            StatusCode::OK,
            &format!("{}/{}", service.project, service.name),
            &body,
        ))
    }

    async fn rollback(
        &self,
        project: &str,
        name: &str,
        body: &[u8],
    ) -> Result<HttpResponse, Status> {
        let posted = form(body);
        let revision = field(&posted, "revision").ok_or_else(|| {
            Status::invalid_argument(
                "the form names no revision; use a rollback button of the service's page",
            )
        })?;
        let routing = call!(
            self,
            rollouts,
            Rollouts,
            rollback,
            "rouse.v1.Rollouts/Rollback",
            pb::RollbackRequest {
                project: project.to_owned(),
                service: name.to_owned(),
                to_revision: revision.to_owned(),
            }
        );
        let done = format!("{} serves now", routing.serving);
        Ok(redirect(&format!(
            "/ui/projects/{}/services/{}?done={}",
            project,
            name,
            percent_encoding::utf8_percent_encode(&done, percent_encoding::NON_ALPHANUMERIC)
        )))
    }

    async fn execution(&self, id: &str) -> Result<HttpResponse, Status> {
        let e = call!(
            self,
            executions,
            Executions,
            get_execution,
            "rouse.v1.Executions/GetExecution",
            pb::GetExecutionRequest { id: id.to_owned() }
        );
        let mut body = format!(
            "<p>{status} · <a href=\"/ui/projects/{p}/services/{s}\">{p}/{s}</a> · retry {retry} · revision {rev} · instance {inst} · {cold} · asked by {by}</p>",
            status = badge(&e.status),
            p = esc(&e.project),
            s = esc(&e.service),
            retry = e.retry_count,
            rev = esc(&e.revision),
            inst = esc(&e.instance),
            cold = cold(e.cold_start),
            by = esc(if e.asked_by.is_empty() {
                "anonymous"
            } else {
                &e.asked_by
            }),
        );
        body.push_str(&executions_table(std::slice::from_ref(&e)));
        if !e.output_json.is_empty() {
            let _ = write!(
                body,
                "<h2>Output</h2><pre>{}</pre>",
                esc(&pretty(&e.output_json))
            );
        }
        body.push_str("<h2>Events</h2><table><tr><th>recorded</th><th>kind</th><th>data</th></tr>");
        for ev in &e.events {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
                when(ev.record_time.as_ref()),
                esc(&ev.kind),
                esc(&pretty(&ev.data_json))
            );
        }
        body.push_str("</table>");
        Ok(html(StatusCode::OK, &format!("Execution {id}"), &body))
    }

    async fn builds(&self) -> Result<HttpResponse, Status> {
        // Builds are listed per project: those of the projects whose
        // services the caller sees, where it may list builds.
        let services = call!(
            self,
            services,
            Services,
            list_services,
            "rouse.v1.Services/ListServices",
            pb::ListServicesRequest::default()
        );
        let mut projects: Vec<String> = services
            .services
            .iter()
            .map(|s| s.project.clone())
            .collect();
        projects.sort();
        projects.dedup();
        let mut builds = Vec::new();
        for project in projects {
            let listed: Result<pb::ListBuildsResponse, Status> = async {
                Ok(call!(
                    self,
                    builds,
                    Builds,
                    list_builds,
                    "rouse.v1.Builds/ListBuilds",
                    pb::ListBuildsRequest {
                        project,
                        ..Default::default()
                    }
                ))
            }
            .await;
            if let Ok(list) = listed {
                builds.extend(list.builds);
            }
        }
        builds.sort_by_key(|b| std::cmp::Reverse(b.create_time.as_ref().map(|t| t.seconds)));
        let mut body = String::from(
            "<table><tr><th>build</th><th>service</th><th>status</th><th>step</th><th>source</th><th>revision</th><th>created</th></tr>",
        );
        for b in &builds {
            let _ = write!(
                body,
                "<tr><td><a href=\"/ui/builds/{id}\">{id}</a></td><td>{p}/{s}</td><td>{status}</td><td>{step}</td><td><code>{source}</code></td><td>{rev}</td><td>{created}</td></tr>",
                id = esc(&b.id),
                p = esc(&b.project),
                s = esc(&b.service),
                status = badge(&b.status),
                step = esc(&b.step),
                source = esc(&b.source),
                rev = esc(&b.revision),
                created = when(b.create_time.as_ref()),
            );
        }
        body.push_str("</table>");
        if builds.is_empty() {
            body = "<p>No build you may see.</p>".into();
        }
        Ok(html(StatusCode::OK, "Builds", &body))
    }

    async fn build(&self, id: &str) -> Result<HttpResponse, Status> {
        let b = call!(
            self,
            builds,
            Builds,
            get_build,
            "rouse.v1.Builds/GetBuild",
            pb::GetBuildRequest { id: id.to_owned() }
        );
        let mut body = format!(
            "<p><span id=\"status\">{status}</span> · <a href=\"/ui/projects/{p}/services/{s}\">{p}/{s}</a> · step {step} · revision {rev} · created {created}</p>",
            status = badge(&b.status),
            p = esc(&b.project),
            s = esc(&b.service),
            step = esc(&b.step),
            rev = esc(&b.revision),
            created = when(b.create_time.as_ref()),
        );
        if !b.failure.is_empty() {
            let _ = write!(body, "<p class=\"failed\">{}</p>", esc(&b.failure));
        }
        // The log follows live (server-sent events) until the build ends.
        let _ = write!(
            body,
            r#"<h2>Log</h2><pre id="log"></pre>
<script>
const log = document.getElementById("log");
const events = new EventSource("/ui/builds/{id}/events");
events.onmessage = (e) => {{ log.textContent += e.data + "\n"; }};
events.addEventListener("status", (e) => {{ document.getElementById("status").textContent = e.data; events.close(); }});
</script>"#,
            id = esc(id)
        );
        Ok(html(StatusCode::OK, &format!("Build {id}"), &body))
    }

    /// The build's log as server-sent events: each line a message, then its
    /// final status as a `status` event.
    async fn build_events(&self, id: &str) -> HttpResponse {
        let stream = async {
            Ok::<_, Status>(call!(
                self,
                builds,
                Builds,
                stream_build_logs,
                "rouse.v1.Builds/StreamBuildLogs",
                pb::StreamBuildLogsRequest {
                    id: id.to_owned(),
                    follow: true,
                }
            ))
        }
        .await;
        let stream = match stream {
            Ok(s) => s,
            Err(e) => return page_error(&e),
        };
        let events = stream.map(|line| {
            let text = match line {
                Ok(l) if !l.status.is_empty() => format!("event: status\ndata: {}\n\n", l.status),
                Ok(l) => l
                    .line
                    .lines()
                    .map(|part| format!("data: {part}\n"))
                    .chain(std::iter::once("\n".to_owned()))
                    .collect(),
                Err(e) => format!("event: error\ndata: {}\n\n", e.message().replace('\n', " ")),
            };
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(text)))
        });
        let mut response = http::Response::new(tonic::body::Body::new(
            http_body_util::StreamBody::new(events),
        ));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// A table of executions with their timings: waiting for an instance
/// (received → ready), running (delivered → finished), and whether it
/// was a cold start.
fn executions_table(executions: &[pb::Execution]) -> String {
    let mut out = String::from(
        "<table><tr><th>execution</th><th>retry</th><th>status</th><th>cold start</th><th>received</th><th>wait</th><th>run</th><th>reason</th></tr>",
    );
    for e in executions {
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/executions/{id}\">{id}</a></td><td>{retry}</td><td>{status}</td><td>{cold}</td><td>{received}</td><td>{wait}</td><td>{run}</td><td>{reason}</td></tr>",
            id = esc(&e.id),
            retry = e.retry_count,
            status = badge(&e.status),
            cold = cold(e.cold_start),
            received = when(e.receive_time.as_ref()),
            wait = span(e.receive_time.as_ref(), reached(e)),
            run = span(e.deliver_time.as_ref(), e.finish_time.as_ref()),
            reason = esc(&e.reason),
        );
    }
    out.push_str("</table>");
    out
}

/// An SVG bar per execution (oldest left): how long it waited for an
/// instance (received → ready, or → delivered when one was warm), red for a
/// cold start, green for a warm one.
fn chart(executions: &[pb::Execution]) -> String {
    let bars: Vec<(f64, bool, &str)> = executions
        .iter()
        .rev()
        .filter_map(|e| {
            let wait = seconds(e.receive_time.as_ref(), reached(e))?;
            Some((wait, e.cold_start == Some(true), e.id.as_str()))
        })
        .collect();
    if bars.is_empty() {
        return "<p>No execution has reached an instance yet.</p>".into();
    }
    let (width, height) = (600.0, 160.0);
    let top = bars.iter().map(|b| b.0).fold(0.001, f64::max);
    // At most 24 px a bar, so that a few executions still read as a chart.
    let step = (width / bars.len() as f64).min(24.0);
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{width}\" height=\"{h}\" viewBox=\"0 0 {width} {h}\" role=\"img\" aria-label=\"wait for an instance per execution\">",
        h = height + 20.0
    );
    for (i, (wait, cold, id)) in bars.iter().enumerate() {
        let h = (wait / top * height).max(1.0);
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{fill}\"><title>{id}: {wait:.3} s{kind}</title></rect>",
            x = i as f64 * step + 1.0,
            y = height - h,
            w = (step - 2.0).max(1.0),
            fill = if *cold { "#d9534f" } else { "#5cb85c" },
            id = esc(id),
            kind = if *cold { ", cold start" } else { "" },
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"0\" y1=\"{height}\" x2=\"{width}\" y2=\"{height}\" stroke=\"#999\"/>"
    );
    let cold_starts = bars.iter().filter(|b| b.1).count();
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{y}\" font-size=\"12\">wait for an instance, the last {n} executions: {cold_starts} cold (red), longest {top:.3} s</text></svg>",
        y = height + 15.0,
        n = bars.len(),
    );
    svg
}

/// When an execution reached an instance: its cold start's end, else its
/// delivery to a warm one.
fn reached(e: &pb::Execution) -> Option<&prost_types::Timestamp> {
    e.ready_time.as_ref().or(e.deliver_time.as_ref())
}

fn system_time(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn seconds(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Option<f64> {
    let (from, to) = (system_time(from)?, system_time(to)?);
    Some(
        to.duration_since(from)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64(),
    )
}

fn span(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> String {
    seconds(from, to).map_or_else(String::new, |s| format!("{s:.3} s"))
}

fn when(t: Option<&prost_types::Timestamp>) -> String {
    system_time(t)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

fn cold(c: Option<bool>) -> &'static str {
    match c {
        Some(true) => "<span class=\"cold\">cold</span>",
        Some(false) => "warm",
        None => "",
    }
}

fn traffic(split: &std::collections::HashMap<String, u32>) -> String {
    if split.is_empty() {
        return "all to the serving revision".into();
    }
    let mut parts: Vec<(&String, &u32)> = split.iter().collect();
    parts.sort();
    parts
        .iter()
        .map(|(r, p)| format!("{r} {p}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scaling(s: Option<&pb::Scaling>) -> String {
    s.map(|s| {
        format!(
            "{}..{} instances × {}",
            s.min_instances, s.max_instances, s.concurrency
        )
    })
    .unwrap_or_default()
}

fn badge(status: &str) -> String {
    format!("<span class=\"status {0}\">{0}</span>", esc(status))
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.5em;max-height:30em;overflow:auto;margin:0}.status{padding:0 .3em;border-radius:3px;background:#eee}.succeeded,.ready{background:#dff0d8}.failed,.cancelled{background:#f2dede}.cold{color:#d9534f;font-weight:bold}.note{background:#d9edf7;padding:.5em}.error{background:#f2dede;padding:.5em}";

fn html(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} · Rouse</title><style>{STYLE}</style></head><body><nav><b>Rouse</b> <a href=\"/ui/services\">Services</a><a href=\"/ui/builds\">Builds</a><a href=\"/ui/signout\">Sign out</a></nav><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(page),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn page_error(e: &Status) -> HttpResponse {
    let hint = match e.code() {
        tonic::Code::Unauthenticated => " <a href=\"/ui/signin\">Sign in again.</a>",
        _ => "",
    };
    html(
        http_status(e.code()),
        "Error",
        &format!("<p class=\"error\">{}{hint}</p>", esc(e.message())),
    )
}

fn redirect(to: &str) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sign_in_redirects_only_within_the_console() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let to = |query: &str| {
            signin(&Method::GET, query, b"")
                .headers()
                .get(header::LOCATION)
                .map(|l| l.to_str().unwrap_or_default().to_owned())
        };
        assert_eq!(to("token=t&next=/ui/builds").as_deref(), Some("/ui/builds"));
        assert_eq!(
            to("token=t&next=https://evil.example/").as_deref(),
            Some("/ui/services")
        );
        assert_eq!(
            to("token=t&next=//evil.example/ui/").as_deref(),
            Some("/ui/services")
        );
        assert_eq!(to("next=/ui/builds"), None, "no token: the form");
        let cookie = signin(&Method::POST, "", b"token=abc")
            .headers()
            .get(header::SET_COOKIE)
            .map(|c| c.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        assert!(
            cookie.starts_with("rouse_token=abc;") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
    }

    #[test]
    fn a_cookie_becomes_the_bearer_token() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; rouse_token=tok"),
        );
        let metadata = caller(&headers).expect("a caller");
        assert_eq!(
            metadata.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer tok")
        );
        assert!(caller(&http::HeaderMap::new()).is_none());
    }
}
