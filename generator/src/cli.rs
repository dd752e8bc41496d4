//! Plumbing both binaries share: settings from `.env` → environment → flags,
//! one-line configuration errors with exit code 2, logging, and the shutdown
//! signal. Kept here so the generator and the streamer behave the same way.

use std::fmt;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Exit code of a bad setting (the same as clap's for a bad flag).
pub const EXIT_CONFIG: u8 = 2;

/// A setting whose value cannot be used; says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag and environment variable, e.g. `--min-events/MIN_EVENTS`.
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { setting: setting.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Loads `.env` from the working directory, if there is one. Variables
/// already set in the environment win. A malformed `.env` is a configuration
/// error.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError::new(".env", e.to_string())),
    }
}

/// Parses the command line (with the environment behind each flag); on a
/// bad value prints one line naming it and exits with code 2. `--help` and
/// `--version` print and exit 0.
pub fn parse_or_exit<P: Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let line = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: invalid arguments");
            eprintln!("{line}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    }
}

/// Prints a configuration error as one line and returns exit code 2.
pub fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    init_logging_to(format, std::io::stderr);
}

/// [`init_logging`] into `writer` instead of stderr (e.g. through a progress bar).
pub fn init_logging_to<W>(format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs `task` on a multi-threaded runtime with a shutdown token that fires on
/// SIGINT or SIGTERM, and turns its outcome into the exit code: 0, 2 for a
/// [`ConfigError`], 1 for anything else (logged and printed).
pub fn run_async<T, F, Fut>(program: &str, task: F) -> ExitCode
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
    let result = runtime.block_on(async { task(shutdown_on_signals()).await });
    // Blocking work still running after a shutdown is not waited for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config) => config_exit(config),
            None => {
                tracing::error!(error = format!("{e:#}"), "{program} failed");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A token that is cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
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

/// Checks a rate lies in `[0, 1]`.
pub fn check_rate(setting: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(setting, format!("{value} is not a share between 0 and 1")))
    }
}
