//! The generator's settings: `.env`, then the environment, then flags. Every
//! flag has an environment variable of the same meaning; [`Config::validate`]
//! checks what clap's types cannot.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use runtime::config::{check_rate, ConfigError};
use runtime::LogFormat;

use crate::replay::{InputFormat, ReplaySettings, Speed};
use crate::synth::Settings;

/// Writes synthetic e-commerce event CSV files into a folder, atomically.
#[derive(Debug, Clone, Parser)]
#[command(name = "generator", version, about, long_about = None, allow_negative_numbers = true, args_conflicts_with_subcommands = true)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<GeneratorCommand>,

    /// Folder the event files are published into (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Seconds between two files; fractions allowed, 0 writes without pause.
    #[arg(long, env = "SLEEP_INTERVAL", default_value_t = 15.0, value_name = "SECONDS")]
    pub interval: f64,

    /// Fewest rows in a file (when --rows is not set).
    #[arg(long, env = "MIN_EVENTS", default_value_t = 100, value_name = "N")]
    pub min_events: usize,

    /// Most rows in a file (when --rows is not set).
    #[arg(long, env = "MAX_EVENTS", default_value_t = 1500, value_name = "N")]
    pub max_events: usize,

    /// Exactly this many rows in every file (overrides --min-events/--max-events).
    #[arg(long, env = "GENERATOR_ROWS", value_name = "N")]
    pub rows: Option<usize>,

    /// Stop after this many files (default: run until stopped).
    #[arg(long, env = "GENERATOR_FILES", value_name = "N")]
    pub files: Option<u64>,

    /// Seed of the random rows; with --start-time, files are byte-identical on every run.
    #[arg(long, env = "GENERATOR_SEED", value_name = "S")]
    pub seed: Option<u64>,

    /// Use this RFC 3339 instant instead of the clock; file k is stamped start + k × interval.
    #[arg(long, env = "GENERATOR_START_TIME", value_name = "RFC3339", value_parser = parse_instant)]
    pub start_time: Option<DateTime<Utc>>,

    /// Share of rows that repeat a recent (user_id, event_time), in [0, 1].
    #[arg(long, env = "DUPLICATE_RATE", default_value_t = 0.02, value_name = "RATE")]
    pub duplicate_rate: f64,

    /// Share of rows that break the contract on purpose, in [0, 1].
    #[arg(long, env = "BAD_ROW_RATE", default_value_t = 0.0, value_name = "RATE")]
    pub bad_row_rate: f64,

    /// Number of users (ids 1..=N), each always with the same name and email.
    #[arg(long, env = "N_USERS", default_value_t = 10_000, value_name = "N")]
    pub users: u32,

    /// Number of catalog products (ids 1..=N) over ten categories.
    #[arg(long, env = "N_PRODUCTS", default_value_t = 300, value_name = "N")]
    pub products: u32,

    /// Share of ordinary rows that are purchases rather than views, in [0, 1].
    #[arg(long, env = "PURCHASE_RATE", default_value_t = 0.05, value_name = "RATE")]
    pub purchase_rate: f64,

    /// Events happened up to this many milliseconds before their file was written.
    #[arg(long, env = "TIME_JITTER_MS", default_value_t = 500, value_name = "MS")]
    pub jitter_ms: u32,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// What the generator does besides generating.
#[derive(Debug, Clone, Subcommand)]
pub enum GeneratorCommand {
    /// Replay a historical event CSV (ours, or the public multi-category store dataset) at a speed factor.
    Replay(ReplayArgs),
}

/// Settings of `generator replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The CSV to replay, in time order.
    #[arg(long, env = "REPLAY_INPUT", value_name = "FILE")]
    pub input: PathBuf,

    /// Folder the files are published into (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Data-seconds per real second (1 is real time, 14400 four hours a second), or `max`.
    #[arg(long, env = "REPLAY_SPEED", default_value = "1", value_name = "FACTOR|max")]
    pub speed: Speed,

    /// The input's format: detected from its header by default.
    #[arg(long, env = "REPLAY_FORMAT", value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,

    /// Files published per real second at a numeric speed: each holds speed / this many data-seconds.
    #[arg(long, env = "REPLAY_FILES_PER_SECOND", default_value_t = 1.0, value_name = "N")]
    pub files_per_second: f64,

    /// Data-seconds per file, overriding --files-per-second (default with --speed max: 3600).
    #[arg(long, env = "REPLAY_SLICE_SECS", value_name = "SECONDS")]
    pub slice_secs: Option<f64>,

    /// Rebase data time so that the first event lands now.
    #[arg(long, env = "REPLAY_SHIFT_TO_NOW", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub shift_to_now: bool,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ReplayArgs {
    /// Data time per file.
    pub fn slice(&self) -> Result<Duration, ConfigError> {
        let secs = match (self.slice_secs, self.speed) {
            (Some(s), _) => s,
            (None, Speed::Max) => 3600.0,
            (None, Speed::Factor(speed)) => {
                if !(self.files_per_second.is_finite() && self.files_per_second > 0.0) {
                    return Err(ConfigError::new(
                        "--files-per-second/REPLAY_FILES_PER_SECOND",
                        format!("{} is not a number > 0", self.files_per_second),
                    ));
                }
                speed / self.files_per_second
            }
        };
        if !(1e-6..=1e9).contains(&secs) {
            return Err(ConfigError::new("--slice-secs/REPLAY_SLICE_SECS", format!("{secs} is not in 0.000001..=1e9")));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// The replay's settings; `now` is where `--shift-to-now` moves the first event.
    pub fn settings(&self, now: DateTime<Utc>, progress_bar: bool) -> Result<ReplaySettings, ConfigError> {
        if !self.input.is_file() {
            return Err(ConfigError::new(
                "--input/REPLAY_INPUT",
                format!("{} is not a readable file", self.input.display()),
            ));
        }
        Ok(ReplaySettings {
            input: self.input.clone(),
            data_dir: self.data_dir.clone(),
            format: self.format,
            speed: self.speed,
            slice: self.slice()?,
            shift_to: self.shift_to_now.then_some(now),
            progress_bar,
        })
    }
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 instant such as 2026-01-01T00:00:00Z ({e})"))
}

/// Largest user or product id: the contract's ids are PostgreSQL INTEGERs.
const MAX_ID: u32 = i32::MAX as u32;

impl Config {
    /// Checks the settings clap's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.interval.is_finite() || self.interval < 0.0 {
            return Err(ConfigError::new(
                "--interval/SLEEP_INTERVAL",
                format!("{} is not a number of seconds ≥ 0", self.interval),
            ));
        }
        if self.rows.is_none() && self.min_events > self.max_events {
            return Err(ConfigError::new(
                "--min-events/MIN_EVENTS",
                format!("{} is more than --max-events/MAX_EVENTS ({})", self.min_events, self.max_events),
            ));
        }
        if self.users == 0 || self.users > MAX_ID {
            return Err(ConfigError::new("--users/N_USERS", format!("{} is not in 1..={MAX_ID}", self.users)));
        }
        if self.products == 0 || self.products > 1_000_000 {
            return Err(ConfigError::new("--products/N_PRODUCTS", format!("{} is not in 1..=1000000", self.products)));
        }
        check_rate("--duplicate-rate/DUPLICATE_RATE", self.duplicate_rate)?;
        check_rate("--bad-row-rate/BAD_ROW_RATE", self.bad_row_rate)?;
        check_rate("--purchase-rate/PURCHASE_RATE", self.purchase_rate)?;
        if self.duplicate_rate + self.bad_row_rate > 1.0 {
            return Err(ConfigError::new(
                "--duplicate-rate/DUPLICATE_RATE",
                "together with --bad-row-rate/BAD_ROW_RATE it exceeds 1",
            ));
        }
        Ok(())
    }

    /// The row generator's settings, with the seed the run uses.
    pub fn settings(&self, seed: u64) -> Settings {
        Settings {
            users: self.users,
            products: self.products,
            min_events: self.min_events,
            max_events: self.max_events,
            rows: self.rows,
            duplicate_rate: self.duplicate_rate,
            bad_row_rate: self.bad_row_rate,
            purchase_rate: self.purchase_rate,
            jitter_micros: i64::from(self.jitter_ms) * 1_000,
            seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["generator"];
        argv.extend_from_slice(args);
        match Config::try_parse_from(argv) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]);
        assert_eq!((c.interval, c.min_events, c.max_events, c.users), (15.0, 100, 1500, 10_000));
        assert_eq!((c.duplicate_rate, c.bad_row_rate), (0.02, 0.0));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn min_above_max_names_the_setting() {
        let err = parse(&["--min-events", "10", "--max-events", "5"]).validate().err();
        assert_eq!(err.map(|e| e.setting), Some("--min-events/MIN_EVENTS".to_owned()));
    }

    #[test]
    fn rates_outside_zero_one_are_refused() {
        for flag in ["--duplicate-rate", "--bad-row-rate", "--purchase-rate"] {
            assert!(parse(&[flag, "1.5"]).validate().is_err(), "{flag}");
            assert!(parse(&[flag, "-0.1"]).validate().is_err(), "{flag}");
        }
        assert!(parse(&["--interval", "-1"]).validate().is_err());
        assert!(parse(&["--interval", "0.05"]).validate().is_ok());
    }

    #[test]
    fn replay_is_a_subcommand_with_its_own_settings() {
        let c = parse(&["replay", "--input", "x.csv", "--speed", "max"]);
        let Some(GeneratorCommand::Replay(r)) = c.command else { panic!("not a replay") };
        assert_eq!(r.speed, Speed::Max);
        assert_eq!(r.slice().ok(), Some(Duration::from_secs(3600)));
        let c = parse(&["replay", "--input", "x.csv", "--speed", "14400", "--files-per-second", "4"]);
        let Some(GeneratorCommand::Replay(r)) = c.command else { panic!("not a replay") };
        assert_eq!(r.slice().ok(), Some(Duration::from_secs(3600)));
        for bad in [["--speed", "0"], ["--speed", "fast"], ["--format", "parquet"]] {
            let argv = ["generator", "replay", "--input", "x.csv", bad[0], bad[1]];
            assert!(Config::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let argv = ["generator", "replay", "--input", "x.csv", "--slice-secs", "0"];
        let Ok(Config { command: Some(GeneratorCommand::Replay(r)), .. }) = Config::try_parse_from(argv) else {
            panic!("parses")
        };
        assert_eq!(r.slice().err().map(|e| e.setting), Some("--slice-secs/REPLAY_SLICE_SECS".to_owned()));
        let missing = r.settings(Utc::now(), false).err().map(|e| e.setting);
        assert_eq!(missing, Some("--input/REPLAY_INPUT".to_owned()));
    }

    #[test]
    fn start_time_must_be_rfc3339() {
        let argv = ["generator", "--start-time", "yesterday"];
        assert!(Config::try_parse_from(argv).is_err());
        assert!(parse(&["--start-time", "2026-01-01T00:00:00Z"]).start_time.is_some());
    }
}
