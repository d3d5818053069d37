//! The HTTP side of `/metrics`, `/healthz`, `/status` and the status page: hyper's HTTP/1.1
//! server on a listener, one task per connection, requests handed to a handler as plain data.
//! Nothing here knows a route; the callers (`run --metrics-addr`, `supervise`) do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Requests bodies are small (a control button's POST): anything longer is refused.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// A client must send a request's headers within this, and its body too.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is closed after this, keep-alive or not (a scraper simply reconnects), so
/// slow or idle clients cannot hold connections forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Connections served at once; further ones wait to be accepted. Scrapers and a few browsers
/// need far fewer; the cap keeps a flood from taking the daemon's file descriptors.
const MAX_CONNECTIONS: usize = 64;

/// A request, read whole.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: hyper::Method,
    /// The path without the query.
    pub path: String,
    /// The request's headers.
    pub headers: hyper::HeaderMap,
    /// The body (at most 16 KiB).
    pub body: Bytes,
}

/// A response: status, content type and body, plus any other headers.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// More headers (e.g. a content security policy).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    /// A response with `status`, `content_type` and `body`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let body = serde_json::to_vec_pretty(value).expect("JSON values serialize");
        Response::new(status, "application/json", body)
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// What answers requests.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Binds `addr` (`host:port`; port 0 for any free one), naming the address when it cannot.
pub async fn bind(addr: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|error| {
        std::io::Error::new(error.kind(), format!("cannot listen on {addr}: {error}"))
    })
}

/// A server running on its own task, stopped when this is dropped.
pub struct ServerGuard(tokio::task::JoinHandle<()>);

impl ServerGuard {
    /// Starts serving `listener` with `handler`.
    pub fn spawn(listener: TcpListener, handler: Handler) -> ServerGuard {
        ServerGuard(tokio::spawn(serve(listener, handler)))
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves requests on `listener` with `handler` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, handler: Handler) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little, never spin.
                tracing::warn!(%error, "http: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&handler, request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let served = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            if let Ok(Err(error)) = served {
                tracing::debug!(%error, %peer, "http: connection ended with an error");
            }
        });
    }
}

async fn answer(
    handler: &Handler,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect());
    let response = match body.await {
        Ok(Ok(body)) => {
            handler(Request {
                method: parts.method,
                path: parts.uri.path().to_string(),
                headers: parts.headers,
                body: body.to_bytes(),
            })
            .await
        }
        Ok(Err(_)) => Response::text(413, "request body too large or broken\n"),
        Err(_) => Response::text(408, "request body too slow\n"),
    };
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in response.headers {
        headers.insert(name, HeaderValue::from_static(value));
    }
    out
}
