//! What a batch's transaction does besides staging: the merge's file order
//! (on Citus the whole batch's merge), each file's counts, then the files'
//! new state in the registry, the load history and the batch's own row; and
//! reading a committed batch's files back from the load history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row, Statement, Transaction};
use uuid::Uuid;

use super::{sql, BatchMeta, Claimed, FileLoad, Prepared, SinkError, Stage};
use crate::batch::{FileOutcome, FileSummary};
use crate::checkpoint::FileStatus;
use crate::pg::text;

/// Each claimed file with its outcome from the read (`read` in batch
/// order; a file the read did not reach is missing) and its read counts.
pub(super) fn loads(files: &[Claimed], read: &[FileSummary]) -> Vec<FileLoad> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let outcome = read.get(i).map_or(FileOutcome::Missing, |r| r.outcome.clone());
            let (rows_read, rejected, duplicates) = match outcome {
                FileOutcome::Rows { rows_read, rejected, duplicates } => (rows_read, rejected, duplicates),
                _ => (0, 0, 0),
            };
            FileLoad {
                file: f.clone(),
                outcome,
                rows_read,
                inserted: 0,
                updated: 0,
                unchanged: 0,
                duplicates,
                rejected,
            }
        })
        .collect()
}

/// The file order between a batch's files and older ones of the same
/// modification time, read again before the COMMIT (the claim read it
/// first). `statement` is [`sql::same_time_older`] prepared.
pub(super) async fn file_order(
    tx: &Transaction<'_>,
    statement: &Statement,
    ids: &[i32],
) -> Result<Vec<i64>, SinkError> {
    Ok(tx.query_one(statement, &[&ids]).await.map_err(SinkError::query("reading the file order"))?.get(0))
}

/// Before the COMMIT: fails the batch (transient: it runs again) when a
/// file that is older than one of the batch's files by the file order
/// between files of one modification time was registered after the claim
/// read that order (`after`; `None` when no staged row lost to a stored
/// one). Such a file's rows, committed by another loader before a merge met
/// them, made the batch's rows lose as if they were older; a missing pair
/// can only make a row lose, so a batch whose rows all won is right as it
/// is. Read after every merge returned: a stored row a merge met was
/// committed by then, and its file registered before that, so this read
/// sees it. Usually the order is unchanged.
pub(super) async fn same_file_order(
    tx: &Transaction<'_>,
    statement: &Statement,
    ids: &[i32],
    after: Option<&[i64]>,
) -> Result<(), SinkError> {
    let Some(before) = after else { return Ok(()) };
    let now = file_order(tx, statement, ids).await?;
    if now.iter().all(|pair| before.contains(pair)) {
        Ok(())
    } else {
        Err(SinkError::FileOrderChanged)
    }
}

/// Adds rows of (file id, inserted, written over) — a merge's counts, or
/// [`sql::RECONCILE`]'s changes to them — to `written` (per file index);
/// returns their sum.
pub(super) fn add_written(ids: &[i32], rows: &[Row], written: &mut [(u64, u64)]) -> i64 {
    let mut sum = 0;
    for row in rows {
        let (file_id, inserted, over): (i32, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if let Some(w) = ids.iter().position(|&id| id == file_id).and_then(|i| written.get_mut(i)) {
            w.0 = w.0.saturating_add_signed(inserted);
            w.1 = w.1.saturating_add_signed(over);
        }
        sum += inserted + over;
    }
    sum
}

/// What the merge of a whole batch needs: its number, its chunks, its
/// files' ids and modification times by index, and the file order read
/// with the claim.
pub(super) struct Merge<'b> {
    pub batch_seq: i64,
    pub chunks: i32,
    pub ids: &'b [i32],
    pub mtimes: &'b [i64],
    pub order: &'b [i64],
}

/// On Citus: merges the whole batch from the loader's distributed stage
/// (the latest chunk's row of a key), records the rows that lost, and
/// empties the stage; returns whether some staged row did not win (then
/// the file order is checked again before the COMMIT).
pub(super) async fn merge_batch(
    tx: &Transaction<'_>,
    stage: &Stage,
    batch: Merge<'_>,
    staged: &[u64],
    written: &mut [(u64, u64)],
) -> Result<bool, SinkError> {
    let Merge { batch_seq, chunks, ids, mtimes, order } = batch;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&ids, &mtimes, &order];
    let rows = match stage.merge_several.as_ref().filter(|_| chunks > 1) {
        Some(several) => tx.query(several.as_str(), &params).await,
        None => tx.query(&stage.prepared.merge_one, &params).await,
    }
    .map_err(SinkError::query("merging into events"))?;
    // Usually every staged row won (a chunk is unique within itself): then
    // there is no lost row to look for.
    let lost_some = staged.iter().sum::<u64>() as i64 > add_written(ids, &rows, written);
    if lost_some {
        tx.execute(&stage.prepared.lost, &[&ids, &batch_seq])
            .await
            .map_err(SinkError::query("recording the rows lost to newer ones"))?;
    }
    tx.batch_execute(&format!("DELETE FROM {}", stage.table)).await.map_err(SinkError::query("emptying the stage"))?;
    Ok(lost_some)
}

/// After a batch merged chunk by chunk: makes `written` what merging its
/// chunks together would have written ([`sql::RECONCILE`]).
pub(super) async fn reconcile(
    tx: &Transaction<'_>,
    batch_seq: i64,
    ids: &[i32],
    written: &mut [(u64, u64)],
) -> Result<(), SinkError> {
    let rows = tx
        .query(sql::RECONCILE, &[&batch_seq])
        .await
        .map_err(SinkError::query("counting the rows a later chunk wrote over"))?;
    add_written(ids, &rows, written);
    Ok(())
}

/// Each file's counts from what the merges wrote (`written`, per file
/// index: inserted, written over) and the rows it staged: rows written over
/// are updated (the trigger logged a replaced row) or unchanged; the rest
/// lost to a later row of the same key or to a newer stored row.
pub(super) async fn count(
    tx: &Transaction<'_>,
    prepared: &Prepared,
    batch_seq: i64,
    staged: &[u64],
    written: &[(u64, u64)],
    loads: &mut [FileLoad],
) -> Result<(), SinkError> {
    // A file's updated rows are at most its rows written over: when no row
    // was, there is nothing to count (the usual case, a round trip saved).
    let replaced: HashMap<i32, i64> = if written.iter().all(|&(_, over)| over == 0) {
        HashMap::new()
    } else {
        tx.query(&prepared.replaced, &[&batch_seq])
            .await
            .map_err(SinkError::query("counting the replaced rows"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    for (index, load) in loads.iter_mut().enumerate() {
        let (inserted, over) = written.get(index).copied().unwrap_or_default();
        let updated = replaced.get(&load.file.file_id).map_or(0, |&r| r as u64).min(over);
        load.inserted = inserted;
        load.updated = updated;
        load.unchanged = over - updated;
        // Lost to a later chunk of the batch, or to a newer stored row.
        load.duplicates += staged.get(index).copied().unwrap_or_default().saturating_sub(inserted + over);
    }
    Ok(())
}

/// Settles the files in the registry, records their load history and the
/// batch's own row: three statements sent at once (tokio-postgres pipelines
/// them, one round trip instead of three). PostgreSQL runs them in this
/// order and the error is the first that fails (the others then fail as
/// "transaction aborted"), as when they were sent one by one.
pub(super) async fn record(
    tx: &Transaction<'_>,
    prepared: &Prepared,
    meta: &BatchMeta,
    batch_seq: i64,
    loads: &[FileLoad],
    to_move: impl Fn(&FileOutcome) -> bool,
) -> Result<(), SinkError> {
    let ids: Vec<i32> = loads.iter().map(|l| l.file.file_id).collect();
    let states: Vec<&str> = loads.iter().map(|l| l.outcome.status()).collect();
    let reasons: Vec<Option<String>> = loads.iter().map(|l| l.outcome.reason().map(|r| text(r).into_owned())).collect();
    let moves: Vec<bool> = loads.iter().map(|l| to_move(&l.outcome)).collect();
    let settle = async {
        tx.execute(&prepared.settle, &[&batch_seq, &ids, &states, &reasons, &moves])
            .await
            .map_err(SinkError::query("settling the files in the registry"))
    };

    let col = |f: &dyn Fn(&FileLoad) -> i64| loads.iter().map(f).collect::<Vec<i64>>();
    let names: Vec<&str> = loads.iter().map(|l| l.file.id.name.as_str()).collect();
    let mtimes: Vec<DateTime<Utc>> = loads.iter().map(|l| DateTime::from_timestamp_nanos(l.file.id.mtime_ns)).collect();
    let reingest: Vec<bool> = loads.iter().map(|l| l.file.reingest).collect();
    let (sizes, rows_read, inserted, updated) = (
        col(&|l| l.file.id.size as i64),
        col(&|l| l.rows_read as i64),
        col(&|l| l.inserted as i64),
        col(&|l| l.updated as i64),
    );
    let (unchanged, duplicates, rejected) =
        (col(&|l| l.unchanged as i64), col(&|l| l.duplicates as i64), col(&|l| l.rejected as i64));
    let batch_id = meta.batch_id as i64;
    let history = async {
        tx.execute(
            &prepared.history,
            &[
                &meta.checkpoint_id,
                &batch_id,
                &names,
                &sizes,
                &mtimes,
                &states,
                &reasons,
                &rows_read,
                &inserted,
                &updated,
                &unchanged,
                &duplicates,
                &rejected,
                &reingest,
                &batch_seq,
                &meta.started_at,
            ],
        )
        .await
        .map_err(SinkError::query("recording the load history"))
    };
    let file_count = loads.len() as i32;
    let batch = async {
        tx.execute(
            &prepared.batch,
            &[
                &batch_seq,
                &meta.checkpoint_id,
                &batch_id,
                &meta.source,
                &file_count,
                &meta.window_seconds,
                &meta.started_at,
            ],
        )
        .await
        .map_err(SinkError::query("recording the batch"))
    };
    futures_util::future::try_join3(settle, history, batch).await?;
    Ok(())
}

/// One file of a committed batch, as the load history has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFile {
    pub name: String,
    pub size: u64,
    pub mtime_micros: i64,
    pub status: FileStatus,
    pub reason: Option<String>,
}

/// The load-history rows of batch `batch_id` of checkpoint `id`: empty when
/// the database does not have the batch.
pub async fn committed_files(client: &Client, id: Uuid, batch_id: u64) -> Result<Vec<HistoryFile>, SinkError> {
    let rows = client
        .query(
            "SELECT file_name, file_size, (extract(epoch FROM file_mtime) * 1000000)::int8, status, reason \
             FROM load_history WHERE checkpoint_id = $1 AND batch_id = $2 ORDER BY load_id",
            &[&id, &(batch_id as i64)],
        )
        .await
        .map_err(SinkError::query("looking up the load history"))?;
    Ok(rows
        .iter()
        .map(|r| HistoryFile {
            name: r.get(0),
            size: r.get::<_, i64>(1) as u64,
            mtime_micros: r.get(2),
            // load_history's CHECK allows the four statuses only.
            status: r.get::<_, &str>(3).parse().unwrap_or(FileStatus::Loaded),
            reason: r.get(4),
        })
        .collect())
}
