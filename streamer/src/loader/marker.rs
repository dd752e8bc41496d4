//! The checkpoint side of a loader's batch: its plan (`offsets/N`) before
//! it touches the database, its marker (`commits/N`) after the COMMIT —
//! from the batch, or from the load history when the database has it
//! already — and the marker of a plan closed unloaded.

use chrono::Utc;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{Attempt, Job, Shared};
use crate::batch::FileOutcome;
use crate::checkpoint::{Commit, CommittedFile, FileId, FileStatus, PlannedFile, FORMAT_VERSION};
use crate::pg::Backoff;
use crate::sink::Committed;
use crate::{blocking, lock};

/// Writes `offsets/N` (a new batch, or a batch run again with what is left
/// of its files); returns N.
pub(super) async fn plan(shared: &Shared, job: &mut Job, files: Vec<PlannedFile>) -> anyhow::Result<u64> {
    let checkpoint = shared.checkpoint.clone();
    let (batch_id, same) = (job.batch_id, job.files.as_ref() == Some(&files));
    let planned = files.clone();
    let id = blocking(move || -> anyhow::Result<u64> {
        let mut cp = lock(&checkpoint);
        Ok(match batch_id {
            Some(id) if same => id,
            Some(id) => cp.replan(id, planned)?.batch_id,
            None => cp.plan(planned)?.batch_id,
        })
    })
    .await??;
    // Only a plan on disk makes the batch the job's.
    job.files = Some(files);
    job.batch_id = Some(id);
    Ok(id)
}

/// Writes `commits/N`. The batch is in the database: until the marker is
/// written nothing else happens here; if the streamer stops meanwhile the
/// next start finds the batch in the database.
pub(super) async fn mark(shared: &Shared, batch_id: u64, committed: &Committed) -> anyhow::Result<()> {
    let commit = Commit {
        version: FORMAT_VERSION,
        batch_id,
        committed_at: Utc::now(),
        abandoned: false,
        files: committed
            .files
            .iter()
            .map(|f| CommittedFile {
                file: f.file.id.clone(),
                status: status_of(&f.outcome),
                reason: f.outcome.reason().map(str::to_owned),
            })
            .collect(),
    };
    write_marker(shared, commit).await
}

pub(super) fn status_of(outcome: &FileOutcome) -> FileStatus {
    match outcome {
        FileOutcome::Rows { .. } => FileStatus::Loaded,
        FileOutcome::Quarantine { .. } => FileStatus::Quarantined,
        FileOutcome::Missing => FileStatus::Missing,
        FileOutcome::Changed { .. } => FileStatus::Changed,
    }
}

async fn write_marker(shared: &Shared, commit: Commit) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(shared.config.max_backoff);
    loop {
        let (checkpoint, attempt) = (shared.checkpoint.clone(), commit.clone());
        let written = blocking(move || {
            let mut cp = lock(&checkpoint);
            cp.commit(&attempt)?;
            if attempt.batch_id % 100 == 0 {
                cp.compact()?;
            }
            Ok::<(), crate::checkpoint::CheckpointError>(())
        })
        .await?;
        match written {
            Ok(()) => return Ok(()),
            Err(e) => {
                let wait = backoff.step();
                warn!(batch_id = commit.batch_id, error = %e, retry_in_ms = wait.as_millis() as u64, "batch committed but its marker cannot be written; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The batch is in the database already (a COMMIT whose answer was lost):
/// only its marker is written, from the load history.
pub(super) async fn confirm(shared: &Shared, client: &Client, batch_id: u64) -> Attempt {
    info!(batch_id, "the batch is in the database already; writing its commit marker");
    let history = match crate::sink::committed_files(client, shared.checkpoint_id, batch_id).await {
        Ok(h) => h,
        Err(e) => return Attempt::Failed(e),
    };
    if let Err(e) = write_marker(shared, from_history(batch_id, history)).await {
        let _ = shared.fatal.send(e);
    }
    shared.committed.notify_waiters();
    Attempt::Confirmed
}

/// The marker of a batch the database has, from its load history (a COMMIT
/// whose answer was lost, or a batch found committed at start).
pub(crate) fn from_history(batch_id: u64, history: Vec<crate::sink::HistoryFile>) -> Commit {
    Commit {
        version: FORMAT_VERSION,
        batch_id,
        committed_at: Utc::now(),
        abandoned: false,
        files: history
            .into_iter()
            .map(|h| CommittedFile {
                file: FileId { name: h.name, size: h.size, mtime_ns: h.mtime_micros * 1000 },
                status: h.status,
                reason: h.reason,
            })
            .collect(),
    }
}

/// A batch planned before that will never commit: its files were taken by
/// another streamer.
pub(super) async fn abandon(shared: &Shared, batch_id: u64) {
    info!(batch_id, "the batch's files were loaded by another streamer meanwhile; its plan is closed");
    let commit =
        Commit { version: FORMAT_VERSION, batch_id, committed_at: Utc::now(), abandoned: true, files: Vec::new() };
    if let Err(e) = write_marker(shared, commit).await {
        let _ = shared.fatal.send(e);
    }
}
