//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` and `/status/{name}`.
//!
//! The port is reachable by anything in the cluster network, so it bounds what a client can hold:
//! headers must arrive within 10 s, at most 64 connections are served at once, a request gets a
//! response within 10 s, and no request may carry a body (every route is a GET).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use crate::metrics::METRICS;
use crate::status::{ControllerStatus, SplitStatus};
use crate::{Error, Result};

/// Prometheus text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A client that has not sent complete request headers by then is disconnected (slowloris). It
/// also bounds how long an idle keep-alive connection holds a slot.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog. Prometheus, kubelet probes and a
/// few `trafficshift status` users need far fewer.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest time from request headers to response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server keeps answering (`/readyz` 503) after the controller has drained, before
/// the listener closes. An idle controller drains at once; without this window a probe would go
/// from 200 straight to connection refused and never see the not-ready state.
pub const NOT_READY_LINGER: Duration = Duration::from_secs(2);
/// How long a shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the handlers read; the controller writes it.
#[derive(Clone)]
pub struct AppState {
    /// The status served on `/status`, replaced by the controller after each cycle. Readers take
    /// the `Arc` and let go of the lock at once: no request waits for another or for a cycle.
    status: Arc<RwLock<Arc<StatusJson>>>,
    /// True once the config is loaded and the first reconcile is done; false again while draining.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    /// A not-ready state with an empty status.
    pub fn new() -> Self {
        AppState {
            status: Arc::new(RwLock::new(Arc::new(StatusJson::new(
                &ControllerStatus::default(),
            )))),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Replace the status served on `/status`.
    pub fn set_status(&self, status: &ControllerStatus) {
        self.publish(StatusJson::new(status));
    }

    /// Replace the status served on `/status` with one already serialized.
    pub fn publish(&self, status: StatusJson) {
        let old = std::mem::replace(&mut *self.write(), Arc::new(status));
        // The old one (tens of MB at 10,000 splits) is freed here, outside the lock, or by the
        // last request still sending it.
        drop(old);
    }

    fn read(&self) -> Arc<StatusJson> {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<StatusJson>> {
        self.status.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/status/{name}", get(split_status))
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// Refuse request bodies and bound the time of every request.
async fn guard(req: Request, next: Next) -> Response {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted\n",
        )
            .into_response();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

/// Serve until `shutdown` completes, then finish in-flight requests and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    tracing::info!(%addr, "HTTP server listening");
    let app = router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: at the cap, new clients wait in the kernel's backlog
        // instead of costing a task and a buffer each.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot
                .map_err(|e| Error::Http(format!("HTTP server on {addr}: {e}")))?,
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%addr, error = %e, "HTTP server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    // In-flight requests finish; idle connections close at once.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(%addr, "HTTP connections still open after {SHUTDOWN_GRACE:?}; closing");
    }
    Ok(())
}

/// The exposition is written while it is sent, ~64 KiB at a time (tens of MB at 10,000 splits).
async fn metrics() -> Response {
    let chunks = METRICS.render_chunks().map(Ok::<_, Infallible>);
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The JSON serialized when the controller published it, sent in pieces.
async fn status(State(state): State<AppState>) -> Response {
    let chunks = state.read().chunks().map(Ok::<_, Infallible>);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

async fn split_status(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.read().split(&name) {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                serde_json::json!({ "error": format!("split {:?} not found", crate::sanitize::echo(&name)) }),
            ),
        )
            .into_response(),
    }
}

/// `/status` serialized once per publish: the document up to its `splits` array, and each split
/// on its own. A request copies bytes (in pieces) instead of cloning and serializing tens of MB
/// at 10,000 splits, and `/status/{name}` is one lookup.
pub struct StatusJson {
    /// `{"version":…,"splits":[`
    head: Vec<u8>,
    /// Split name and its JSON, in the order served.
    splits: Vec<(String, Bytes)>,
}

/// One split of `/status` serialized (None, logged, if it cannot be: a float that is not finite).
pub fn split_json(split: &SplitStatus) -> Option<Bytes> {
    match serde_json::to_vec(split) {
        Ok(json) => Some(Bytes::from(json)),
        Err(e) => {
            tracing::error!(split = %split.name, error = %e, "cannot serialize the status");
            None
        }
    }
}

/// `/status` is sent in pieces of about this size.
const STATUS_CHUNK: usize = 64 * 1024;

impl StatusJson {
    /// Serialize a whole status.
    pub fn new(status: &ControllerStatus) -> Self {
        let splits = status
            .splits
            .iter()
            .filter_map(|s| Some((s.name.clone(), split_json(s)?)))
            .collect();
        Self::from_parts(status, splits)
    }

    /// The status `head` (its own `splits` are ignored) with splits serialized by `split_json`.
    pub fn from_parts(head: &ControllerStatus, splits: Vec<(String, Bytes)>) -> Self {
        let empty = ControllerStatus {
            splits: Vec::new(),
            ..head.clone()
        };
        let mut head = serde_json::to_vec(&empty).expect("a status serializes");
        // `splits` is the last field: cut `]}` to append the splits.
        debug_assert!(head.ends_with(b"\"splits\":[]}"));
        head.truncate(head.len() - 2);
        StatusJson { head, splits }
    }

    fn split(&self, name: &str) -> Option<Bytes> {
        self.splits
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, json)| json.clone())
    }

    /// The whole document in pieces of about `STATUS_CHUNK`.
    pub fn chunks(self: Arc<Self>) -> impl Iterator<Item = Bytes> {
        let mut next = 0;
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let mut out = Vec::with_capacity(STATUS_CHUNK + 4096);
            if next == 0 {
                out.extend_from_slice(&self.head);
            }
            while let Some((_, json)) = self.splits.get(next) {
                if next > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(json);
                next += 1;
                if out.len() >= STATUS_CHUNK {
                    return Some(Bytes::from(out));
                }
            }
            out.extend_from_slice(b"]}");
            done = true;
            Some(Bytes::from(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: StatusJson) -> Vec<u8> {
        Arc::new(s).chunks().flat_map(|b| b.to_vec()).collect()
    }

    #[test]
    fn status_json_is_serde_json_of_the_whole_status() {
        for n in [0, 1, 2, 300] {
            let status = ControllerStatus {
                version: "1".into(),
                owner_id: "o".into(),
                splits: (0..n)
                    .map(|i| SplitStatus {
                        name: format!("s{i}"),
                        // Big enough that the document takes several pieces.
                        waiting_for: Some("x".repeat(1000)),
                        ..SplitStatus::default()
                    })
                    .collect(),
                ..ControllerStatus::default()
            };
            let want = serde_json::to_vec(&status).expect("json");
            assert_eq!(body(StatusJson::new(&status)), want, "{n} splits");
        }
    }
}
