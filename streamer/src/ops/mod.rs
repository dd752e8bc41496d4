//! Operator commands beside the stream: `status`, `reprocess`, `reset`,
//! `verify` and `report` ([`report`]). Each reads the same settings as the
//! stream (`.env`, environment, flags), prints what it found or did, and
//! returns the exit code's meaning as an error: a wrong use is a
//! [`ConfigError`] (exit 2), anything else exit 1.

pub mod report;
mod verify;

pub use verify::{verify, Verification};

use std::collections::HashSet;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use runtime::ConfigError;
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::applier::Lag;
use crate::checkpoint::{Checkpoint, FileId};
use crate::config::{ReprocessArgs, ResetArgs, StatusArgs};
use crate::pg::{describe, Target};
use crate::watch::file_id;

/// What `status` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    pub checkpoint_id: Option<Uuid>,
    pub source: String,
    pub next_batch: u64,
    pub last_committed_batch: Option<u64>,
    /// Batches planned and not committed (re-run at the next start).
    pub pending_batches: Vec<u64>,
    /// Event files in the data folder.
    pub files_present: usize,
    pub database: Option<DatabaseStatus>,
    /// Why the database part is missing.
    pub database_error: Option<String>,
}

/// What the database says about the source and this checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatabaseStatus {
    pub events: i64,
    /// Files of the data folder not loaded yet (registered and pending, or not registered).
    pub files_waiting: usize,
    /// Files of the source by state, from the registry.
    pub files_loaded: i64,
    pub files_quarantined: i64,
    pub files_missing: i64,
    pub files_changed: i64,
    pub rows_rejected: i64,
    /// How far the derived tables are behind `events`.
    pub analytics_lag: Lag,
    pub last_batches: Vec<BatchStatus>,
}

/// One committed batch of this checkpoint, from the load history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchStatus {
    pub batch_id: i64,
    pub files: i64,
    pub rows_read: i64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_rejected: i64,
    pub committed_at: chrono::DateTime<chrono::Utc>,
    /// Folded into the derived tables.
    pub applied: bool,
}

/// How many batches `status` lists.
const LAST_BATCHES: i64 = 5;

/// A plain session (no staging tables): for the operator commands.
pub(crate) async fn connect(url: &Target) -> Result<Client, String> {
    crate::pg::connect(url, "streamer-ops").await.map_err(|e| describe(&e))
}

/// The checkpoint if there is one (never creates it). It is locked while
/// open: a command that finds it in use says so.
fn existing_checkpoint(dir: &Path) -> anyhow::Result<Option<Checkpoint>> {
    if !dir.join("metadata").exists() {
        return Ok(None);
    }
    Ok(Some(Checkpoint::open(dir)?))
}

/// What a checkpoint says, read without taking it: the stream may be
/// running.
#[derive(Debug, Default)]
struct CheckpointView {
    id: Option<Uuid>,
    next_batch: u64,
    last_committed: Option<u64>,
    pending: Vec<u64>,
}

fn read_checkpoint(dir: &Path) -> anyhow::Result<CheckpointView> {
    let mut view = CheckpointView::default();
    let Ok(meta) = std::fs::read(dir.join("metadata")) else { return Ok(view) };
    #[derive(serde::Deserialize)]
    struct Meta {
        id: Uuid,
    }
    let meta: Meta =
        serde_json::from_slice(&meta).with_context(|| format!("{}: unreadable metadata", dir.display()))?;
    view.id = Some(meta.id);
    let ids = |sub: &str| -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(dir.join(sub))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    let (offsets, commits) = (ids("offsets"), ids("commits"));
    let committed: HashSet<u64> = commits.iter().copied().collect();
    view.pending = offsets.iter().copied().filter(|n| !committed.contains(n)).collect();
    view.last_committed = commits.last().copied();
    view.next_batch = offsets.iter().chain(&commits).max().map_or(0, |n| n + 1);
    Ok(view)
}

/// The event files in the data folder, by identity.
fn present_files(data: &Path, selection: &crate::select::Selection) -> Vec<FileId> {
    match crate::select::walk(data, selection) {
        Ok(found) => found.files.iter().map(|f| file_id(&f.name, &f.meta)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Gathers the status; the database part is left out (with the reason) when
/// it cannot be read.
pub async fn status(args: &StatusArgs) -> anyhow::Result<Status> {
    let state = &args.state;
    let cp = read_checkpoint(&state.checkpoint_dir)?;
    let present = present_files(&state.data_dir, &state.selection()?);
    let mut out = Status {
        checkpoint_id: cp.id,
        source: state.source()?,
        next_batch: cp.next_batch,
        last_committed_batch: cp.last_committed,
        pending_batches: cp.pending,
        files_present: present.len(),
        ..Status::default()
    };
    let url = state.url()?;
    match connect(&url).await {
        Err(e) => out.database_error = Some(format!("cannot connect to PostgreSQL: {e}")),
        Ok(client) => match database_status(&client, &out.source, out.checkpoint_id, &present).await {
            Ok(db) => out.database = Some(db),
            Err(e) => out.database_error = Some(describe(&e)),
        },
    }
    Ok(out)
}

async fn database_status(
    client: &Client,
    source: &str,
    id: Option<Uuid>,
    present: &[FileId],
) -> Result<DatabaseStatus, tokio_postgres::Error> {
    let mut db = DatabaseStatus {
        events: client.query_one("SELECT count(*) FROM events", &[]).await?.get(0),
        analytics_lag: crate::applier::lag(client).await?,
        ..Default::default()
    };
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'loaded'), count(*) FILTER (WHERE state = 'quarantined'), \
             count(*) FILTER (WHERE state = 'missing'), count(*) FILTER (WHERE state = 'changed') \
             FROM source_files WHERE source = $1",
            &[&source],
        )
        .await?;
    (db.files_loaded, db.files_quarantined, db.files_missing, db.files_changed) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let names: Vec<&str> = present.iter().map(|f| f.name.as_str()).collect();
    let settled: HashSet<(String, i64, i64)> = client
        .query(
            "SELECT file_name, file_size, file_mtime_ns FROM source_files \
             WHERE source = $1 AND file_name = ANY($2) AND state NOT IN ('pending', 'missing')",
            &[&source, &names],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    db.files_waiting =
        present.iter().filter(|f| !settled.contains(&(f.name.clone(), f.size as i64, f.mtime_ns))).count();
    let Some(id) = id else { return Ok(db) };
    db.rows_rejected = client
        .query_one("SELECT coalesce(sum(rows_rejected), 0)::int8 FROM load_history WHERE checkpoint_id = $1", &[&id])
        .await?
        .get(0);
    db.last_batches = client
        .query(
            "SELECT h.batch_id, count(*), sum(h.rows_read)::int8, sum(h.rows_inserted)::int8, sum(h.rows_updated)::int8, \
             sum(h.rows_rejected)::int8, max(h.committed_at), bool_and(b.applied_at IS NOT NULL) \
             FROM load_history h LEFT JOIN batches b ON b.batch_seq = h.batch_seq WHERE h.checkpoint_id = $1 \
             GROUP BY h.batch_id ORDER BY h.batch_id DESC LIMIT $2",
            &[&id, &LAST_BATCHES],
        )
        .await?
        .iter()
        .map(|r| BatchStatus {
            batch_id: r.get(0),
            files: r.get(1),
            rows_read: r.get(2),
            rows_inserted: r.get(3),
            rows_updated: r.get(4),
            rows_rejected: r.get(5),
            committed_at: r.get(6),
            applied: r.get::<_, Option<bool>>(7).unwrap_or(false),
        })
        .collect();
    Ok(db)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.checkpoint_id {
            None => writeln!(f, "checkpoint   none yet (the stream has not run with this checkpoint folder)")?,
            Some(id) => {
                writeln!(f, "checkpoint   {id}")?;
                let last = self.last_committed_batch.map_or("none".into(), |b| b.to_string());
                let pending = if self.pending_batches.is_empty() {
                    "none".to_owned()
                } else {
                    let ids: Vec<String> = self.pending_batches.iter().map(u64::to_string).collect();
                    format!("{} (re-run at the next start)", ids.join(", "))
                };
                writeln!(f, "batches      next {}, last committed {last}, pending {pending}", self.next_batch)?;
            }
        }
        writeln!(f, "source       {}", self.source)?;
        match (&self.database, &self.database_error) {
            (Some(db), _) => {
                writeln!(f, "files        {} in the data folder, {} waiting", self.files_present, db.files_waiting)?;
                writeln!(f, "events       {} rows", db.events)?;
                writeln!(
                    f,
                    "registry     {} files loaded, {} quarantined, {} missing, {} changed; {} rejected rows (this checkpoint)",
                    db.files_loaded, db.files_quarantined, db.files_missing, db.files_changed, db.rows_rejected
                )?;
                writeln!(
                    f,
                    "analytics    {} batches behind ({:.1} s)",
                    db.analytics_lag.batches, db.analytics_lag.seconds
                )?;
                for b in &db.last_batches {
                    writeln!(
                        f,
                        "  batch {:>6}  {:>4} files  {:>9} rows read  {:>9} inserted  {:>8} updated  {:>6} rejected  {}  {}",
                        b.batch_id,
                        b.files,
                        b.rows_read,
                        b.rows_inserted,
                        b.rows_updated,
                        b.rows_rejected,
                        b.committed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        if b.applied { "applied" } else { "not applied yet" }
                    )?;
                }
            }
            (None, Some(e)) => {
                writeln!(f, "files        {} in the data folder", self.files_present)?;
                writeln!(f, "database     {e}")?;
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// Marks the data-folder files matching `args.files` for loading again by
/// moving their modification time to now: a new identity, and the newest in
/// the file order (their rows win over older ones). Returns the names, sorted.
pub fn reprocess(args: &ReprocessArgs) -> anyhow::Result<Vec<String>> {
    let data = &args.state.data_dir;
    let canonical = data.canonicalize().with_context(|| format!("cannot open the data folder {}", data.display()))?;
    let selection = args.state.selection()?;
    let mut patterns = Vec::new();
    for given in &args.files {
        // A path must lie in the data folder; a bare name or one relative
        // to the folder is a pattern (matched against the file's name and
        // its path in the folder).
        let path = Path::new(given);
        let name = if path.is_absolute() || given.starts_with("./") || given.starts_with("../") {
            let parent = path.parent().and_then(|p| p.canonicalize().ok());
            let inside = parent.as_deref().and_then(|p| p.strip_prefix(&canonical).ok());
            let Some(inside) = inside else {
                return Err(ConfigError::new(
                    "NAME|GLOB",
                    format!("{given} is not in the data folder {}", data.display()),
                )
                .into());
            };
            let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let joined = inside.join(glob::Pattern::escape(&file));
            joined.to_string_lossy().into_owned()
        } else {
            given.clone()
        };
        let pattern = glob::Pattern::new(&name).map_err(|e| ConfigError::new("NAME|GLOB", format!("{given}: {e}")))?;
        patterns.push(pattern);
    }
    let mut touched = HashSet::new();
    let found = crate::select::walk(data, &selection).with_context(|| format!("cannot list {}", data.display()))?;
    for f in found.files {
        let base = f.name.rsplit('/').next().unwrap_or(&f.name);
        if !patterns.iter().any(|p| p.matches(&f.name) || p.matches(base)) {
            continue;
        }
        let name = f.name;
        let file = std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&f.path)
            .with_context(|| format!("cannot open {name} to mark it"))?;
        let mut now = SystemTime::now();
        if f.meta.modified().ok() == Some(now) {
            now += std::time::Duration::from_micros(1);
        }
        file.set_modified(now).with_context(|| format!("cannot change the modification time of {name}"))?;
        touched.insert(name);
    }
    if touched.is_empty() {
        anyhow::bail!("no event file in {} matches {}", data.display(), args.files.join(" "));
    }
    let mut names: Vec<String> = touched.into_iter().collect();
    names.sort();
    Ok(names)
}

/// What `reset` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reset {
    pub checkpoint_id: Option<Uuid>,
    /// Registry entries of the source forgotten: its files load again.
    pub files_forgotten: u64,
    pub tables_truncated: bool,
}

/// The tables `reset --truncate-tables` empties.
pub const TABLES: &str = "events, source_files, batches, load_history, rejected_rows, metrics_delta, counters_delta, \
                          analytics_rows, event_metrics_minute, user_category_counts, user_product_counts";

/// Forgets the checkpoint (its folder is emptied, not removed) and the
/// source's files in the registry (the next start loads every file in the
/// data folder again, upserting), and, when asked, empties the tables.
/// Refuses while a streamer is connected to the database.
pub async fn reset(args: &ResetArgs) -> anyhow::Result<Reset> {
    if !args.yes {
        return Err(ConfigError::new(
            "--yes",
            "is required: reset forgets which files were loaded (and --truncate-tables deletes every row)",
        )
        .into());
    }
    let state = &args.state;
    let mut out = Reset::default();
    let client = match (args.truncate_tables, state.database_url.as_deref()) {
        (true, _) => Some(connect(&state.url()?).await.map_err(anyhow::Error::msg)?),
        (false, Some(url)) if !url.is_empty() => match state.url() {
            Ok(target) => connect(&target).await.ok(),
            Err(_) => None,
        },
        _ => None,
    };
    if let Some(client) = &client {
        // A streamer that has just stopped leaves its sessions for a moment
        // (the server ends them once it notices): look again for up to 3 s.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let running = loop {
            let running: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                    &[&crate::pg::APPLICATION_NAME],
                )
                .await
                .map_err(|e| anyhow::anyhow!(describe(&e)))?
                .get(0);
            if running == 0 || std::time::Instant::now() >= patience {
                break running;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if running > 0 {
            anyhow::bail!("a streamer is connected to this database ({running} session(s)); stop it first");
        }
    }
    // Taking the checkpoint also proves no streamer uses the folder.
    if let Some(cp) = existing_checkpoint(&state.checkpoint_dir)? {
        out.checkpoint_id = Some(cp.id());
    }
    if let Ok(entries) = std::fs::read_dir(&state.checkpoint_dir) {
        for entry in entries {
            let path = entry?.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    if let Some(client) = &client {
        if args.truncate_tables {
            client
                .batch_execute(&format!("TRUNCATE {TABLES} RESTART IDENTITY"))
                .await
                .map_err(|e| anyhow::anyhow!("cannot truncate the tables: {}", describe(&e)))?;
            out.tables_truncated = true;
        } else {
            out.files_forgotten = client
                .execute("DELETE FROM source_files WHERE source = $1", &[&state.source()?])
                .await
                .map_err(|e| anyhow::anyhow!("cannot forget the source's files: {}", describe(&e)))?;
        }
    }
    Ok(out)
}
