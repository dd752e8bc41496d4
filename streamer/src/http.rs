//! The HTTP side (axum): `GET /health`, `GET /metrics` (Prometheus) and the
//! live dashboard at `/` with its JSON at `/api/dashboard`. The page's assets
//! are compiled into the binary (no CDN: it works offline).
//!
//! It never stands in the way of ingest: it has its own database connection,
//! and when its address cannot be bound it says so once and the stream runs
//! on without it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::observe::metrics::Monitor;
use crate::pg::{describe, text_rows};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// How long `/health` and the dashboard wait for the database.
const DB_TIMEOUT: Duration = Duration::from_secs(3);

struct Shared {
    monitor: Arc<Monitor>,
    url: crate::pg::Target,
    /// The HTTP side's own connection, made on first use and again after a failure.
    client: tokio::sync::Mutex<Option<Client>>,
}

/// Binds `addr` and serves until `shutdown`. A failure to bind is logged once
/// and ends the task: the stream does not depend on it.
pub async fn serve(addr: SocketAddr, monitor: Arc<Monitor>, url: crate::pg::Target, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve HTTP (health, metrics, dashboard); the stream runs without it");
            return;
        }
    };
    let local = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
    tracing::info!(addr = %local, "serving /health, /metrics and the dashboard at /");
    let shared = Arc::new(Shared { monitor, url, client: tokio::sync::Mutex::new(None) });
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::warn!(error = %e, "the HTTP server stopped; the stream runs without it");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/dashboard", get(dashboard))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.monitor.encode())
        .into_response()
}

impl Shared {
    /// Runs `f` on the HTTP side's connection (made if needed), within
    /// [`DB_TIMEOUT`]; a failed connection is dropped and made again next time.
    async fn with_client<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    ) -> Result<T, String> {
        let mut slot = self.client.lock().await;
        let work = async {
            if slot.as_ref().is_none_or(Client::is_closed) {
                let client = crate::pg::connect(&self.url, "streamer-http").await.map_err(|e| describe(&e))?;
                // Small queries: compiling them (JIT) would cost more than running them.
                client.batch_execute("SET jit = off").await.map_err(|e| describe(&e))?;
                *slot = Some(client);
            }
            let client = slot.as_ref().ok_or("no connection")?;
            f(client).await.map_err(|e| describe(&e))
        };
        let result = match tokio::time::timeout(DB_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", DB_TIMEOUT.as_secs())),
        };
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let database = shared.with_client(|c| Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) })).await;
    let stream = shared.monitor.stream_health();
    let mut reasons = Vec::new();
    if !stream.ready {
        reasons.push("starting: not connected to PostgreSQL with the schema applied yet".to_owned());
    }
    if let Err(e) = &database {
        reasons.push(format!("the database is not reachable: {e}"));
    }
    if stream.analytics_stalled {
        if let Some(lag) = stream.analytics_lag {
            reasons.push(format!(
                "the derived tables are {:.0} s behind events ({} batches; threshold {} s)",
                lag.seconds, lag.batches, stream.stall_after_secs
            ));
        }
    }
    if stream.stalled {
        reasons.push(format!(
            "stalled: {} file(s) waiting and no batch committed for {:.0} s (threshold {} s)",
            stream.files_pending, stream.waiting_secs, stream.stall_after_secs
        ));
    }
    let ok = reasons.is_empty();
    let body = json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "reasons": reasons,
        "database": { "reachable": database.is_ok(), "error": database.err() },
        "stream": stream,
    });
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

/// Everything the dashboard shows, from the database (so the page and psql
/// agree) and the stream's live state.
async fn dashboard(State(shared): State<Arc<Shared>>) -> Response {
    let data = shared.with_client(|c| Box::pin(dashboard_data(c))).await;
    match data {
        Ok(mut v) => {
            v["stream"] = json!(shared.monitor.stream_health());
            Json(v).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response(),
    }
}

/// Rows of `sql` as JSON objects, by column name; every value as text (or null).
async fn rows(client: &Client, sql: &str) -> Result<Vec<Value>, tokio_postgres::Error> {
    let text = text_rows(client, sql).await?;
    Ok(text
        .rows
        .into_iter()
        .map(|row| {
            let object =
                text.columns.iter().cloned().zip(row.into_iter().map(|v| v.map_or(Value::Null, Value::String)));
            Value::Object(object.collect())
        })
        .collect())
}

/// The dashboard's queries (`src/sql/dashboard/`). Times are ISO 8601 in
/// UTC; numbers are text, as PostgreSQL prints them (revenue keeps its two
/// decimals).
pub const DASHBOARD_QUERIES: [(&str, &str); 6] = [
    ("totals", include_str!("sql/dashboard/totals.sql")),
    ("minutes", include_str!("sql/dashboard/minutes.sql")),
    ("batches", include_str!("sql/dashboard/batches.sql")),
    ("windows", include_str!("sql/dashboard/windows.sql")),
    ("window_seconds", include_str!("sql/dashboard/window_seconds.sql")),
    ("analytics", include_str!("sql/dashboard/analytics.sql")),
];

async fn dashboard_data(client: &Client) -> Result<Value, tokio_postgres::Error> {
    let mut out = serde_json::Map::new();
    for (name, sql) in DASHBOARD_QUERIES {
        let rows = rows(client, sql).await?;
        let value = match name {
            "totals" | "window_seconds" | "analytics" => rows.into_iter().next().unwrap_or(Value::Null),
            _ => Value::Array(rows),
        };
        out.insert(name.to_owned(), value);
    }
    Ok(Value::Object(out))
}
