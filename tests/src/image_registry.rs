//! A container registry stand-in: the part of the Docker Registry HTTP API
//! V2 that `docker push` uses (version check, blob existence, chunked and
//! monolithic blob uploads, manifests), in memory, on a free port of
//! 127.0.0.1 (which the engine treats as an insecure registry by default).
//!
//! It checks what a registry checks (a blob's bytes match its digest) and
//! optionally demands HTTP Basic credentials, so a test sees what the engine
//! really pushed, under which name, with which credentials.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use base64::Engine as _;

/// What the registry holds: blobs by digest, manifests by `name:reference`.
#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    uploads: HashMap<String, Vec<u8>>,
    /// `name:tag` → (digest, content type).
    manifests: HashMap<String, (String, String)>,
    next_upload: u64,
}

/// The running stand-in; stops when dropped.
pub struct RegistryStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: tokio::task::JoinHandle<()>,
}

impl RegistryStandIn {
    /// Starts it; with `credentials`, every request must carry them (Basic).
    pub async fn start(credentials: Option<(&str, &str)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the registry stand-in");
        let addr = listener.local_addr().expect("registry address");
        let state = Arc::new(Mutex::new(State::default()));
        let expected = credentials.map(|(user, password)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        });
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Body| {
                let state = shared.clone();
                let expected = expected.clone();
                async move {
                    let body = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .unwrap_or_default();
                    handle(&state, expected.as_deref(), &method, &uri, &headers, &body)
                }
            },
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            state,
            _server: server,
        }
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The digest of manifest `name:tag`, if it was pushed.
    pub fn manifest(&self, name: &str, tag: &str) -> Option<String> {
        let state = self.state.lock().expect("registry state");
        state
            .manifests
            .get(&format!("{name}:{tag}"))
            .map(|(digest, _)| digest.clone())
    }

    /// Every `name:tag` pushed, sorted.
    pub fn tags(&self) -> Vec<String> {
        let state = self.state.lock().expect("registry state");
        let mut tags: Vec<String> = state.manifests.keys().cloned().collect();
        tags.sort();
        tags
    }

    /// How many blobs (layers and configs) it holds.
    pub fn blob_count(&self) -> usize {
        self.state.lock().expect("registry state").blobs.len()
    }
}

impl Drop for RegistryStandIn {
    fn drop(&mut self) {
        self._server.abort();
    }
}

fn sha256(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn reply(
    status: StatusCode,
    headers: &[(header::HeaderName, String)],
    body: Vec<u8>,
) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.insert(name.clone(), value);
        }
    }
    response
}

fn status(code: StatusCode) -> Response<Body> {
    reply(code, &[], Vec::new())
}

fn query_param<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// Percent-decoding of the one escaped character digests carry (`:`).
fn unescape(value: &str) -> String {
    value.replace("%3A", ":").replace("%3a", ":")
}

fn handle(
    state: &Mutex<State>,
    expected: Option<&str>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    let mut state = state.lock().expect("registry state");
    if let Some(expected) = expected {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected) {
            return reply(
                StatusCode::UNAUTHORIZED,
                &[(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"rouse-test-registry\"".to_owned(),
                )],
                Vec::new(),
            );
        }
    }
    let path = uri.path();
    if path == "/v2/" || path == "/v2" {
        return status(StatusCode::OK);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND);
    };
    if let Some((name, upload)) = rest.split_once("/blobs/uploads") {
        let upload = upload.trim_start_matches('/');
        let location = |id: &str| format!("/v2/{name}/blobs/uploads/{id}");
        if upload.is_empty() && *method == Method::POST {
            // Cross-repository mounts are answered by starting an upload.
            state.next_upload += 1;
            let id = format!("upload-{}", state.next_upload);
            state.uploads.insert(id.clone(), body.to_vec());
            return reply(
                StatusCode::ACCEPTED,
                &[
                    (header::LOCATION, location(&id)),
                    (header::RANGE, "0-0".to_owned()),
                    (header::HeaderName::from_static("docker-upload-uuid"), id),
                ],
                Vec::new(),
            );
        }
        let id = upload.to_owned();
        let Some(data) = state.uploads.get_mut(&id) else {
            return status(StatusCode::NOT_FOUND);
        };
        data.extend_from_slice(body);
        let len = data.len();
        if *method == Method::PATCH {
            return reply(
                StatusCode::ACCEPTED,
                &[
                    (header::LOCATION, location(&id)),
                    (header::RANGE, format!("0-{}", len.saturating_sub(1))),
                    (header::HeaderName::from_static("docker-upload-uuid"), id),
                ],
                Vec::new(),
            );
        }
        if *method == Method::PUT {
            let Some(digest) = query_param(uri, "digest").map(unescape) else {
                return status(StatusCode::BAD_REQUEST);
            };
            let data = state.uploads.remove(&id).unwrap_or_default();
            if sha256(&data) != digest {
                return status(StatusCode::BAD_REQUEST);
            }
            state.blobs.insert(digest.clone(), data);
            return reply(
                StatusCode::CREATED,
                &[
                    (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        digest,
                    ),
                ],
                Vec::new(),
            );
        }
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let digest = unescape(digest);
        return match state.blobs.get(&digest) {
            Some(data) => reply(
                StatusCode::OK,
                &[
                    (header::CONTENT_LENGTH, data.len().to_string()),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        digest,
                    ),
                ],
                if *method == Method::HEAD {
                    Vec::new()
                } else {
                    data.clone()
                },
            ),
            None => status(StatusCode::NOT_FOUND),
        };
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let key = format!("{name}:{}", unescape(reference));
        if *method == Method::PUT {
            let digest = sha256(body);
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            state.blobs.insert(digest.clone(), body.to_vec());
            state.manifests.insert(key, (digest.clone(), content_type));
            return reply(
                StatusCode::CREATED,
                &[
                    (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        digest,
                    ),
                ],
                Vec::new(),
            );
        }
        let found = state.manifests.get(&key).cloned().or_else(|| {
            state
                .manifests
                .values()
                .find(|(digest, _)| format!("{name}:{digest}") == key)
                .cloned()
        });
        return match found {
            Some((digest, content_type)) => {
                let data = state.blobs.get(&digest).cloned().unwrap_or_default();
                reply(
                    StatusCode::OK,
                    &[
                        (header::CONTENT_TYPE, content_type),
                        (header::CONTENT_LENGTH, data.len().to_string()),
                        (
                            header::HeaderName::from_static("docker-content-digest"),
                            digest,
                        ),
                    ],
                    if *method == Method::HEAD {
                        Vec::new()
                    } else {
                        data
                    },
                )
            }
            None => status(StatusCode::NOT_FOUND),
        };
    }
    status(StatusCode::NOT_FOUND)
}
