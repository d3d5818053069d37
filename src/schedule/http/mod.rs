//! What a `supervise` daemon serves on `[supervise] http`: `/metrics` (Prometheus), `/healthz`,
//! `/status` (the JSON of `stevedore status --json`) and the status page at `/`. The page is
//! read-only unless `http_control = true`; then its trigger/pause/resume buttons post to
//! `/control/<action>/<schedule>` with the `http_token` as a bearer token (a header a
//! cross-site form cannot send, compared in constant time).

use std::sync::Arc;

use serde_json::json;
use subtle::ConstantTimeEq;

use super::SuperviseConfig;
use super::control::{Control, apply};
use super::state::GroupState;
use crate::metrics::http::{Handler, Request, Response, ServerGuard};
use crate::queue::RedisLink;

pub mod metrics;
mod page;

pub use metrics::DaemonMetrics;

/// Everything a request may need.
pub struct HttpContext {
    /// The supervise file.
    pub config: Arc<SuperviseConfig>,
    /// The group's Redis (impatient: a scrape during an outage answers 503 quickly).
    pub link: Arc<RedisLink>,
    /// This daemon's environment (for gating in `/status`).
    pub environment: String,
    /// This daemon's counters.
    pub metrics: Arc<DaemonMetrics>,
}

/// Serves `context` on `listener` until the guard is dropped.
pub fn spawn(listener: tokio::net::TcpListener, context: HttpContext) -> ServerGuard {
    let context = Arc::new(context);
    let handler: Handler = Arc::new(move |request| {
        let context = context.clone();
        Box::pin(async move { route(&context, request).await })
    });
    ServerGuard::spawn(listener, handler)
}

async fn route(context: &HttpContext, request: Request) -> Response {
    let get = request.method == hyper::Method::GET;
    match request.path.as_str() {
        "/healthz" if get => Response::text(200, "ok\n"),
        "/status" if get => match status(context).await {
            Ok(status) => Response::json(200, &status),
            Err(error) => Response::text(503, format!("{error}\n")),
        },
        "/metrics" if get => {
            let scraped = async {
                let status = status(context).await?;
                metrics::scrape(&context.config, &context.link, &status, &context.metrics).await
            };
            match scraped.await {
                Ok(text) => Response::new(200, crate::metrics::CONTENT_TYPE, text),
                Err(error) => Response::text(503, format!("{error}\n")),
            }
        }
        path if get => page::asset(path, control_token(context).is_some())
            .unwrap_or_else(|| Response::text(404, "not found\n")),
        path if request.method == hyper::Method::POST && path.starts_with("/control/") => {
            control(context, &request).await
        }
        _ => Response::text(405, "method not allowed\n"),
    }
}

async fn status(context: &HttpContext) -> Result<serde_json::Value, crate::queue::LinkError> {
    super::status::collect(&context.config, &context.link, &context.environment).await
}

fn control_token(context: &HttpContext) -> Option<&str> {
    context
        .config
        .group
        .http
        .as_ref()
        .and_then(|http| http.control_token.as_deref())
}

/// `POST /control/<trigger|pause|resume>/<schedule>`, body `{"reason": "..."}` for a pause.
async fn control(context: &HttpContext, request: &Request) -> Response {
    let Some(token) = control_token(context) else {
        return Response::text(
            403,
            "control is off: set `http_control = true` and `http_token`\n",
        );
    };
    let offered = request
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(offered.as_bytes().ct_eq(token.as_bytes())) {
        return Response::text(401, "a valid token is needed (Authorization: Bearer ...)\n");
    }
    let mut parts = request.path["/control/".len()..].splitn(2, '/');
    let (action, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reason = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|body| body["reason"].as_str().map(str::to_string));
    let control = match action {
        "trigger" => Control::Trigger,
        "pause" => Control::Pause { reason },
        "resume" => Control::Resume,
        _ => return Response::text(404, "actions: trigger, pause, resume\n"),
    };
    let Some(schedule) = context.config.schedules.iter().find(|s| s.name == name) else {
        return Response::text(404, "no such schedule\n");
    };
    let state = GroupState::new(&context.link, &context.config.group.name);
    let who = format!("the status page of {}", crate::supervisor::host_name());
    match apply(&state, schedule, control, &who).await {
        Ok(message) => {
            tracing::info!(schedule = %name, action, "{message} (from the status page)");
            Response::json(200, &json!({"ok": true, "message": message}))
        }
        Err(message) => Response::json(409, &json!({"ok": false, "message": message})),
    }
}
