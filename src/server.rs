//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` and `/status/{name}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::RwLock;

use crate::metrics::METRICS;
use crate::status::ControllerStatus;
use crate::{Error, Result};

/// Prometheus text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        .with_state(state)
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Http(format!("HTTP server on {addr}: {e}")))
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
            Json(serde_json::json!({ "error": format!("split {name:?} not found") })),
        )
            .into_response(),
    }
}
