//! The streamer's settings: `.env`, then the environment, then flags. Running
//! `streamer` with no subcommand runs the stream; subcommands sit beside it.
//! [`RunArgs::validate`] checks what clap's types cannot and names the setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use runtime::{ConfigError, LogFormat};

/// Exactly-once micro-batch ingest of event CSV files into PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "streamer", version, about, long_about = None, args_conflicts_with_subcommands = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What the streamer does besides streaming.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the stream (the default when no subcommand is given).
    Run(RunArgs),
    /// Show the checkpoint, the files waiting, the last batches and the rejects.
    Status(StatusArgs),
    /// Mark processed files for loading again (their rows upsert; the load history flags them `reingest`).
    Reprocess(ReprocessArgs),
    /// Forget the checkpoint (and, with --truncate-tables, empty the tables).
    Reset(ResetArgs),
    /// Re-read the loaded files still in the data folder and compare them with `events` by the oracle.
    Verify(StateArgs),
    /// Print a report: funnel, top-products, revenue, active-users or ingest (db/004_reports.sql).
    Report(crate::report::ReportArgs),
}

/// Where an operator command finds the stream's state.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// The stream's data folder.
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The stream's checkpoint folder.
    #[arg(long, env = "CHECKPOINT_DIR", default_value = "./checkpoints", value_name = "DIR")]
    pub checkpoint_dir: PathBuf,

    /// PostgreSQL connection URL (never logged).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
}

/// `streamer status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `streamer reprocess`.
#[derive(Debug, Clone, Args)]
pub struct ReprocessArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// File names or glob patterns (`events_2026*.csv`) in the data folder.
    #[arg(required = true, value_name = "NAME|GLOB")]
    pub files: Vec<String>,
}

/// `streamer reset`.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// Confirm: without it nothing is touched.
    #[arg(long)]
    pub yes: bool,

    /// Also empty events, load_history, rejected_rows and the analytics tables (needs the database).
    #[arg(long)]
    pub truncate_tables: bool,
}

/// What happens to a source file once its batch has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanSource {
    /// Leave it where it is.
    Off,
    /// Move it into the archive folder.
    Archive,
    /// Delete it.
    Delete,
}

/// The widest metrics window: one day.
pub const MAX_WINDOW_SECS: u32 = 86_400;

/// Settings of the stream.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Folder watched for event files (`*.csv`; hidden, `_*` and `*.tmp` names are never read).
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Folder of the streamer's state: offsets/, commits/, compact/, progress/.
    #[arg(long, env = "CHECKPOINT_DIR", default_value = "./checkpoints", value_name = "DIR")]
    pub checkpoint_dir: PathBuf,

    /// PostgreSQL connection URL, e.g. postgres://user:password@host:5432/db (never logged).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Process every file present, then exit 0 (a backfill; Spark's AvailableNow).
    #[arg(long, env = "ONCE", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub once: bool,

    /// At most one batch per this many milliseconds; 0 starts a batch as soon as files are ready.
    #[arg(long, env = "TRIGGER_INTERVAL_MS", default_value_t = 0, value_name = "MS")]
    pub trigger_interval: u64,

    /// Most files in one batch.
    #[arg(long, env = "MAX_FILES_PER_BATCH", default_value_t = 100, value_name = "N")]
    pub max_files_per_batch: usize,

    /// Most bytes in one batch (a larger single file makes a batch of its own).
    #[arg(long, env = "MAX_BYTES_PER_BATCH", default_value_t = 256 * 1024 * 1024, value_name = "BYTES")]
    pub max_bytes_per_batch: u64,

    /// Bytes of input read, deduplicated and staged at a time: a batch (or one big file) is
    /// loaded in chunks of about this size inside its one transaction, so memory stays bounded.
    #[arg(long, env = "CHUNK_BYTES", default_value_t = 32 * 1024 * 1024, value_name = "BYTES")]
    pub chunk_bytes: u64,

    /// Poll the folder instead of using inotify (network filesystems, Docker Desktop bind mounts).
    #[arg(long, env = "POLL", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub poll: bool,

    /// How often the folder is polled with --poll, in milliseconds.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 500, value_name = "MS")]
    pub poll_interval: u64,

    /// A full listing of the folder this often, in milliseconds, whatever the watcher says.
    #[arg(long, env = "RESCAN_INTERVAL_MS", default_value_t = 5_000, value_name = "MS")]
    pub rescan_interval: u64,

    /// A file with no close-write or moved-to event is read once it has not changed for this long, in milliseconds.
    #[arg(long, env = "FILE_SETTLE_MS", default_value_t = 2_000, value_name = "MS")]
    pub file_settle: u64,

    /// What to do with a source file after its batch committed.
    #[arg(long, env = "CLEAN_SOURCE", value_enum, default_value_t = CleanSource::Off)]
    pub clean_source: CleanSource,

    /// Where --clean-source archive moves files (default: DATA_DIR/_archive).
    #[arg(long, env = "ARCHIVE_DIR", value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,

    /// Where unreadable files are moved, with a .reason file beside each (default: DATA_DIR/_rejected).
    #[arg(long, env = "QUARANTINE_DIR", value_name = "DIR")]
    pub quarantine_dir: Option<PathBuf>,

    /// After SIGINT/SIGTERM, how long the batch in flight may take to commit before it is rolled back, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_grace: u64,

    /// Longest wait between two attempts to reach PostgreSQL, in milliseconds.
    #[arg(long, env = "MAX_BACKOFF_MS", default_value_t = 10_000, value_name = "MS")]
    pub max_backoff: u64,

    /// Keep event_metrics_minute and the counters in each batch; false empties them and loads at raw speed
    /// (the next start with true rebuilds them from events).
    #[arg(long, env = "ANALYTICS", value_parser = BoolishValueParser::new(), default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub analytics: bool,

    /// Width of the windows of event_metrics_minute, in seconds (a change rebuilds the table at start).
    #[arg(long, env = "METRICS_WINDOW_SECS", default_value_t = 60, value_name = "SECONDS")]
    pub metrics_window: u32,

    /// Address of the HTTP server (/health, /metrics, the dashboard at /), or `off`.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9898", value_name = "HOST:PORT|off")]
    pub http_addr: String,

    /// /health answers 503 when files have waited this long with no batch committed, in seconds.
    #[arg(long, env = "STALL_AFTER_SECS", default_value_t = 300, value_name = "SECONDS")]
    pub stall_after: u64,

    /// Show a progress bar on the terminal while a backlog drains (files, rows/s, ETA).
    #[arg(long, env = "PROGRESS", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub progress: bool,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Cli {
    /// The command to run: `run` when none is given.
    pub fn command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }
}

impl RunArgs {
    /// Checks the settings clap's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database_url.as_deref().unwrap_or_default();
        if url.is_empty() {
            return Err(ConfigError::new("--database-url/DATABASE_URL", "is not set"));
        }
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            return Err(ConfigError::new("--database-url/DATABASE_URL", format!("is not a PostgreSQL URL ({e})")));
        }
        if self.max_files_per_batch == 0 {
            return Err(ConfigError::new("--max-files-per-batch/MAX_FILES_PER_BATCH", "must be at least 1"));
        }
        if self.max_bytes_per_batch == 0 {
            return Err(ConfigError::new("--max-bytes-per-batch/MAX_BYTES_PER_BATCH", "must be at least 1"));
        }
        if self.chunk_bytes == 0 {
            return Err(ConfigError::new("--chunk-bytes/CHUNK_BYTES", "must be at least 1"));
        }
        if self.poll && self.poll_interval == 0 {
            return Err(ConfigError::new("--poll-interval/POLL_INTERVAL_MS", "must be at least 1 with --poll"));
        }
        if self.rescan_interval == 0 {
            return Err(ConfigError::new("--rescan-interval/RESCAN_INTERVAL_MS", "must be at least 1"));
        }
        if self.max_backoff == 0 {
            return Err(ConfigError::new("--max-backoff/MAX_BACKOFF_MS", "must be at least 1"));
        }
        if !(1..=MAX_WINDOW_SECS).contains(&self.metrics_window) {
            return Err(ConfigError::new(
                "--metrics-window/METRICS_WINDOW_SECS",
                format!("must be between 1 and {MAX_WINDOW_SECS} (one day)"),
            ));
        }
        self.http_addr()?;
        if self.stall_after == 0 {
            return Err(ConfigError::new("--stall-after/STALL_AFTER_SECS", "must be at least 1"));
        }
        Ok(())
    }

    /// The HTTP server's address; `None` when it is `off`.
    pub fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let addr = self.http_addr.trim();
        if addr.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        addr.parse().map(Some).map_err(|_| {
            ConfigError::new("--http-addr/HTTP_ADDR", format!("{addr:?} is not HOST:PORT (e.g. 127.0.0.1:9898) or off"))
        })
    }

    /// The metrics window width, in seconds, as the database stores it.
    pub fn metrics_window_secs(&self) -> i32 {
        self.metrics_window.min(MAX_WINDOW_SECS) as i32
    }

    /// The validated database URL.
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or_default()
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.archive_dir.clone().unwrap_or_else(|| self.data_dir.join("_archive"))
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.quarantine_dir.clone().unwrap_or_else(|| self.data_dir.join("_rejected"))
    }

    pub fn trigger_interval(&self) -> Duration {
        Duration::from_millis(self.trigger_interval)
    }

    pub fn file_settle(&self) -> Duration {
        Duration::from_millis(self.file_settle)
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host/... → scheme://user:***@host/...
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            return redact_password_param(&format!("{scheme}://{masked}@{host}"));
        }
    }
    redact_password_param(url)
}

/// Masks `password=...` in a key-value connection string or a URL query.
fn redact_password_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("password=") {
        let (head, tail) = rest.split_at(pos + "password=".len());
        out.push_str(head);
        out.push_str("***");
        let end = tail.find(['&', ' ']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut argv = vec!["streamer"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(Cli::command)
    }

    #[test]
    fn no_subcommand_runs_the_stream_with_the_flags_given() {
        match parse(&["--once", "--max-files-per-batch", "7", "--database-url", "postgres://u@h/db"]) {
            Ok(Command::Run(args)) => {
                assert!(args.once);
                assert_eq!(args.max_files_per_batch, 7);
                assert!(args.validate().is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["run", "--once"]), Ok(Command::Run(a)) if a.once));
    }

    #[test]
    fn bad_values_name_their_setting() {
        let run = |args: &[&str]| match parse(args) {
            Ok(Command::Run(a)) => a.validate().err().map(|e| e.setting),
            other => panic!("{other:?}"),
        };
        assert_eq!(run(&["--database-url", ""]).as_deref(), Some("--database-url/DATABASE_URL"));
        assert_eq!(
            run(&["--database-url", "postgres://h/db", "--max-files-per-batch", "0"]).as_deref(),
            Some("--max-files-per-batch/MAX_FILES_PER_BATCH")
        );
        assert_eq!(
            run(&["--database-url", "postgres://h:notaport/db"]).as_deref(),
            Some("--database-url/DATABASE_URL")
        );
        assert!(parse(&["--clean-source", "shred"]).is_err());
        let ok = ["--database-url", "postgres://h/db"];
        let with = |extra: &[&'static str]| [&ok[..], extra].concat();
        assert_eq!(run(&with(&["--metrics-window", "0"])).as_deref(), Some("--metrics-window/METRICS_WINDOW_SECS"));
        assert_eq!(run(&with(&["--metrics-window", "86401"])).as_deref(), Some("--metrics-window/METRICS_WINDOW_SECS"));
        assert_eq!(run(&with(&["--http-addr", "localhost"])).as_deref(), Some("--http-addr/HTTP_ADDR"));
        assert_eq!(run(&with(&["--stall-after", "0"])).as_deref(), Some("--stall-after/STALL_AFTER_SECS"));
        assert_eq!(run(&with(&["--http-addr", "OFF"])), None);
        assert_eq!(run(&with(&["--http-addr", "0.0.0.0:80"])), None);
    }

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/events"), "postgres://app:***@db:5432/events");
        assert_eq!(redact_url("postgres://app@db/events"), "postgres://app@db/events");
        assert_eq!(
            redact_url("postgres://db/events?password=s3cret&sslmode=disable"),
            "postgres://db/events?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("host=db password=s3cret user=app"), "host=db password=*** user=app");
        assert_eq!(redact_url("postgres://a:p@ss@db/x"), "postgres://a:***@db/x");
    }
}
