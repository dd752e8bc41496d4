//! Operator commands beside the stream: `status`, `reprocess`, `reset`.
//! Each reads the same settings as the stream (`.env`, environment, flags),
//! prints what it found or did, and returns the exit code's meaning as an
//! error: a wrong use is a [`ConfigError`] (exit 2), anything else exit 1.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use runtime::ConfigError;
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::config::{ReprocessArgs, ResetArgs, StateArgs, StatusArgs};
use crate::pg::describe;
use crate::watch::{eligible_name, file_id};

/// What `status` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    pub checkpoint_id: Option<Uuid>,
    pub next_batch: u64,
    pub last_committed_batch: Option<u64>,
    pub pending_batch: Option<u64>,
    pub processed_files: usize,
    /// Files in the data folder not processed yet.
    pub waiting_files: usize,
    pub database: Option<DatabaseStatus>,
    /// Why the database part is missing.
    pub database_error: Option<String>,
}

/// What the database says about this checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatabaseStatus {
    pub events: i64,
    pub files_loaded: i64,
    pub files_quarantined: i64,
    pub files_missing: i64,
    pub rows_rejected: i64,
    pub last_batches: Vec<BatchStatus>,
}

/// One committed batch, from the load history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchStatus {
    pub batch_id: i64,
    pub files: i64,
    pub rows_read: i64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_rejected: i64,
    pub committed_at: chrono::DateTime<chrono::Utc>,
}

/// How many batches `status` lists.
const LAST_BATCHES: i64 = 5;

/// A plain session (no staging tables): for the operator commands.
async fn connect(url: &str) -> Result<Client, String> {
    crate::pg::connect(url, "streamer-ops").await.map_err(|e| describe(&e))
}

fn database_url(state: &StateArgs) -> Result<&str, ConfigError> {
    match state.database_url.as_deref() {
        Some(url) if !url.is_empty() => Ok(url),
        _ => Err(ConfigError::new("--database-url/DATABASE_URL", "is not set")),
    }
}

/// Opens the checkpoint if there is one (never creates it).
fn existing_checkpoint(dir: &Path) -> anyhow::Result<Option<Checkpoint>> {
    if !dir.join("metadata").exists() {
        return Ok(None);
    }
    Ok(Some(Checkpoint::open(dir)?))
}

/// Gathers the status; the database part is left out (with the reason) when
/// it cannot be read.
pub async fn status(args: &StatusArgs) -> anyhow::Result<Status> {
    let state = &args.state;
    let mut out = Status::default();
    let checkpoint = existing_checkpoint(&state.checkpoint_dir)?;
    if let Some(cp) = &checkpoint {
        out.checkpoint_id = Some(cp.id());
        out.next_batch = cp.next_batch_id();
        out.last_committed_batch = cp.last_committed();
        out.pending_batch = cp.pending().map(|p| p.batch_id);
        out.processed_files = cp.tracked_files();
    }
    if let Ok(entries) = std::fs::read_dir(&state.data_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            if eligible_name(&name) && meta.is_file() {
                let id = file_id(&name, &meta);
                if !checkpoint.as_ref().is_some_and(|cp| cp.is_processed(&id)) {
                    out.waiting_files += 1;
                }
            }
        }
    }
    let url = database_url(state)?;
    match connect(url).await {
        Err(e) => out.database_error = Some(format!("cannot connect to PostgreSQL: {e}")),
        Ok(client) => match database_status(&client, out.checkpoint_id).await {
            Ok(db) => out.database = Some(db),
            Err(e) => out.database_error = Some(describe(&e)),
        },
    }
    Ok(out)
}

async fn database_status(client: &Client, id: Option<Uuid>) -> Result<DatabaseStatus, tokio_postgres::Error> {
    let mut db = DatabaseStatus {
        events: client.query_one("SELECT count(*) FROM events", &[]).await?.get(0),
        ..Default::default()
    };
    let Some(id) = id else { return Ok(db) };
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'loaded'), count(*) FILTER (WHERE status = 'quarantined'), \
             count(*) FILTER (WHERE status = 'missing'), coalesce(sum(rows_rejected), 0)::int8 \
             FROM load_history WHERE checkpoint_id = $1",
            &[&id],
        )
        .await?;
    (db.files_loaded, db.files_quarantined, db.files_missing, db.rows_rejected) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    db.last_batches = client
        .query(
            "SELECT batch_id, count(*), sum(rows_read)::int8, sum(rows_inserted)::int8, sum(rows_updated)::int8, \
             sum(rows_rejected)::int8, max(committed_at) FROM load_history WHERE checkpoint_id = $1 \
             GROUP BY batch_id ORDER BY batch_id DESC LIMIT $2",
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
                let pending =
                    self.pending_batch.map_or("none".into(), |b| format!("batch {b} (re-run at the next start)"));
                writeln!(f, "batches      next {}, last committed {last}, pending {pending}", self.next_batch)?;
            }
        }
        writeln!(
            f,
            "files        {} processed, {} waiting in the data folder",
            self.processed_files, self.waiting_files
        )?;
        match (&self.database, &self.database_error) {
            (Some(db), _) => {
                writeln!(f, "events       {} rows", db.events)?;
                writeln!(
                    f,
                    "load history {} files loaded, {} quarantined, {} missing; {} rejected rows",
                    db.files_loaded, db.files_quarantined, db.files_missing, db.rows_rejected
                )?;
                for b in &db.last_batches {
                    writeln!(
                        f,
                        "  batch {:>6}  {:>4} files  {:>9} rows read  {:>9} inserted  {:>8} updated  {:>6} rejected  {}",
                        b.batch_id,
                        b.files,
                        b.rows_read,
                        b.rows_inserted,
                        b.rows_updated,
                        b.rows_rejected,
                        b.committed_at.format("%Y-%m-%d %H:%M:%S UTC")
                    )?;
                }
            }
            (None, Some(e)) => writeln!(f, "database     {e}")?,
            (None, None) => {}
        }
        Ok(())
    }
}

/// Marks the data-folder files matching `args.files` for loading again by
/// moving their modification time to now: a new identity for the stream.
/// Returns the names, sorted.
pub fn reprocess(args: &ReprocessArgs) -> anyhow::Result<Vec<String>> {
    let data = &args.state.data_dir;
    let canonical = data.canonicalize().with_context(|| format!("cannot open the data folder {}", data.display()))?;
    let mut patterns = Vec::new();
    for given in &args.files {
        // A path must lie in the data folder itself; a bare name is a pattern.
        let path = Path::new(given);
        let name = if path.components().count() > 1 {
            let parent = path.parent().and_then(|p| p.canonicalize().ok());
            if parent.as_deref() != Some(canonical.as_path()) {
                return Err(ConfigError::new(
                    "NAME|GLOB",
                    format!("{given} is not in the data folder {}", data.display()),
                )
                .into());
            }
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            given.clone()
        };
        let pattern = glob::Pattern::new(&name).map_err(|e| ConfigError::new("NAME|GLOB", format!("{given}: {e}")))?;
        patterns.push(pattern);
    }
    let mut touched = HashSet::new();
    for entry in std::fs::read_dir(data).with_context(|| format!("cannot list {}", data.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", data.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !eligible_name(&name) || !patterns.iter().any(|p| p.matches(&name)) {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path())?;
        if !meta.is_file() {
            continue;
        }
        let file = std::fs::File::options()
            .write(true)
            .open(entry.path())
            .with_context(|| format!("cannot open {name} to mark it"))?;
        let mut now = SystemTime::now();
        if meta.modified().ok() == Some(now) {
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
    pub tables_truncated: bool,
}

/// Forgets the checkpoint (its folder is emptied, not removed) and, when
/// asked, empties the tables. Refuses while a streamer is connected to the
/// database.
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
        (true, _) => Some(connect(database_url(state)?).await.map_err(anyhow::Error::msg)?),
        (false, Some(url)) if !url.is_empty() => connect(url).await.ok(),
        _ => None,
    };
    if let Some(client) = &client {
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                &[&crate::pg::APPLICATION_NAME],
            )
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))?
            .get(0);
        if running > 0 {
            anyhow::bail!("a streamer is connected to this database ({running} session(s)); stop it first");
        }
    }
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
    if let (true, Some(client)) = (args.truncate_tables, &client) {
        client
            .batch_execute("TRUNCATE events, load_history, rejected_rows, event_metrics_minute, user_category_counts, user_product_counts \
                 RESTART IDENTITY")
            .await
            .map_err(|e| anyhow::anyhow!("cannot truncate the tables: {}", describe(&e)))?;
        out.tables_truncated = true;
    }
    Ok(out)
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Loaded files re-read, and loaded files that could not be (gone from
    /// the data folder, or changed since they were loaded).
    pub files_checked: usize,
    pub files_absent: usize,
    pub files_changed: usize,
    /// Keys the oracle gives, found equal, differing, or missing in `events`.
    pub rows_compared: usize,
    pub rows_equal: usize,
    pub rows_differing: usize,
    pub rows_missing: usize,
    /// Rows of `events` no checked file produced (other checkpoints, files no
    /// longer here).
    pub rows_other: usize,
    /// Up to ten differences, described.
    pub examples: Vec<String>,
}

/// One event as the oracle and the table both give it.
type Key = (i32, i64);
type Values = (String, String, String, i32, String, String, i64);

/// Re-reads the files this checkpoint loaded that are still in the data
/// folder, unchanged, computes the oracle of DESIGN.md over them (for each
/// key the last valid row in load order), and compares it with `events`.
pub async fn verify(state: &StateArgs) -> anyhow::Result<Verification> {
    let cp = existing_checkpoint(&state.checkpoint_dir)?
        .ok_or_else(|| ConfigError::new("--checkpoint-dir/CHECKPOINT_DIR", "holds no checkpoint to verify"))?;
    let client = connect(database_url(state)?).await.map_err(anyhow::Error::msg)?;
    let files = client
        .query(
            "SELECT DISTINCT ON (file_name) file_name, file_size, file_mtime, load_id FROM load_history \
             WHERE checkpoint_id = $1 AND status = 'loaded' ORDER BY file_name, load_id DESC",
            &[&cp.id()],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading the load history: {}", describe(&e)))?;
    let mut files: Vec<(String, i64, chrono::DateTime<chrono::Utc>, i64)> =
        files.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    files.sort_by_key(|f| f.3);

    let mut out = Verification::default();
    let mut oracle: std::collections::HashMap<Key, Values> = std::collections::HashMap::new();
    for (name, size, mtime, _) in &files {
        let path = state.data_dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            out.files_absent += 1;
            continue;
        };
        let id = file_id(name, &meta);
        if id.size as i64 != *size || id.mtime_ns / 1_000 != mtime.timestamp_micros() {
            out.files_changed += 1;
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(part) = crate::batch::read_whole(&bytes, 0) {
            let view = crate::batch::EventView::new(&part.frame)?;
            for (_, r) in (0..view.len()).filter_map(|i| view.row(i)) {
                oracle.insert(
                    (r.user_id, r.event_time_micros),
                    (
                        r.user_name.to_owned(),
                        r.user_email.to_owned(),
                        r.event_type.as_str().to_owned(),
                        r.product_id,
                        r.product_name.to_owned(),
                        r.product_category.to_owned(),
                        r.price_cents,
                    ),
                );
            }
        }
        out.files_checked += 1;
    }
    out.rows_compared = oracle.len();

    let rows = client
        .query(
            "SELECT user_id, (extract(epoch FROM event_time) * 1000000)::int8, user_name, user_email, event_type, \
             product_id, product_name, product_category, (product_price * 100)::int8 FROM events",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading events: {}", describe(&e)))?;
    for r in &rows {
        let key: Key = (r.get(0), r.get(1));
        let values: Values = (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
        match oracle.remove(&key) {
            None => out.rows_other += 1,
            Some(expected) if expected == values => out.rows_equal += 1,
            Some(expected) => {
                out.rows_differing += 1;
                if out.examples.len() < 10 {
                    out.examples.push(format!("user {} at {} µs: table {values:?}, files {expected:?}", key.0, key.1));
                }
            }
        }
    }
    out.rows_missing = oracle.len();
    for (key, expected) in oracle.iter().take(10usize.saturating_sub(out.examples.len())) {
        out.examples.push(format!("user {} at {} µs: missing from the table, files {expected:?}", key.0, key.1));
    }
    Ok(out)
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "files        {} re-read; {} no longer in the data folder, {} changed since loaded (not checked)",
            self.files_checked, self.files_absent, self.files_changed
        )?;
        writeln!(
            f,
            "rows         {} compared: {} equal, {} differing, {} missing; {} other rows in events",
            self.rows_compared, self.rows_equal, self.rows_differing, self.rows_missing, self.rows_other
        )?;
        for e in &self.examples {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}
