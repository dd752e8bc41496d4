//! The streamer's settings: `.env`, then the environment, then flags (clap).
//! Running `streamer` with no subcommand runs the stream; subcommands sit
//! beside it. The clap structs are turned once into a validated [`Config`]
//! ([`RunArgs::config`]): durations as `Duration`s, the URL as a `String`,
//! every bad value named with its setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use runtime::{ConfigError, LogFormat};

use crate::pg::{Session, Target};
use crate::select::Selection;

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
    /// Show the checkpoint, the files waiting, the last batches, the rejects and the analytics lag.
    Status(StatusArgs),
    /// Mark processed files for loading again (their rows upsert; the load history flags them `reingest`).
    Reprocess(ReprocessArgs),
    /// Forget the checkpoint (and, with --truncate-tables, empty the tables).
    Reset(ResetArgs),
    /// Re-read the loaded files still in the data folder and compare them with `events` by the oracle.
    Verify(StateArgs),
    /// Print a report: funnel, top-products, revenue, active-users or ingest (db/004_reports.sql).
    Report(crate::ops::report::ReportArgs),
}

/// Where the stream's state is: shared by the stream and every operator command.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Folder watched for event files (see --include; hidden, `_*` and `*.tmp` names are never read).
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Files read, as globs separated by commas: one without `/` matches a file's name, one with `/` its
    /// path in the data folder (`*` within a folder, `**` across). gzip and zstd files are read decompressed.
    #[arg(long, env = "INCLUDE", value_delimiter = ',', default_value = crate::select::DEFAULT_INCLUDE, value_name = "GLOBS")]
    pub include: Vec<String>,

    /// Files never read although --include matches them, as globs separated by commas.
    #[arg(long, env = "EXCLUDE", value_delimiter = ',', value_name = "GLOBS")]
    pub exclude: Vec<String>,

    /// Also read the files of subfolders (date-partitioned drops such as 2026/12/01/…); links are never followed.
    #[arg(long, env = "RECURSIVE", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub recursive: bool,

    /// Folder of this streamer's own state: metadata, lock, offsets/, commits/, progress/.
    #[arg(long, env = "CHECKPOINT_DIR", default_value = "./checkpoints", value_name = "DIR")]
    pub checkpoint_dir: PathBuf,

    /// PostgreSQL connection URL or key/value string, e.g. postgres://user:password@host:5432/db;
    /// TLS by sslmode (disable, allow, prefer, require, verify-ca, verify-full) and sslrootcert
    /// (a CA file, or `system`) as in libpq (its password is never logged).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// The data folder's name in the database's file registry: streamers that share a folder share it
    /// (default: the folder's absolute path; set it when they mount the folder at different paths).
    #[arg(long, env = "SOURCE_ID", value_name = "NAME")]
    pub source_id: Option<String>,
}

impl StateArgs {
    /// Which files of the data folder are the stream's.
    pub fn selection(&self) -> Result<Selection, ConfigError> {
        Selection::new(&self.include, &self.exclude, self.recursive)
            .map_err(|e| ConfigError::new("--include/INCLUDE or --exclude/EXCLUDE", e))
    }

    /// The database, which must be set; its TLS settings are read (and
    /// its certificate files loaded) here, so a mistake is told at start.
    pub fn url(&self) -> Result<Target, ConfigError> {
        let url = self.database_url.as_deref().unwrap_or_default();
        if url.is_empty() {
            return Err(ConfigError::new("--database-url/DATABASE_URL", "is not set"));
        }
        Target::parse(url).map_err(|e| ConfigError::new("--database-url/DATABASE_URL", format!("cannot be used: {e}")))
    }

    /// The data folder's id in the registry.
    pub fn source(&self) -> Result<String, ConfigError> {
        if let Some(id) = self.source_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            return Ok(id.to_owned());
        }
        std::fs::create_dir_all(&self.data_dir)
            .and_then(|()| self.data_dir.canonicalize())
            .map(|p| p.display().to_string())
            .map_err(|e| ConfigError::new("--data-dir/DATA_DIR", format!("{}: {e}", self.data_dir.display())))
    }
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

    /// Also empty events, the registry, load_history, rejected_rows and the analytics tables (needs the database).
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
/// The largest chunk: sums of one chunk's prices in cents fit an `i64`.
pub const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// The most loaders one streamer runs.
pub const MAX_LOADERS: usize = 64;

/// Settings of the stream.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// Process every file present, then exit 0 once the derived tables have caught up (a backfill; Spark's AvailableNow).
    #[arg(long, env = "ONCE", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub once: bool,

    /// At most one batch per loader per this many milliseconds; 0 starts a batch as soon as files are ready.
    #[arg(long, env = "TRIGGER_INTERVAL_MS", default_value_t = 0, value_name = "MS")]
    pub trigger_interval: u64,

    /// Batches loaded at once, each on its own PostgreSQL session (default: the number of CPUs, at most 4).
    #[arg(long, env = "LOADERS", value_name = "N")]
    pub loaders: Option<usize>,

    /// Most files in one batch.
    #[arg(long, env = "MAX_FILES_PER_BATCH", default_value_t = 100, value_name = "N")]
    pub max_files_per_batch: usize,

    /// A batch takes files until their sizes reach this many bytes (the file that crosses it is its last).
    /// Memory is bounded by chunks, not by batches: smaller batches spread a backlog of big files over
    /// the loaders.
    #[arg(long, env = "MAX_BYTES_PER_BATCH", default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub max_bytes_per_batch: u64,

    /// Bytes of input read, deduplicated and staged at a time: a batch (or one big file) is
    /// loaded in chunks of about this size inside its one transaction, so memory stays bounded.
    #[arg(long, env = "CHUNK_BYTES", default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    pub chunk_bytes: u64,

    /// More rows than this breaking the contract in one file quarantine the file (0: no limit).
    #[arg(long, env = "MAX_REJECTS_PER_FILE", default_value_t = 100_000, value_name = "N")]
    pub max_rejects_per_file: u64,

    /// Poll the folder instead of using inotify (network filesystems, Docker Desktop bind mounts).
    #[arg(long, env = "POLL", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub poll: bool,

    /// How often the folder is polled with --poll, in milliseconds.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 500, value_name = "MS")]
    pub poll_interval: u64,

    /// A full listing of the folder this often, in milliseconds, whatever the watcher says.
    #[arg(long, env = "RESCAN_INTERVAL_MS", default_value_t = 5_000, value_name = "MS")]
    pub rescan_interval: u64,

    /// A file first seen more than this many seconds after it was last modified is never loaded: it is
    /// recorded as skipped, with the reason, and named in the log (Auto Loader's maxFileAge; off by default).
    #[arg(long, env = "MAX_FILE_AGE_SECS", value_name = "SECONDS")]
    pub max_file_age: Option<u64>,

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

    /// After SIGINT/SIGTERM, how long the batches in flight may take to commit before they are rolled back, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_grace: u64,

    /// Longest wait between two attempts to reach PostgreSQL, in milliseconds.
    #[arg(long, env = "MAX_BACKOFF_MS", default_value_t = 10_000, value_name = "MS")]
    pub max_backoff: u64,

    /// No statement of the streamer runs longer than this, in seconds (its sessions set statement_timeout).
    #[arg(long, env = "STATEMENT_TIMEOUT_SECS", default_value_t = 300, value_name = "SECONDS")]
    pub statement_timeout: u64,

    /// A streamer frozen or cut off loses its session, and with it its claims, after about this long, in
    /// seconds (idle_in_transaction_session_timeout and TCP keepalives).
    #[arg(long, env = "SESSION_TIMEOUT_SECS", default_value_t = 30, value_name = "SECONDS")]
    pub session_timeout: u64,

    /// Run the analytics applier, which folds committed batches into event_metrics_minute and the counters
    /// (one per database; false: the tables wait, and catch up with no rebuild once a streamer runs it).
    #[arg(long, env = "ANALYTICS", value_parser = BoolishValueParser::new(), default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub analytics: bool,

    /// Width of the windows of event_metrics_minute, in seconds (a change rebuilds the table, and needs every
    /// streamer of the database stopped).
    #[arg(long, env = "METRICS_WINDOW_SECS", default_value_t = 60, value_name = "SECONDS")]
    pub metrics_window: u32,

    /// Address of the HTTP server (/health, /metrics, the dashboard at /), or `off`.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9898", value_name = "HOST:PORT|off")]
    pub http_addr: String,

    /// /health answers 503 when files have waited this long with no batch committed (or the analytics are
    /// this far behind), in seconds.
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

/// The stream's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub selection: Selection,
    pub checkpoint_dir: PathBuf,
    pub database: Target,
    pub source: String,
    pub once: bool,
    pub trigger_interval: Duration,
    pub loaders: usize,
    pub max_files_per_batch: usize,
    pub max_bytes_per_batch: u64,
    pub chunk_bytes: u64,
    pub max_rejects_per_file: u64,
    /// `Some(interval)` with `--poll`.
    pub poll: Option<Duration>,
    pub rescan_interval: Duration,
    pub file_settle: Duration,
    /// Files older than this when first seen are skipped.
    pub max_file_age: Option<Duration>,
    pub clean_source: CleanSource,
    pub archive_dir: PathBuf,
    pub quarantine_dir: PathBuf,
    pub shutdown_grace: Duration,
    pub max_backoff: Duration,
    pub session: Session,
    pub analytics: bool,
    pub metrics_window_secs: i32,
    pub http_addr: Option<std::net::SocketAddr>,
    pub stall_after: Duration,
    pub progress: bool,
    pub log_format: LogFormat,
}

impl Config {
    /// The metrics window width, in microseconds.
    pub fn window_micros(&self) -> i64 {
        i64::from(self.metrics_window_secs) * 1_000_000
    }
}

/// The default number of loaders: one per CPU, at most four.
pub fn default_loaders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

fn at_least_one(setting: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(setting, "must be at least 1"));
    }
    Ok(())
}

impl RunArgs {
    /// Checks the settings clap's types cannot and builds the [`Config`].
    pub fn config(&self) -> Result<Config, ConfigError> {
        let database = self.state.url()?;
        at_least_one("--max-files-per-batch/MAX_FILES_PER_BATCH", self.max_files_per_batch as u64)?;
        at_least_one("--max-bytes-per-batch/MAX_BYTES_PER_BATCH", self.max_bytes_per_batch)?;
        at_least_one("--chunk-bytes/CHUNK_BYTES", self.chunk_bytes)?;
        if self.chunk_bytes > MAX_CHUNK_BYTES {
            return Err(ConfigError::new(
                "--chunk-bytes/CHUNK_BYTES",
                format!("must be at most {MAX_CHUNK_BYTES} (1 GiB)"),
            ));
        }
        let loaders = self.loaders.unwrap_or_else(default_loaders);
        if !(1..=MAX_LOADERS).contains(&loaders) {
            return Err(ConfigError::new("--loaders/LOADERS", format!("must be between 1 and {MAX_LOADERS}")));
        }
        if self.poll {
            at_least_one("--poll-interval/POLL_INTERVAL_MS", self.poll_interval)?;
        }
        at_least_one("--rescan-interval/RESCAN_INTERVAL_MS", self.rescan_interval)?;
        at_least_one("--max-backoff/MAX_BACKOFF_MS", self.max_backoff)?;
        at_least_one("--statement-timeout/STATEMENT_TIMEOUT_SECS", self.statement_timeout)?;
        at_least_one("--session-timeout/SESSION_TIMEOUT_SECS", self.session_timeout)?;
        if !(1..=MAX_WINDOW_SECS).contains(&self.metrics_window) {
            return Err(ConfigError::new(
                "--metrics-window/METRICS_WINDOW_SECS",
                format!("must be between 1 and {MAX_WINDOW_SECS} (one day)"),
            ));
        }
        let http_addr = self.http_addr()?;
        at_least_one("--stall-after/STALL_AFTER_SECS", self.stall_after)?;
        let data_dir = self.state.data_dir.clone();
        if self.max_file_age == Some(0) {
            return Err(ConfigError::new("--max-file-age/MAX_FILE_AGE_SECS", "must be at least 1 (or unset)"));
        }
        Ok(Config {
            selection: self.state.selection()?,
            max_file_age: self.max_file_age.map(Duration::from_secs),
            source: self.state.source()?,
            archive_dir: self.archive_dir.clone().unwrap_or_else(|| data_dir.join("_archive")),
            quarantine_dir: self.quarantine_dir.clone().unwrap_or_else(|| data_dir.join("_rejected")),
            data_dir,
            checkpoint_dir: self.state.checkpoint_dir.clone(),
            database,
            once: self.once,
            trigger_interval: Duration::from_millis(self.trigger_interval),
            loaders,
            max_files_per_batch: self.max_files_per_batch,
            max_bytes_per_batch: self.max_bytes_per_batch,
            chunk_bytes: self.chunk_bytes,
            max_rejects_per_file: self.max_rejects_per_file,
            poll: self.poll.then(|| Duration::from_millis(self.poll_interval)),
            rescan_interval: Duration::from_millis(self.rescan_interval),
            file_settle: Duration::from_millis(self.file_settle),
            clean_source: self.clean_source,
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            max_backoff: Duration::from_millis(self.max_backoff),
            session: Session {
                statement_timeout: Duration::from_secs(self.statement_timeout),
                idle_timeout: Duration::from_secs(self.session_timeout),
                // A healthy session speaks at least every rescan interval.
                idle_session_timeout: Duration::from_secs(self.session_timeout)
                    .max(Duration::from_millis(self.rescan_interval) * 2 + Duration::from_secs(1)),
            },
            analytics: self.analytics,
            metrics_window_secs: self.metrics_window as i32,
            http_addr,
            stall_after: Duration::from_secs(self.stall_after),
            progress: self.progress,
            log_format: self.log_format,
        })
    }

    /// The HTTP server's address; `None` when it is `off`. A host name is
    /// looked up (`localhost:9898`).
    pub fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        use std::net::ToSocketAddrs as _;
        let addr = self.http_addr.trim();
        if addr.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = |why: String| {
            ConfigError::new(
                "--http-addr/HTTP_ADDR",
                format!("{addr:?} {why} (e.g. 127.0.0.1:9898, localhost:9898, or off)"),
            )
        };
        if let Ok(a) = addr.parse() {
            return Ok(Some(a));
        }
        if !addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
            return Err(bad("is not HOST:PORT".into()));
        }
        match addr.to_socket_addrs() {
            Ok(mut found) => found.next().map(Some).ok_or_else(|| bad("names no address".into())),
            Err(e) => Err(bad(format!("cannot be looked up: {e}"))),
        }
    }
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
        match parse(&[
            "--once",
            "--max-files-per-batch",
            "7",
            "--database-url",
            "postgres://u@h/db",
            "--source-id",
            "s",
        ]) {
            Ok(Command::Run(args)) => {
                assert!(args.once);
                let c = args.config().expect("valid");
                assert_eq!((c.max_files_per_batch, c.source.as_str()), (7, "s"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["run", "--once"]), Ok(Command::Run(a)) if a.once));
    }

    #[test]
    fn bad_values_name_their_setting() {
        let run = |args: &[&str]| match parse(args) {
            Ok(Command::Run(a)) => a.config().err().map(|e| e.setting),
            other => panic!("{other:?}"),
        };
        assert_eq!(run(&["--database-url", ""]).as_deref(), Some("--database-url/DATABASE_URL"));
        let ok = ["--database-url", "postgres://h/db", "--source-id", "s"];
        let with = |extra: &[&'static str]| [&ok[..], extra].concat();
        assert_eq!(
            run(&with(&["--max-files-per-batch", "0"])).as_deref(),
            Some("--max-files-per-batch/MAX_FILES_PER_BATCH")
        );
        assert_eq!(
            run(&["--database-url", "postgres://h:notaport/db"]).as_deref(),
            Some("--database-url/DATABASE_URL")
        );
        assert!(parse(&["--clean-source", "shred"]).is_err());
        assert_eq!(run(&with(&["--metrics-window", "0"])).as_deref(), Some("--metrics-window/METRICS_WINDOW_SECS"));
        assert_eq!(run(&with(&["--metrics-window", "86401"])).as_deref(), Some("--metrics-window/METRICS_WINDOW_SECS"));
        assert_eq!(run(&with(&["--http-addr", "localhost"])).as_deref(), Some("--http-addr/HTTP_ADDR"));
        assert_eq!(run(&with(&["--stall-after", "0"])).as_deref(), Some("--stall-after/STALL_AFTER_SECS"));
        assert_eq!(run(&with(&["--loaders", "0"])).as_deref(), Some("--loaders/LOADERS"));
        assert_eq!(run(&with(&["--chunk-bytes", "2000000000"])).as_deref(), Some("--chunk-bytes/CHUNK_BYTES"));
        assert_eq!(run(&with(&["--session-timeout", "0"])).as_deref(), Some("--session-timeout/SESSION_TIMEOUT_SECS"));
        assert_eq!(run(&with(&["--http-addr", "OFF"])), None);
        assert_eq!(run(&with(&["--http-addr", "0.0.0.0:80"])), None);
        assert_eq!(run(&with(&["--http-addr", "localhost:9898"])), None, "host names are looked up");
    }
}
