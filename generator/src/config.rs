//! The generator's settings: `.env`, then the environment, then flags. Every
//! flag has an environment variable of the same meaning; [`Config::validate`]
//! checks what clap's types cannot.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Parser;

use crate::cli::{check_rate, ConfigError, LogFormat};
use crate::record::Settings;

/// Writes synthetic e-commerce event CSV files into a folder, atomically.
#[derive(Debug, Clone, Parser)]
#[command(name = "generator", version, about, long_about = None, allow_negative_numbers = true)]
pub struct Config {
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
    fn start_time_must_be_rfc3339() {
        let argv = ["generator", "--start-time", "yesterday"];
        assert!(Config::try_parse_from(argv).is_err());
        assert!(parse(&["--start-time", "2026-01-01T00:00:00Z"]).start_time.is_some());
    }
}
