//! What a loader says about a committed batch: the progress record, the
//! warnings for files not loaded, and the one `batch_committed` event that
//! feeds every observer.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use super::marker::status_of;
use super::{Job, Shared};
use crate::batch::{BatchRead, FileOutcome};
use crate::checkpoint::FileStatus;
use crate::observe::progress::{ms, BatchProgress, Phases};
use crate::sink::Committed;

/// Logs and counts a committed batch; `total` is its time from the claim
/// to the COMMIT's return (the phases overlap: reading and deduplicating
/// the next chunk go on while the last is staged).
pub(super) fn report(shared: &Shared, job: &Job, c: &Committed, read: &BatchRead, discover: Duration, total: Duration) {
    let sum = |f: &dyn Fn(&crate::sink::FileLoad) -> u64| c.files.iter().map(f).sum::<u64>();
    let count = |s: FileStatus| c.files.iter().filter(|f| status_of(&f.outcome) == s).count();
    let input_rows = sum(&|f| f.rows_read);
    let p = BatchProgress {
        timestamp: Utc::now(),
        committed_at: c.committed_at,
        batch_id: job.batch_id.unwrap_or_default(),
        recovered: job.recovered,
        files: c.files.len(),
        files_quarantined: count(FileStatus::Quarantined),
        files_missing: count(FileStatus::Missing) + count(FileStatus::Changed),
        input_rows,
        duplicates: sum(&|f| f.duplicates),
        rejected: sum(&|f| f.rejected),
        inserted: sum(&|f| f.inserted),
        updated: sum(&|f| f.updated),
        unchanged: sum(&|f| f.unchanged),
        chunks_inserted: c.chunks_inserted,
        chunks_merged: c.chunks_merged,
        rows_merged: c.rows_merged,
        keys_looked_up: c.keys_looked_up,
        rows_per_sec: input_rows as f64 / total.as_secs_f64().max(1e-9),
        phases: Phases {
            discover_ms: ms(discover),
            read_ms: ms(read.read),
            dedup_ms: ms(read.dedup),
            load_ms: ms(c.load),
            commit_ms: ms(c.commit),
            total_ms: ms(total),
        },
    };
    for f in &c.files {
        match &f.outcome {
            FileOutcome::Quarantine { reason } => {
                warn!(batch_id = p.batch_id, file = %f.file.id.name, reason, "file quarantined")
            }
            FileOutcome::Missing => {
                warn!(batch_id = p.batch_id, file = %f.file.id.name, "file vanished before it was read")
            }
            FileOutcome::Changed { reason } => {
                warn!(batch_id = p.batch_id, file = %f.file.id.name, reason, "file changed; its new contents are a new file")
            }
            FileOutcome::Rows { .. } if f.file.reingest => {
                info!(batch_id = p.batch_id, file = %f.file.id.name, size = f.file.id.size, "file changed since it was loaded; loaded it again")
            }
            FileOutcome::Rows { .. } => {}
        }
    }
    let now = Utc::now();
    let latencies: Vec<Duration> = c
        .files
        .iter()
        .filter(|f| matches!(f.outcome, FileOutcome::Rows { .. }))
        .map(|f| (now - chrono::DateTime::from_timestamp_nanos(f.file.id.mtime_ns)).to_std().unwrap_or_default())
        .collect();
    shared.observers.batch_committed(&p, &latencies);
    shared.committed.notify_waiters();
}
