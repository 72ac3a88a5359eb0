//! A test instance that speaks only HTTP/2 without TLS (h2c, prior
//! knowledge), as gRPC servers do: every request on `$PORT` is answered
//! with JSON naming its protocol version, method, path, body length and
//! the revision (`OCTUE_SERVICE_REVISION_TAG`). A connection that does not
//! start with the HTTP/2 preface is closed without an answer.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .expect("h2echo: bind $PORT");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let version = format!("{:?}", request.version());
                    let method = request.method().to_string();
                    let path = request.uri().path().to_owned();
                    let body = axum::body::to_bytes(Body::new(request.into_body()), 1 << 20)
                        .await
                        .unwrap_or_default();
                    let answer = serde_json::json!({
                        "version": version,
                        "method": method,
                        "path": path,
                        "body_bytes": body.len(),
                        "revision": std::env::var("OCTUE_SERVICE_REVISION_TAG").unwrap_or_default(),
                    });
                    let response = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Body::from(answer.to_string()));
                    Ok::<_, Infallible>(response.unwrap_or_default())
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
