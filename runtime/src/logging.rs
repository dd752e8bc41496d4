//! `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or
//! as one JSON object per line. Text is coloured only on a terminal, and
//! never when `NO_COLOR` is set (<https://no-color.org>): a log file or
//! `docker logs` gets plain text.

use std::io::IsTerminal as _;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr.
pub fn init(format: LogFormat) {
    init_to(format, std::io::stderr);
}

/// [`init`] into `writer` instead of stderr (e.g. through a progress bar).
pub fn init_to<W>(format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(format == LogFormat::Text && colour(std::io::stderr().is_terminal()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether text goes out coloured: on a terminal, unless `NO_COLOR` is set
/// to anything but the empty string.
pub fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
