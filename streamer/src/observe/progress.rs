//! Progress of the stream, in the spirit of Spark's StreamingQueryProgress:
//! after every batch one structured log line and the same as a JSON line in
//! `checkpoints/progress/progress.jsonl` (rotated at [`MAX_PROGRESS_BYTES`],
//! one older generation kept), and the running totals of the stream. Every
//! counter the stream reports lives here.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::info;

/// Size at which the progress file is rotated.
pub const MAX_PROGRESS_BYTES: u64 = 4 * 1024 * 1024;

/// Milliseconds spent in each phase of a batch. Reading, deduplicating
/// and aggregating a chunk overlap staging and merging the last one, so the
/// phases add up to more than `total_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Claiming the files and writing the plan.
    pub discover_ms: f64,
    pub read_ms: f64,
    /// Deduplicating and aggregating (Polars).
    pub dedup_ms: f64,
    /// From the first chunk's staging to the COMMIT.
    pub load_ms: f64,
    pub commit_ms: f64,
    /// The batch's whole time, from its claim to its COMMIT's return.
    pub total_ms: f64,
}

/// Milliseconds in a duration, to the microsecond.
pub fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1_000.0
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchProgress {
    /// When the record was written: after the commit marker.
    pub timestamp: DateTime<Utc>,
    /// When the batch's COMMIT returned (its rows queryable from then).
    pub committed_at: DateTime<Utc>,
    pub batch_id: u64,
    /// True when the batch was planned by an earlier run and re-run now.
    pub recovered: bool,
    pub files: usize,
    pub files_quarantined: usize,
    pub files_missing: usize,
    pub input_rows: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Chunks copied straight into `events` (none of their keys was
    /// stored), and chunks staged and merged, whole or only their rows
    /// whose key was stored (the others went in straight): `rows_merged`.
    pub chunks_inserted: u32,
    pub chunks_merged: u32,
    pub rows_merged: u64,
    /// Keys looked up in `events` to split chunks: none when the
    /// streamer's recent keys told which were stored.
    pub keys_looked_up: u64,
    /// Input rows per second over the whole batch.
    pub rows_per_sec: f64,
    pub phases: Phases,
}

impl BatchProgress {
    /// The batch's structured log line.
    pub fn log(&self) {
        let p = &self.phases;
        info!(
            batch_id = self.batch_id,
            recovered = self.recovered,
            files = self.files,
            quarantined = self.files_quarantined,
            rows_in = self.input_rows,
            duplicates = self.duplicates,
            rejected = self.rejected,
            inserted = self.inserted,
            updated = self.updated,
            unchanged = self.unchanged,
            chunks_inserted = self.chunks_inserted,
            chunks_merged = self.chunks_merged,
            rows_merged = self.rows_merged,
            keys_looked_up = self.keys_looked_up,
            rows_per_sec = self.rows_per_sec.round(),
            discover_ms = p.discover_ms,
            read_ms = p.read_ms,
            dedup_ms = p.dedup_ms,
            load_ms = p.load_ms,
            commit_ms = p.commit_ms,
            total_ms = p.total_ms,
            "batch committed"
        );
    }
}

/// Running totals since the stream started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub batches: u64,
    pub files: u64,
    pub files_quarantined: u64,
    pub input_rows: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
}

impl Totals {
    /// The log line of a stream that stops.
    pub fn log_stopped(&self) {
        info!(
            batches = self.batches,
            files = self.files,
            rows_in = self.input_rows,
            inserted = self.inserted,
            updated = self.updated,
            rejected = self.rejected,
            "streamer stopped"
        );
    }

    pub fn add(&mut self, p: &BatchProgress) {
        self.batches += 1;
        self.files += p.files as u64;
        self.files_quarantined += p.files_quarantined as u64;
        self.input_rows += p.input_rows;
        self.duplicates += p.duplicates;
        self.rejected += p.rejected;
        self.inserted += p.inserted;
        self.updated += p.updated;
        self.unchanged += p.unchanged;
    }
}

/// The JSON-lines progress file.
#[derive(Debug)]
pub struct ProgressLog {
    path: PathBuf,
    max_bytes: u64,
}

impl ProgressLog {
    pub fn new(checkpoint_dir: &Path) -> io::Result<Self> {
        let dir = checkpoint_dir.join("progress");
        fs::create_dir_all(&dir)?;
        Ok(ProgressLog { path: dir.join("progress.jsonl"), max_bytes: MAX_PROGRESS_BYTES })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; rotates first when the file is full.
    pub fn append(&self, progress: &BatchProgress) -> io::Result<()> {
        if fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.max_bytes) {
            fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
        }
        let mut line = serde_json::to_vec(progress).map_err(io::Error::other)?;
        line.push(b'\n');
        OpenOptions::new().create(true).append(true).open(&self.path)?.write_all(&line)
    }
}

/// The terminal's progress bar of `--progress` (indicatif): files done of
/// the files listed, rows/s, ETA. It draws only on a terminal; log lines
/// written through [`BarWriter`] appear above it instead of through it.
#[derive(Debug, Clone)]
pub struct BacklogBar(indicatif::ProgressBar);

static BAR: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

fn terminal_bar() -> &'static indicatif::ProgressBar {
    BAR.get_or_init(|| {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files · {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message("watching for files");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    })
}

impl BacklogBar {
    pub fn new() -> BacklogBar {
        BacklogBar(terminal_bar().clone())
    }

    /// A bar on another draw target (tests: a hidden one).
    pub fn with(bar: indicatif::ProgressBar) -> BacklogBar {
        BacklogBar(bar)
    }

    /// `n` files wait to be loaded: they are what is left to do. (A file
    /// just committed may still count as waiting: the length never shrinks
    /// while files wait.)
    pub fn queued(&self, n: usize) {
        let wanted = self.0.position() + n as u64;
        if n == 0 {
            self.0.set_length(wanted);
            self.0.set_message("watching for files");
        } else {
            self.0.set_length(wanted.max(self.0.length().unwrap_or(0)));
        }
    }

    pub fn batch_done(&self, p: &BatchProgress) {
        self.0.inc(p.files as u64);
        self.0.set_message(format!("{:.0} rows/s", p.rows_per_sec));
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }

    pub fn position(&self) -> (u64, Option<u64>) {
        (self.0.position(), self.0.length())
    }
}

impl Default for BacklogBar {
    fn default() -> Self {
        Self::new()
    }
}

/// Log output that clears the progress bar, writes, and draws it again.
#[derive(Debug)]
pub struct BarWriter;

impl BarWriter {
    pub fn make() -> BarWriter {
        BarWriter
    }
}

impl io::Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        terminal_bar().suspend(|| io::stderr().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_json_and_the_file_stays_bounded() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut log = ProgressLog::new(dir.path())?;
        log.max_bytes = 1_000;
        let p = BatchProgress { batch_id: 3, input_rows: 10, ..BatchProgress::default() };
        for _ in 0..50 {
            log.append(&p)?;
        }
        let text = fs::read_to_string(log.path())?;
        let first: serde_json::Value =
            serde_json::from_str(text.lines().next().unwrap_or_default()).map_err(io::Error::other)?;
        assert_eq!(first["batch_id"], 3);
        assert_eq!(first["phases"]["load_ms"], 0.0);
        assert!(fs::metadata(log.path())?.len() < 2_000);
        assert!(log.path().with_extension("jsonl.1").exists());
        Ok(())
    }

    #[test]
    fn the_bar_counts_files_done_of_those_listed() {
        let bar = BacklogBar::with(indicatif::ProgressBar::hidden());
        bar.queued(5);
        assert_eq!(bar.position(), (0, Some(5)));
        bar.batch_done(&BatchProgress { files: 2, rows_per_sec: 1234.4, ..BatchProgress::default() });
        assert_eq!(bar.position(), (2, Some(5)));
        assert_eq!(bar.0.message(), "1234 rows/s");
        // The rest of the listing drains, then a new listing finds 4 more.
        bar.batch_done(&BatchProgress { files: 3, ..BatchProgress::default() });
        bar.queued(0);
        assert_eq!((bar.position(), bar.0.message().as_str()), ((5, Some(5)), "watching for files"));
        bar.queued(4);
        assert_eq!(bar.position(), (5, Some(9)));
    }
}
