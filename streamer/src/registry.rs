//! The file registry in PostgreSQL (`source_files`, db/005): the truth
//! about every file of a data folder, shared by every streamer on it. This
//! module holds what the registrar and the disposer do with it; claiming and
//! settling happen inside a batch's own transaction ([`crate::sink`]).
//!
//! Invariants: a file identity (name, size, modification time) is
//! registered once per source; it is registered only once ready (see
//! [`crate::watch`]); registering is idempotent, so a registration lost in
//! a crash (it commits with `synchronous_commit = off`) is simply
//! done again at the next listing.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{Client, ToStatement};

use crate::checkpoint::FileId;
use crate::pg::{describe, text};

/// The notification channel the registrar wakes other streamers' loaders on.
pub const CHANNEL: &str = "pipeline_files";

/// A registry failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {}", describe(.source))]
pub struct RegistryError {
    pub what: &'static str,
    #[source]
    pub source: tokio_postgres::Error,
}

fn err(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RegistryError {
    move |source| RegistryError { what, source }
}

/// The identities registered for these names of `source`.
pub async fn known(client: &Client, source: &str, names: &[String]) -> Result<HashSet<FileId>, RegistryError> {
    let rows = client
        .query(
            "SELECT file_name, file_size, file_mtime_ns FROM source_files \
             WHERE source = $1 AND file_name = ANY($2) AND state <> 'missing'",
            &[&source, &names],
        )
        .await
        .map_err(err("reading the file registry"))?;
    Ok(rows.iter().map(|r| FileId { name: r.get(0), size: r.get::<_, i64>(1) as u64, mtime_ns: r.get(2) }).collect())
}

/// Registers ready files as pending (a file registered as missing that is
/// back is pending again) and wakes the loaders of every streamer on the
/// source, in one statement ([`REGISTER`], which the registrar prepares
/// once per session): its own transaction, committed without waiting for
/// the disk (lost in a crash, a registration is made again). Returns how
/// many files became pending.
pub async fn register<S>(client: &Client, statement: &S, source: &str, files: &[FileId]) -> Result<u64, RegistryError>
where
    S: ToStatement + ?Sized,
{
    if files.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size as i64).collect();
    let mtimes: Vec<i64> = files.iter().map(|f| f.mtime_ns).collect();
    let n: i64 = client
        .query_one(statement, &[&source, &names, &sizes, &mtimes, &CHANNEL])
        .await
        .map_err(err("registering files"))?
        .get(0);
    Ok(n as u64)
}

/// [`register`]'s statement: `$1` the source, `$2`–`$4` the files' names,
/// sizes and modification times, `$5` the [`CHANNEL`]. Outside a
/// transaction block `set_config(…, true)` holds for the statement's own
/// transaction, so its commit does not wait for the WAL's flush; the
/// notification goes out only when a file became pending.
pub const REGISTER: &str = "WITH registered AS (\
     INSERT INTO source_files (source, file_name, file_size, file_mtime_ns) \
     SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::int8[]) \
     ON CONFLICT (source, file_name, file_size, file_mtime_ns) DO UPDATE SET state = 'pending', reason = NULL \
     WHERE source_files.state = 'missing' RETURNING 1) \
     SELECT c.n, set_config('synchronous_commit', 'off', true), CASE WHEN c.n > 0 THEN pg_notify($5, $1) END \
     FROM (SELECT count(*) AS n FROM registered) c";

/// Registers files that are never to be loaded (`skipped`, with the
/// reason), so that no streamer considers them again.
pub async fn skip(client: &Client, source: &str, files: &[FileId], reason: &str) -> Result<(), RegistryError> {
    if files.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size as i64).collect();
    let mtimes: Vec<i64> = files.iter().map(|f| f.mtime_ns).collect();
    client
        .execute(
            "INSERT INTO source_files (source, file_name, file_size, file_mtime_ns, state, reason, settled_at, disposed_at) \
             SELECT $1, f.*, 'skipped', $5, now(), now() FROM UNNEST($2::text[], $3::int8[], $4::int8[]) AS f \
             ON CONFLICT DO NOTHING",
            &[&source, &names, &sizes, &mtimes, &text(reason)],
        )
        .await
        .map_err(err("registering skipped files"))?;
    Ok(())
}

/// Files of `source` registered and not settled yet (claimed or not).
pub async fn pending(client: &Client, source: &str) -> Result<i64, RegistryError> {
    Ok(client
        .query_one("SELECT count(*) FROM source_files WHERE source = $1 AND state = 'pending'", &[&source])
        .await
        .map_err(err("counting pending files"))?
        .get(0))
}

/// A settled file that is still to be archived, deleted or quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToMove {
    pub file_id: i32,
    pub id: FileId,
    pub quarantined: bool,
    pub reason: Option<String>,
}

/// The disposer's queue: settled files of `source` not yet moved, oldest first.
pub async fn to_move(client: &Client, source: &str, limit: i64) -> Result<Vec<ToMove>, RegistryError> {
    let rows = client
        .query(
            "SELECT file_id, file_name, file_size, file_mtime_ns, state, reason FROM source_files \
             WHERE source = $1 AND disposed_at IS NULL AND state IN ('loaded', 'quarantined') \
             ORDER BY file_id LIMIT $2",
            &[&source, &limit],
        )
        .await
        .map_err(err("reading the files to move"))?;
    Ok(rows
        .iter()
        .map(|r| ToMove {
            file_id: r.get(0),
            id: FileId { name: r.get(1), size: r.get::<_, i64>(2) as u64, mtime_ns: r.get(3) },
            quarantined: r.get::<_, &str>(4) == "quarantined",
            reason: r.get(5),
        })
        .collect())
}

/// Marks files moved (or found gone).
pub async fn moved(client: &Client, file_ids: &[i32]) -> Result<(), RegistryError> {
    client
        .execute("UPDATE source_files SET disposed_at = now() WHERE file_id = ANY($1)", &[&file_ids])
        .await
        .map_err(err("marking files moved"))?;
    Ok(())
}

/// Registers the files a streamer of the release before the registry had
/// loaded (its checkpoint's processed files), as loaded and needing no move,
/// when the registry holds nothing of `source` yet. Returns how many.
pub async fn seed_loaded(client: &mut Client, source: &str, files: &[FileId]) -> Result<u64, RegistryError> {
    let tx = client.transaction().await.map_err(err("seeding the registry"))?;
    let empty: bool = tx
        .query_one("SELECT NOT EXISTS (SELECT 1 FROM source_files WHERE source = $1)", &[&source])
        .await
        .map_err(err("seeding the registry"))?
        .get(0);
    if !empty || files.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size as i64).collect();
    let mtimes: Vec<i64> = files.iter().map(|f| f.mtime_ns).collect();
    let n = tx
        .execute(
            "INSERT INTO source_files (source, file_name, file_size, file_mtime_ns, state, reason, settled_at, disposed_at) \
             SELECT $1, f.*, 'loaded', 'loaded by a streamer before the file registry existed', now(), now() \
             FROM UNNEST($2::text[], $3::int8[], $4::int8[]) AS f ON CONFLICT DO NOTHING",
            &[&source, &names, &sizes, &mtimes],
        )
        .await
        .map_err(err("seeding the registry"))?;
    tx.commit().await.map_err(err("seeding the registry"))?;
    Ok(n)
}

/// What the database knows of a checkpoint's batches: the highest batch id
/// it has committed, if any.
pub async fn last_batch(client: &Client, checkpoint_id: uuid::Uuid) -> Result<Option<u64>, RegistryError> {
    let row = client
        .query_one(
            "SELECT max(batch_id) FROM (SELECT batch_id FROM batches WHERE checkpoint_id = $1 \
             UNION ALL SELECT batch_id FROM load_history WHERE checkpoint_id = $1) b",
            &[&checkpoint_id],
        )
        .await
        .map_err(err("reading the checkpoint's batches"))?;
    Ok(row.get::<_, Option<i64>>(0).map(|b| b as u64))
}

/// Whether the database has batch `batch_id` of the checkpoint.
pub async fn has_batch(client: &Client, checkpoint_id: uuid::Uuid, batch_id: u64) -> Result<bool, RegistryError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM batches WHERE checkpoint_id = $1 AND batch_id = $2) \
                 OR EXISTS (SELECT 1 FROM load_history WHERE checkpoint_id = $1 AND batch_id = $2)",
            &[&checkpoint_id, &(batch_id as i64)],
        )
        .await
        .map_err(err("looking the batch up"))?;
    Ok(row.get(0))
}

/// How many of the files are still pending: a batch that could claim none
/// of its files finds them held by another session's batch (which commits
/// or rolls back, or whose session ends) when this is not zero.
pub async fn count_pending(client: &Client, file_ids: &[i32]) -> Result<i64, RegistryError> {
    let row = client
        .query_one("SELECT count(*) FROM source_files WHERE file_id = ANY($1) AND state = 'pending'", &[&file_ids])
        .await
        .map_err(err("looking the batch's files up"))?;
    Ok(row.get(0))
}

/// Group identities by name (a rewritten file has several).
pub fn by_name(ids: &HashSet<FileId>) -> HashMap<&str, Vec<&FileId>> {
    let mut out: HashMap<&str, Vec<&FileId>> = HashMap::new();
    for id in ids {
        out.entry(id.name.as_str()).or_default().push(id);
    }
    out
}
