//! The streamer: exactly-once micro-batch ingest of the event files in a
//! data folder into PostgreSQL, by the batch protocol of
//! `docs/architecture.md`. This file only wires the parts together.
//!
//! # Layout
//! - [`config`]: the settings (clap) and the one validated [`Config`];
//! - [`stream`]: the run — control session, reconciliation, registrar, disposer, `--once`;
//! - [`loader`]: a loader task — claim, plan, read, stage, commit, mark, retry by error class;
//! - [`select`]: which files of the data folder are the stream's (globs, subfolders), and the walk;
//! - [`watch`]: discovering ready files (inotify or polling, plus listings);
//! - [`registry`]: the file registry in PostgreSQL, the truth about the folder's files;
//! - [`checkpoint`]: this streamer's identity, its folder lock and its batch log;
//! - [`batch`]: reading, validating, deduplicating and aggregating a batch (no tokio, no SQL);
//! - [`sink`]: the batch transaction, the schema migrations, the SQL, the advisory locks;
//! - [`applier`]: folding committed batches into the derived tables, off the commit path;
//! - [`dispose`]: archiving, deleting and quarantining settled files safely;
//! - [`pg`]: connection strings and TLS, sessions, error classes, backoff, text PostgreSQL can store;
//! - [`observe`]: the batch log, progress file and bar, Prometheus metrics;
//! - [`http`]: `/health`, `/metrics` and the dashboard;
//! - [`ops`]: the operator commands (status, reprocess, reset, verify, report);
//! - [`crashpoint`]: named points where the kill tests make the process die.

pub mod applier;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod crashpoint;
pub mod dispose;
pub mod http;
pub mod loader;
pub mod observe;
pub mod ops;
pub mod pg;
pub mod registry;
pub mod select;
pub mod sink;
pub mod stream;
pub mod watch;

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use config::{CleanSource, Cli, Command, Config, RunArgs};
pub use stream::{run, RunSummary};

/// Runs blocking work (std::fs, Polars) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("a blocking task panicked")
}

/// Locks `m`, also after a panic elsewhere (what it guards stays usable:
/// every writer leaves it consistent).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sleeps `wait` unless `stop` fires first; false when it did.
pub(crate) async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}
