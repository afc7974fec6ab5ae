//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` and `/status/{name}`.
//!
//! The port is reachable by anything in the cluster network, so it bounds what a client can hold:
//! headers must arrive within 10 s, at most 64 connections are served at once, a request gets a
//! response within 10 s, and no request may carry a body (every route is a GET).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{RwLock, Semaphore};

use crate::metrics::METRICS;
use crate::status::ControllerStatus;
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
    /// The status served on `/status`, replaced by the controller after each reconcile.
    pub status: Arc<RwLock<ControllerStatus>>,
    /// True once the config is loaded and the first reconcile is done; false again while draining.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    /// A not-ready state with an empty status.
    pub fn new() -> Self {
        AppState {
            status: Arc::new(RwLock::new(ControllerStatus::default())),
            ready: Arc::new(AtomicBool::new(false)),
        }
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

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        METRICS.render(),
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

async fn status(State(state): State<AppState>) -> Json<ControllerStatus> {
    // Clone so the lock is not held while the response is written.
    Json(state.status.read().await.clone())
}

async fn split_status(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let found = state
        .status
        .read()
        .await
        .splits
        .iter()
        .find(|s| s.name == name)
        .cloned();
    match found {
        Some(split) => Json(split).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                serde_json::json!({ "error": format!("split {:?} not found", crate::sanitize::echo(&name)) }),
            ),
        )
            .into_response(),
    }
}
