//! Shutdown: one token fires on the first SIGINT or SIGTERM and is handed to
//! the program's task, whose loops `select!` their work against it. [`run`]
//! runs that task on a multi-threaded runtime and turns its outcome into the
//! process's exit code.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{config_exit, ConfigError};

/// Runs `task` on a multi-threaded runtime with a shutdown token that fires
/// on SIGINT or SIGTERM, and turns its outcome into the exit code: 0, 2 for a
/// [`ConfigError`], 1 for anything else. `report` logs a failure (the caller
/// logs it, so the log names the program); the error is also printed.
pub fn run<T, F, Fut>(task: F, report: impl FnOnce(&anyhow::Error)) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async { task(on_signals()).await });
    // Blocking work still running after a shutdown is not waited for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config) => config_exit(config),
            None => {
                report(&e);
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A token that is cancelled on the first SIGINT or SIGTERM (call it inside
/// a runtime).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fired = token.clone();
    tokio::spawn(async move {
        let reason = wait_for_signal().await;
        tracing::info!(signal = reason, "shutdown requested");
        fired.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
