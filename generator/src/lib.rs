//! The generator: the source of the pipeline's events and the test-data maker
//! of every other part. [`run`] publishes one CSV file into the data folder
//! every interval until it is told to stop or has written `--files` files.
//! Rows come from [`synth::Generator`]; files are published by
//! [`runtime::publish::publish`] (temporary name → fsync → rename), so a
//! reader never sees a partial file.
//!
//! # Layout
//! - [`config`]: the settings (`.env` → environment → flags), validated;
//! - [`synth`]: synthetic users, catalog and rows;
//! - [`replay`]: `generator replay`, a historical CSV published at a speed
//!   factor ([`replay::dataset`] maps rows, [`replay::reader`] reads them).

pub mod config;
pub mod replay;
pub mod synth;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use runtime::ConfigError;
pub use synth::{GeneratedFile, Generator, Settings};

/// What a run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub seed: u64,
    pub files: u64,
    pub rows: u64,
    pub duplicates: u64,
    pub bad_rows: u64,
}

/// Creates the data folder if needed and proves it is writable.
pub fn prepare_data_dir(dir: &Path) -> Result<(), ConfigError> {
    let setting = "--data-dir/DATA_DIR";
    let fail =
        |what: &str, e: std::io::Error| ConfigError::new(setting, format!("{}: cannot {what}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| fail("create the folder", e))?;
    let probe = dir.join(format!(".generator-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| fail("write into the folder", e))?;
    std::fs::remove_file(&probe).map_err(|e| fail("remove a file from the folder", e))?;
    Ok(())
}

/// Runs the generator until `shutdown` fires or `--files` files are written.
/// A file being written when `shutdown` fires is finished first.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    cfg.validate()?;
    prepare_data_dir(&cfg.data_dir)?;
    let stale = remove_stale_temps(&cfg.data_dir).context("cleaning the data folder")?;
    let seed = cfg.seed.unwrap_or_else(rand::random);
    let instance = format!("{:04x}", rand::random::<u16>());
    info!(seed, data_dir = %cfg.data_dir.display(), stale_temps_removed = stale, "generator started");

    let interval = Duration::from_secs_f64(cfg.interval);
    let mut generator = Generator::new(cfg.settings(seed), &instance);
    let mut summary = Summary { seed, ..Summary::default() };
    let started = Instant::now();
    let mut index: u32 = 0;
    while cfg.files.is_none_or(|n| summary.files < n) && !shutdown.is_cancelled() {
        let now = file_instant(cfg.start_time, interval, index);
        let dir = cfg.data_dir.clone();
        let (g, published) = tokio::task::spawn_blocking(move || {
            let file = generator.next_file(now);
            let path = runtime::publish::publish(&dir, &file.name, &file.contents);
            (generator, path.map(|_| file))
        })
        .await
        .context("the file writer panicked")?;
        generator = g;
        let file = published.with_context(|| format!("publishing a file into {}", cfg.data_dir.display()))?;
        info!(file = %file.name, rows = file.rows, duplicates = file.duplicates, bad_rows = file.bad_rows, "file published");
        summary.files += 1;
        summary.rows += file.rows as u64;
        summary.duplicates += file.duplicates as u64;
        summary.bad_rows += file.bad_rows as u64;
        index = index.saturating_add(1);

        if cfg.files.is_some_and(|n| summary.files >= n) {
            break;
        }
        // A fixed schedule: the time spent writing does not slow the rate.
        let deadline = started + interval.saturating_mul(index);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    info!(
        files = summary.files,
        rows = summary.rows,
        duplicates = summary.duplicates,
        bad_rows = summary.bad_rows,
        "generator stopped"
    );
    Ok(summary)
}

/// Removes temporary files an interrupted generator left in `dir` (only its
/// own kind: `.events_*.csv.tmp`). Returns how many it removed.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".events_") && name.ends_with(".csv.tmp") && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The instant file `index` is stamped with: the clock, or with a start time
/// `start + index × interval`.
fn file_instant(start: Option<DateTime<Utc>>, interval: Duration, index: u32) -> DateTime<Utc> {
    match start {
        Some(start) => {
            let step = TimeDelta::from_std(interval.saturating_mul(index)).unwrap_or(TimeDelta::MAX);
            start.checked_add_signed(step).unwrap_or(start)
        }
        None => Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(runtime::publish::temp_name("events_1.csv")), b"partial")?;
        std::fs::write(dir.path().join("events_2.csv"), b"whole")?;
        std::fs::write(dir.path().join(".other.tmp"), b"not ours")?;
        assert_eq!(remove_stale_temps(dir.path())?, 1);
        assert!(dir.path().join("events_2.csv").exists());
        assert!(dir.path().join(".other.tmp").exists());
        Ok(())
    }
}
