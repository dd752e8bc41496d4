//! PostgreSQL: the schema in `db/` applied at start, and each batch committed
//! in ONE transaction — binary COPY into a temporary staging table, one
//! set-based `INSERT … ON CONFLICT DO UPDATE … WHERE` the row changed, the
//! rejected rows, and one load-history row per file. Nothing of a batch is
//! visible before COMMIT; a dropped transaction rolls back.
//!
//! Errors are sorted by what the caller should do: [`SinkError::is_transient`]
//! (connection lost, serialization failure, deadlock, server shutting down)
//! means "retry the same batch"; anything else is reported as it is.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use polars::prelude::DataFrame;
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

use contract::COLUMNS;

use crate::batch::{EventView, Rejected};
use crate::checkpoint::FileId;
use crate::pg::describe;

/// The schema files, in order, compiled into the binary.
pub const MIGRATIONS: [(&str, &str); 4] = [
    ("db/001_events.sql", include_str!("../../db/001_events.sql")),
    ("db/002_load_history.sql", include_str!("../../db/002_load_history.sql")),
    ("db/003_analytics.sql", include_str!("../../db/003_analytics.sql")),
    ("db/004_reports.sql", include_str!("../../db/004_reports.sql")),
];

/// Serialises schema changes between streamers starting at once.
const SCHEMA_LOCK: i64 = 0x6576_656e_7473;

/// Serialises the merge and the analytics upkeep of batches committing at
/// once (streamers on several data folders, one database): each batch then
/// sees the rows the one before it committed, so the deltas are exact.
/// Staging still runs side by side.
const ANALYTICS_LOCK: i64 = 0x006d_6574_7269_6373;

/// A PostgreSQL failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to PostgreSQL: {}", describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("applying {file} failed: {}", describe(.source))]
    Schema { file: &'static str, source: tokio_postgres::Error },
    #[error("{what} failed: {}", describe(.source))]
    Query { what: &'static str, source: tokio_postgres::Error },
    #[error("the batch frame does not have the batch schema: {0}")]
    Frame(#[from] polars::error::PolarsError),
}

/// The key that makes loading one batch twice impossible.
pub const BATCH_FILE_KEY: &str = "load_history_batch_file_key";

impl SinkError {
    /// True when the load history already holds this batch: a COMMIT that
    /// went through although its answer was lost.
    pub fn is_batch_already_loaded(&self) -> bool {
        self.source().and_then(|e| e.as_db_error()).is_some_and(|db| db.constraint() == Some(BATCH_FILE_KEY))
    }

    fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SinkError {
        move |source| SinkError::Query { what, source }
    }

    fn source(&self) -> Option<&tokio_postgres::Error> {
        match self {
            SinkError::Connect(e) | SinkError::Schema { source: e, .. } | SinkError::Query { source: e, .. } => Some(e),
            SinkError::Frame(_) => None,
        }
    }

    /// True when retrying the same work later may succeed: the connection is
    /// gone or the server asked for a retry.
    pub fn is_transient(&self) -> bool {
        let Some(e) = self.source() else { return false };
        if matches!(self, SinkError::Connect(_)) || e.is_closed() {
            return true;
        }
        match e.code() {
            // No SQLSTATE: an I/O or protocol failure on the connection.
            None => true,
            Some(code) => {
                let code = code.code();
                code.starts_with("08") // connection exception
                    || code.starts_with("53") // insufficient resources (too many connections, disk full)
                    || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "57014")
            }
        }
    }
}

/// Connects and prepares the session: the staging table lives as long as the
/// connection and is emptied at every commit.
pub async fn connect(url: &str) -> Result<Client, SinkError> {
    let client = crate::pg::connect(url, crate::pg::APPLICATION_NAME).await.map_err(SinkError::Connect)?;
    client.batch_execute(STAGE_DDL).await.map_err(SinkError::query("preparing the session"))?;
    Ok(client)
}

/// Applies `db/*.sql` in order in one transaction, under an advisory lock.
/// `window_secs` is the width of the metrics windows (see
/// [`set_metrics_window`]); `None` turns the analytics off (emptied, and
/// rebuilt at the next start that has them on).
pub async fn apply_schema(client: &mut Client, window_secs: Option<i32>) -> Result<(), SinkError> {
    let tx = client.transaction().await.map_err(SinkError::query("starting the schema transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(SinkError::query("taking the schema lock"))?;
    // "relation … already exists, skipping" is the expected case, not news.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(SinkError::query("applying the schema"))?;
    for (file, sql) in MIGRATIONS {
        tx.batch_execute(sql).await.map_err(|source| SinkError::Schema { file, source })?;
    }
    // No batch of another streamer may commit in between.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ANALYTICS_LOCK])
        .await
        .map_err(SinkError::query("taking the analytics lock"))?;
    match window_secs {
        Some(secs) => set_metrics_window(&tx, secs).await?,
        None => {
            tx.batch_execute(
                "DELETE FROM analytics_settings; \
                 TRUNCATE event_metrics_minute, user_category_counts, user_product_counts",
            )
            .await
            .map_err(SinkError::query("turning the analytics off"))?;
            tracing::warn!(
                "analytics off: event_metrics_minute and the counters are emptied and not kept; \
                 the next start with them on builds them from events"
            );
        }
    }
    tx.commit().await.map_err(SinkError::query("committing the schema"))
}

/// Records the metrics window width; builds the analytics tables from
/// `events` when they are new (a database of an older version) and rebuilds
/// the windowed metrics when the width changed.
async fn set_metrics_window(tx: &tokio_postgres::Transaction<'_>, window_secs: i32) -> Result<(), SinkError> {
    let stored: Option<i32> = tx
        .query_opt("SELECT window_seconds FROM analytics_settings", &[])
        .await
        .map_err(SinkError::query("reading the analytics settings"))?
        .map(|r| r.get(0));
    if stored == Some(window_secs) {
        return Ok(());
    }
    let started = Instant::now();
    tx.execute(
        "INSERT INTO analytics_settings (window_seconds) VALUES ($1) \
         ON CONFLICT (id) DO UPDATE SET window_seconds = EXCLUDED.window_seconds",
        &[&window_secs],
    )
    .await
    .map_err(SinkError::query("writing the analytics settings"))?;
    let rebuild = match stored {
        None => REBUILD_ALL_SQL.as_str(),
        Some(old) => {
            tracing::warn!(
                old_secs = old,
                new_secs = window_secs,
                "the metrics window width changed; rebuilding event_metrics_minute from events"
            );
            REBUILD_METRICS_SQL.as_str()
        }
    };
    tx.batch_execute(rebuild).await.map_err(SinkError::query("building the analytics tables from events"))?;
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(window_secs, ms, "analytics tables built from events");
    Ok(())
}

/// The windowed metrics of every event, as `event_metrics_minute` holds them.
const METRICS_OF_EVENTS: &str = "INSERT INTO event_metrics_minute \
     SELECT metrics_window(event_time), product_category, count(*) FILTER (WHERE event_type = 'view'), \
     count(*) FILTER (WHERE event_type = 'purchase'), count(DISTINCT user_id), \
     coalesce(sum(product_price) FILTER (WHERE event_type = 'purchase'), 0) FROM events GROUP BY 1, 2";

static REBUILD_METRICS_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("TRUNCATE event_metrics_minute; {METRICS_OF_EVENTS}"));

static REBUILD_ALL_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}; TRUNCATE user_category_counts; INSERT INTO user_category_counts \
         SELECT user_id, product_category, count(*) FILTER (WHERE event_type = 'view'), \
         count(*) FILTER (WHERE event_type = 'purchase') FROM events GROUP BY 1, 2; \
         TRUNCATE user_product_counts; INSERT INTO user_product_counts \
         SELECT user_id, product_id, count(*) FILTER (WHERE event_type = 'view'), \
         count(*) FILTER (WHERE event_type = 'purchase') FROM events GROUP BY 1, 2",
        *REBUILD_METRICS_SQL
    )
});

/// One file of a committed batch, as the load history has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFile {
    pub name: String,
    pub status: String,
    pub reason: Option<String>,
}

/// The load-history rows of batch `batch_id` of checkpoint `id`: empty when
/// the database does not have the batch.
pub async fn committed_files(client: &Client, id: Uuid, batch_id: u64) -> Result<Vec<HistoryFile>, SinkError> {
    let rows = client
        .query(
            "SELECT file_name, status, reason FROM load_history WHERE checkpoint_id = $1 AND batch_id = $2 ORDER BY load_id",
            &[&id, &(batch_id as i64)],
        )
        .await
        .map_err(SinkError::query("looking up the load history"))?;
    Ok(rows.iter().map(|r| HistoryFile { name: r.get(0), status: r.get(1), reason: r.get(2) }).collect())
}

/// Run once per session. A COMMIT the streamer writes a marker for must be
/// durable whatever the server's default (`synchronous_commit = off` would
/// let a server crash forget a batch the checkpoint calls done). JIT is off:
/// the batch statements' cost estimates (a temporary table has no
/// statistics) trigger it, and compiling them took about 200 ms a batch,
/// eight times the rest of a 1 500-row batch's upkeep.
const STAGE_DDL: &str = "SET synchronous_commit = on; SET jit = off; CREATE TEMP TABLE IF NOT EXISTS events_stage (
    chunk INTEGER NOT NULL,
    file_index INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    user_name TEXT NOT NULL,
    user_email TEXT NOT NULL,
    event_type TEXT NOT NULL,
    product_id INTEGER NOT NULL,
    product_name TEXT NOT NULL,
    product_category TEXT NOT NULL,
    product_price NUMERIC(10,2) NOT NULL,
    event_time TIMESTAMPTZ NOT NULL
) ON COMMIT DELETE ROWS; CREATE TEMP TABLE IF NOT EXISTS events_delta (
    user_id INTEGER NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    event_type TEXT NOT NULL,
    product_id INTEGER NOT NULL,
    product_category TEXT NOT NULL,
    product_price NUMERIC(10,2) NOT NULL,
    sign INTEGER NOT NULL
) ON COMMIT DELETE ROWS";

/// Column types of `events_stage`, in order.
const STAGE_TYPES: [Type; 11] = [
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
];

/// The columns the analytics tables depend on, of a changed row.
const DELTA_COLS: &str = "e.user_id, e.event_time, e.event_type, e.product_id, e.product_category, e.product_price";

/// `INSERT … SELECT … ON CONFLICT … DO UPDATE … WHERE` the row changed, from
/// the staging table into `events`, in key order for index locality; returns
/// per staged file the rows kept after deduplication, inserted and updated.
/// Every row it changed goes into `events_delta`: the new values with sign
/// +1 and, for an update, the old ones with -1 (read by the same statement,
/// whose snapshot still holds them).
/// With one chunk the stage holds unique keys already; with several, the row
/// of the latest chunk wins (`DISTINCT ON`), each chunk being unique within.
/// Indexed by `[analytics][several chunks]`.
static MERGE_SQL: std::sync::LazyLock<[[String; 2]; 2]> = std::sync::LazyLock::new(|| {
    [[merge_sql(false, false), merge_sql(true, false)], [merge_sql(false, true), merge_sql(true, true)]]
});

/// The merge; with `analytics` it also records the changed rows in `events_delta`.
pub fn merge_sql(several_chunks: bool, analytics: bool) -> String {
    let cols = COLUMNS.join(", ");
    let others: Vec<&str> = COLUMNS.iter().copied().filter(|c| !matches!(*c, "user_id" | "event_time")).collect();
    let set = others.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", ");
    let old = others.iter().map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
    let new = others.iter().map(|c| format!("EXCLUDED.{c}")).collect::<Vec<_>>().join(", ");
    let (latest, source) = if several_chunks {
        (
            "latest AS (SELECT DISTINCT ON (user_id, event_time) * FROM events_stage \
             ORDER BY user_id, event_time, chunk DESC), ",
            "latest",
        )
    } else {
        ("", "events_stage")
    };
    let delta = if analytics {
        format!(
            ", replaced AS (SELECT {DELTA_COLS} FROM events e JOIN merged m USING (user_id, event_time) WHERE NOT m.inserted), \
             delta AS (INSERT INTO events_delta SELECT {DELTA_COLS}, 1 FROM merged e \
             UNION ALL SELECT {DELTA_COLS}, -1 FROM replaced e)"
        )
    } else {
        String::new()
    };
    format!(
        "WITH {latest}merged AS (INSERT INTO events AS e ({cols}) SELECT {cols} FROM {source} ORDER BY user_id, event_time \
         ON CONFLICT (user_id, event_time) DO UPDATE SET {set} WHERE ({old}) IS DISTINCT FROM ({new}) \
         RETURNING {DELTA_COLS}, (e.xmax = 0) AS inserted){delta} \
         SELECT s.file_index, count(*), count(*) FILTER (WHERE m.inserted), count(*) FILTER (WHERE NOT m.inserted) \
         FROM {source} s LEFT JOIN merged m USING (user_id, event_time) GROUP BY s.file_index"
    )
}

/// Brings the analytics tables up to the batch's changes (`events_delta`),
/// by exact deltas: each changed row adds its new values and takes its old
/// ones away. Counter pairs and metric cells left at zero are deleted.
/// Distinct users of a cell change by, per user with changed rows there:
/// [has rows now] − [had rows before], where "now" is counted in `events`
/// (one probe of the `(user_id, event_time)` index) and "before" is now
/// minus the user's net change. The cost follows the batch, not the size of
/// the windows it touches. (`date_bin` with the width read once, as
/// `metrics_window` computes it: calling that SQL function per row costs
/// several times more.)
static ANALYTICS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let counters = ["product_category", "product_id"].map(|key| {
        let table = if key == "product_id" { "user_product_counts" } else { "user_category_counts" };
        format!(
            "INSERT INTO {table} AS c (user_id, {key}, views, purchases) \
                 SELECT user_id, {key}, coalesce(sum(sign) FILTER (WHERE event_type = 'view'), 0), \
                        coalesce(sum(sign) FILTER (WHERE event_type = 'purchase'), 0) \
                 FROM events_delta GROUP BY 1, 2 HAVING sum(sign) FILTER (WHERE event_type = 'view') <> 0 \
                     OR sum(sign) FILTER (WHERE event_type = 'purchase') <> 0 ORDER BY 1, 2 \
                 ON CONFLICT (user_id, {key}) DO UPDATE \
                 SET views = c.views + EXCLUDED.views, purchases = c.purchases + EXCLUDED.purchases; \
             DELETE FROM {table} c USING events_delta d \
                 WHERE d.sign < 0 AND c.user_id = d.user_id AND c.{key} = d.{key} \
                   AND c.views = 0 AND c.purchases = 0; "
        )
    });
    format!("{}{}{WINDOW_METRICS_SQL}", counters[0], counters[1])
});

/// The windowed metrics' part of [`ANALYTICS_SQL`].
const WINDOW_METRICS_SQL: &str = "\
INSERT INTO event_metrics_minute AS m (window_start, product_category, views, purchases, users, revenue) \
    SELECT window_start, product_category, sum(views), sum(purchases), sum(users), sum(revenue) FROM ( \
        SELECT g.window_start, g.product_category, g.views, g.purchases, g.revenue, \
               (a.after > 0)::int - (a.after - g.net > 0)::int AS users \
        FROM (SELECT date_bin(s.width, d.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS window_start, s.width, \
                     d.product_category, d.user_id, sum(d.sign) AS net, \
                     coalesce(sum(d.sign) FILTER (WHERE d.event_type = 'view'), 0) AS views, \
                     coalesce(sum(d.sign) FILTER (WHERE d.event_type = 'purchase'), 0) AS purchases, \
                     coalesce(sum(d.sign * d.product_price) FILTER (WHERE d.event_type = 'purchase'), 0) AS revenue \
              FROM events_delta d, (SELECT make_interval(secs => window_seconds) AS width FROM analytics_settings) s \
              GROUP BY 1, 2, 3, 4) g, \
        LATERAL (SELECT count(*) AS after FROM events e WHERE e.user_id = g.user_id \
                 AND e.event_time >= g.window_start AND e.event_time < g.window_start + g.width \
                 AND e.product_category = g.product_category) a \
    ) x GROUP BY 1, 2 \
    HAVING sum(views) <> 0 OR sum(purchases) <> 0 OR sum(users) <> 0 OR sum(revenue) <> 0 ORDER BY 1, 2 \
    ON CONFLICT (window_start, product_category) DO UPDATE \
    SET views = m.views + EXCLUDED.views, purchases = m.purchases + EXCLUDED.purchases, \
        users = m.users + EXCLUDED.users, revenue = m.revenue + EXCLUDED.revenue; \
DELETE FROM event_metrics_minute m \
    USING (SELECT DISTINCT date_bin(s.width, d.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS window_start, \
                  d.product_category \
           FROM events_delta d, (SELECT make_interval(secs => window_seconds) AS width FROM analytics_settings) s \
           WHERE d.sign < 0) t \
    WHERE m.window_start = t.window_start AND m.product_category = t.product_category \
      AND m.views = 0 AND m.purchases = 0";

const HISTORY_SQL: &str = "INSERT INTO load_history (checkpoint_id, batch_id, file_name, file_size, file_mtime, status, reason, \
     rows_read, rows_inserted, rows_updated, rows_unchanged, rows_duplicate, rows_rejected, reingest, batch_started_at, committed_at) \
     SELECT $1, $2, f.*, $15, clock_timestamp() \
     FROM UNNEST($3::text[], $4::int8[], $5::timestamptz[], $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], \
                 $11::int8[], $12::int8[], $13::int8[], $14::bool[]) AS f";

const REJECTED_COPY: &str =
    "COPY rejected_rows (checkpoint_id, batch_id, file_name, line_number, raw_line, reason) FROM STDIN (FORMAT binary)";

/// How a file of a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Loaded,
    Quarantined,
    Missing,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Loaded => "loaded",
            FileStatus::Quarantined => "quarantined",
            FileStatus::Missing => "missing",
        }
    }
}

/// One file of a batch as the load history records it.
#[derive(Debug, Clone)]
pub struct FileLoad {
    pub file: FileId,
    pub status: FileStatus,
    pub reason: Option<String>,
    pub rows_read: u64,
    /// Rows that lost to a later row of their own chunk.
    pub duplicates: u64,
    pub rejected: u64,
    pub reingest: bool,
}

/// What identifies a batch in the load history.
#[derive(Debug, Clone)]
pub struct BatchMeta {
    pub checkpoint_id: Uuid,
    pub batch_id: u64,
    pub started_at: DateTime<Utc>,
    /// File names by their index in the batch.
    pub names: Vec<String>,
    /// Keep the analytics tables (`--analytics`).
    pub analytics: bool,
}

/// What committing a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Per file of the batch: rows that lost to a later row with the same
    /// key, rows inserted, updated, and rows whose key already held exactly
    /// these values.
    pub duplicates: Vec<u64>,
    pub inserted: Vec<u64>,
    pub updated: Vec<u64>,
    pub unchanged: Vec<u64>,
    /// Time from the first staged row to the merge's end, then committing.
    pub load: Duration,
    pub commit: Duration,
}

fn micros_to_utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A batch being loaded: ONE transaction that chunks are staged into, then
/// merged, recorded and committed by [`Loader::finish`]. Dropped before
/// that, it rolls back.
#[allow(missing_debug_implementations)] // a Transaction has no Debug
pub struct Loader<'a> {
    tx: tokio_postgres::Transaction<'a>,
    meta: &'a BatchMeta,
    chunks: i32,
    staged: Vec<u64>,
    started: Instant,
}

impl<'a> Loader<'a> {
    pub async fn begin(client: &'a mut Client, meta: &'a BatchMeta) -> Result<Loader<'a>, SinkError> {
        let tx = client.transaction().await.map_err(SinkError::query("starting the batch transaction"))?;
        Ok(Loader { tx, meta, chunks: 0, staged: vec![0; meta.names.len()], started: Instant::now() })
    }

    /// Stages the rows of one chunk (batch schema, unique keys) by binary COPY.
    pub async fn stage(&mut self, frame: &DataFrame) -> Result<(), SinkError> {
        let view = EventView::new(frame)?;
        if view.is_empty() {
            return Ok(());
        }
        let chunk = self.chunks;
        self.chunks += 1;
        let sink = self
            .tx
            .copy_in("COPY events_stage FROM STDIN (FORMAT binary)")
            .await
            .map_err(SinkError::query("staging the rows"))?;
        let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
        pin_mut!(writer);
        for i in 0..view.len() {
            let Some((file_index, r)) = view.row(i) else { break };
            if let Some(n) = self.staged.get_mut(file_index as usize) {
                *n += 1;
            }
            let file_index = file_index as i32;
            let event_type = r.event_type.as_str();
            let price = Decimal::new(r.price_cents, 2);
            let time = micros_to_utc(r.event_time_micros);
            let row: [&(dyn ToSql + Sync); 11] = [
                &chunk,
                &file_index,
                &r.user_id,
                &r.user_name,
                &r.user_email,
                &event_type,
                &r.product_id,
                &r.product_name,
                &r.product_category,
                &price,
                &time,
            ];
            writer.as_mut().write(&row).await.map_err(SinkError::query("staging the rows"))?;
        }
        writer.finish().await.map_err(SinkError::query("staging the rows"))?;
        Ok(())
    }

    /// Records rejected rows, in the same transaction.
    pub async fn reject(&mut self, rejected: &[Rejected]) -> Result<(), SinkError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let sink = self.tx.copy_in(REJECTED_COPY).await.map_err(SinkError::query("recording rejected rows"))?;
        let writer =
            BinaryCopyInWriter::new(sink, &[Type::UUID, Type::INT8, Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT]);
        pin_mut!(writer);
        let batch_id = self.meta.batch_id as i64;
        for r in rejected {
            let name = self.meta.names.get(r.file_index as usize).map_or("", String::as_str);
            let line = r.line as i64;
            writer
                .as_mut()
                .write(&[&self.meta.checkpoint_id, &batch_id, &name, &line, &r.raw, &r.reason])
                .await
                .map_err(SinkError::query("recording rejected rows"))?;
        }
        writer.finish().await.map_err(SinkError::query("recording rejected rows"))?;
        Ok(())
    }

    /// Merges the staged rows into `events`, records the load history of
    /// `files` (in batch order) and commits.
    pub async fn finish(self, files: &[FileLoad]) -> Result<Committed, SinkError> {
        let Loader { tx, meta, chunks, staged, started } = self;
        let n = files.len();
        let mut out = Committed {
            duplicates: files.iter().map(|f| f.duplicates).collect(),
            inserted: vec![0; n],
            updated: vec![0; n],
            ..Committed::default()
        };
        if chunks > 0 {
            if chunks > 1 {
                // Planner statistics for a stage too big to guess.
                tx.batch_execute("ANALYZE events_stage").await.map_err(SinkError::query("analyzing the stage"))?;
            }
            if meta.analytics {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ANALYTICS_LOCK])
                    .await
                    .map_err(SinkError::query("taking the analytics lock"))?;
            }
            let sql = &MERGE_SQL[usize::from(meta.analytics)][usize::from(chunks > 1)];
            for row in tx.query(sql.as_str(), &[]).await.map_err(SinkError::query("merging into events"))? {
                let (file, kept, inserted, updated): (i32, i64, i64, i64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let i = file as usize;
                if i < n {
                    out.duplicates[i] += staged[i].saturating_sub(kept as u64);
                    out.inserted[i] = inserted as u64;
                    out.updated[i] = updated as u64;
                }
            }
            if meta.analytics {
                tx.batch_execute(ANALYTICS_SQL.as_str())
                    .await
                    .map_err(SinkError::query("updating the metrics and counters"))?;
            }
        }

        let col =
            |f: &dyn Fn(usize, &FileLoad) -> i64| files.iter().enumerate().map(|(i, x)| f(i, x)).collect::<Vec<i64>>();
        let names: Vec<&str> = files.iter().map(|f| f.file.name.as_str()).collect();
        let sizes = col(&|_, f| f.file.size as i64);
        let mtimes: Vec<DateTime<Utc>> =
            files.iter().map(|f| DateTime::from_timestamp_nanos(f.file.mtime_ns)).collect();
        let statuses: Vec<&str> = files.iter().map(|f| f.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = files.iter().map(|f| f.reason.as_deref()).collect();
        let read = col(&|_, f| f.rows_read as i64);
        let inserted = col(&|i, _| out.inserted[i] as i64);
        let updated = col(&|i, _| out.updated[i] as i64);
        out.unchanged = files
            .iter()
            .enumerate()
            .map(|(i, f)| f.rows_read.saturating_sub(out.duplicates[i] + f.rejected + out.inserted[i] + out.updated[i]))
            .collect();
        let unchanged = col(&|i, _| out.unchanged[i] as i64);
        let duplicates = col(&|i, _| out.duplicates[i] as i64);
        let rejected = col(&|_, f| f.rejected as i64);
        let reingest: Vec<bool> = files.iter().map(|f| f.reingest).collect();
        tx.execute(
            HISTORY_SQL,
            &[
                &meta.checkpoint_id,
                &(meta.batch_id as i64),
                &names,
                &sizes,
                &mtimes,
                &statuses,
                &reasons,
                &read,
                &inserted,
                &updated,
                &unchanged,
                &duplicates,
                &rejected,
                &reingest,
                &meta.started_at,
            ],
        )
        .await
        .map_err(SinkError::query("recording the load history"))?;
        out.load = started.elapsed();

        let committing = Instant::now();
        tx.commit().await.map_err(SinkError::query("committing the batch"))?;
        out.commit = committing.elapsed();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sql_is_the_exact_statement() {
        let cols = "user_id, user_name, user_email, event_type, product_id, product_name, product_category, product_price, event_time";
        let tail = "ON CONFLICT (user_id, event_time) DO UPDATE SET user_name = EXCLUDED.user_name, user_email = EXCLUDED.user_email, event_type = EXCLUDED.event_type, \
             product_id = EXCLUDED.product_id, product_name = EXCLUDED.product_name, product_category = EXCLUDED.product_category, product_price = EXCLUDED.product_price \
             WHERE (e.user_name, e.user_email, e.event_type, e.product_id, e.product_name, e.product_category, e.product_price) \
             IS DISTINCT FROM (EXCLUDED.user_name, EXCLUDED.user_email, EXCLUDED.event_type, EXCLUDED.product_id, EXCLUDED.product_name, EXCLUDED.product_category, EXCLUDED.product_price) \
             RETURNING e.user_id, e.event_time, e.event_type, e.product_id, e.product_category, e.product_price, (e.xmax = 0) AS inserted), \
             replaced AS (SELECT e.user_id, e.event_time, e.event_type, e.product_id, e.product_category, e.product_price FROM events e \
             JOIN merged m USING (user_id, event_time) WHERE NOT m.inserted), \
             delta AS (INSERT INTO events_delta SELECT e.user_id, e.event_time, e.event_type, e.product_id, e.product_category, e.product_price, 1 FROM merged e \
             UNION ALL SELECT e.user_id, e.event_time, e.event_type, e.product_id, e.product_category, e.product_price, -1 FROM replaced e) \
             SELECT s.file_index, count(*), count(*) FILTER (WHERE m.inserted), count(*) FILTER (WHERE NOT m.inserted) FROM";
        assert_eq!(
            merge_sql(false, true),
            format!(
                "WITH merged AS (INSERT INTO events AS e ({cols}) SELECT {cols} FROM events_stage ORDER BY user_id, event_time {tail} \
                 events_stage s LEFT JOIN merged m USING (user_id, event_time) GROUP BY s.file_index"
            )
        );
        assert_eq!(
            merge_sql(true, true),
            format!(
                "WITH latest AS (SELECT DISTINCT ON (user_id, event_time) * FROM events_stage ORDER BY user_id, event_time, chunk DESC), \
                 merged AS (INSERT INTO events AS e ({cols}) SELECT {cols} FROM latest ORDER BY user_id, event_time {tail} \
                 latest s LEFT JOIN merged m USING (user_id, event_time) GROUP BY s.file_index"
            )
        );
    }

    #[test]
    fn without_analytics_the_merge_records_no_delta() {
        for several in [false, true] {
            let (with, without) = (merge_sql(several, true), merge_sql(several, false));
            assert!(with.contains("INSERT INTO events_delta") && !without.contains("events_delta"));
            let tail = |sql: &str| sql[sql.find(" SELECT s.file_index").unwrap_or_default()..].to_owned();
            assert_eq!(tail(&with), tail(&without), "the same per-file counts");
        }
    }

    #[test]
    fn migrations_are_numbered_in_order_and_idempotent_by_construction() {
        let names: Vec<&str> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, sql) in MIGRATIONS {
            let code: String =
                sql.lines().map(|l| l.split("--").next().unwrap_or_default()).collect::<Vec<_>>().join(" ");
            for stmt in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                assert!(
                    stmt.contains("IF NOT EXISTS") || stmt.starts_with("CREATE OR REPLACE"),
                    "{name}: a statement is not idempotent: {stmt}"
                );
            }
        }
    }
}
