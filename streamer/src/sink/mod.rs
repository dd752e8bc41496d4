//! PostgreSQL's side of a batch: ONE transaction ([`Loader`]) that claims
//! the batch's files in the registry (`FOR UPDATE SKIP LOCKED`), stages its
//! rows by binary COPY, merges them into `events` by source position,
//! records the rejected rows, the batch's contribution to the derived tables
//! (for the applier), the load history, the files' new state and the
//! batch's own row, and commits. Nothing of a batch is visible before COMMIT;
//! a dropped transaction rolls back and releases the claims.
//!
//! - [`schema`]: the migrations of `db/`, applied once each;
//! - [`sql`]: the statements;
//! - [`lock`]: the advisory locks the streamers coordinate with.

pub mod lock;
mod recent;
pub use recent::RecentKeys;
pub mod schema;
mod settle;
pub mod sql;

pub use settle::{committed_files, HistoryFile};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use postgres_protocol::types::{array_to_sql, int4_to_sql, text_to_sql, ArrayDimension};
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, Statement, Transaction};
use uuid::Uuid;

use crate::batch::aggregate::{BatchCounters, Pair};
use crate::batch::{Chunk, Deltas, EventView, FileOutcome, FileSummary};
use crate::checkpoint::FileId;
use crate::pg::{classify, describe, text, ErrorClass};
use recent::BatchKeys;

/// A PostgreSQL failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{what} failed: {}", describe(.source))]
    Query { what: &'static str, source: tokio_postgres::Error },
    #[error("the batch frame does not have the batch schema: {0}")]
    Frame(#[from] polars::error::PolarsError),
    #[error("all {0} stage slots of the Citus database are held by other loader sessions")]
    Slots(i32),
    #[error(
        "a file of the same modification time as one of the batch's files, and earlier in the file order, was \
         registered while the batch ran: the batch runs again so that its rows are ordered after that file's"
    )]
    FileOrderChanged,
}

impl SinkError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SinkError {
        move |source| SinkError::Query { what, source }
    }

    /// The batch's reader ended without its chunks (`why`).
    pub(crate) fn reader(why: impl Into<String>) -> SinkError {
        SinkError::Frame(polars::error::PolarsError::ComputeError(why.into().into()))
    }

    pub fn pg(&self) -> Option<&tokio_postgres::Error> {
        match self {
            SinkError::Query { source, .. } => Some(source),
            SinkError::Frame(_) | SinkError::Slots(_) | SinkError::FileOrderChanged => None,
        }
    }

    /// What the error tells the caller to do (a frame that does not match
    /// is a bug: fatal; every stage slot held: try later, sessions end).
    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Slots(_) | SinkError::FileOrderChanged => ErrorClass::Transient,
            _ => self.pg().map_or(ErrorClass::Fatal, classify),
        }
    }

    /// True when this batch is in the database already: a COMMIT that went
    /// through although its answer was lost.
    pub fn is_batch_already_committed(&self) -> bool {
        self.pg()
            .and_then(|e| e.as_db_error())
            .is_some_and(|db| db.constraint() == Some("batches_checkpoint_batch_key"))
    }
}

/// What identifies a batch.
#[derive(Debug, Clone)]
pub struct BatchMeta {
    pub checkpoint_id: Uuid,
    pub batch_id: u64,
    /// The data folder's id in the registry.
    pub source: String,
    pub started_at: DateTime<Utc>,
    /// The metrics window width the batch's deltas are cut by.
    pub window_seconds: i32,
    /// Take the [`lock::COMMIT_FENCE`] for the COMMIT (on Citus); the
    /// caller releases it with [`release_fence`] once `finish` returned.
    pub fence: bool,
    /// The most (user, key) pairs of counters the batch merges in memory
    /// (16 bytes each) before it writes them out; see [`BatchCounters`].
    pub counters_cap: usize,
}

/// Which files a batch takes.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The oldest pending files, at most `files`, until `bytes` is reached.
    Next { files: i32, bytes: i64 },
    /// These files, those of them still pending (a batch run again).
    Files(Vec<i32>),
}

/// A file a batch claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Its registry id.
    pub file_id: i32,
    pub id: FileId,
    /// Another version of the file (same name) was loaded before.
    pub reingest: bool,
}

/// One file of a committed batch, as the load history records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLoad {
    pub file: Claimed,
    pub outcome: FileOutcome,
    pub rows_read: u64,
    pub inserted: u64,
    /// Stored rows replaced with other values.
    pub updated: u64,
    /// Rows whose key already held these values (their position moved on).
    pub unchanged: u64,
    /// Rows that lost to a later row of the same key: in the batch, or
    /// stored with a newer position.
    pub duplicates: u64,
    pub rejected: u64,
}

/// What committing a batch did.
#[derive(Debug, Clone)]
pub struct Committed {
    pub batch_seq: i64,
    pub files: Vec<FileLoad>,
    /// Time from the first staged row to the merge's end, then committing.
    pub load: Duration,
    pub commit: Duration,
    /// When the COMMIT returned: the batch's rows are queryable from then.
    pub committed_at: DateTime<Utc>,
    /// Chunks copied straight into `events`, and chunks staged and merged
    /// (whole, or only their rows whose key was stored: `rows_merged`).
    pub chunks_inserted: u32,
    pub chunks_merged: u32,
    pub rows_merged: u64,
    /// Keys looked up in `events` to split chunks (none when the streamer's
    /// recent keys told which were stored).
    pub keys_looked_up: u64,
}

/// A loader session's staging table: its own TEMP table on PostgreSQL; on
/// Citus a distributed table co-located with `events` (TEMP tables cannot
/// be distributed), one per stage slot, which the session holds by the
/// advisory lock [`lock::STAGE_SLOT`] for its lifetime.
#[derive(Debug)]
pub struct Stage {
    table: String,
    distributed: bool,
    /// On Citus, the merge of a batch of several chunks at once (PostgreSQL
    /// merges each chunk as it is staged).
    merge_several: Option<String>,
    /// The statements every batch runs, prepared once for the session.
    prepared: Prepared,
    /// When the session's batches try a chunk straight into `events`.
    turns: InsertTurns,
    /// The keys the streamer's loader sessions committed lately (shared
    /// by them: [`Stage::with_recent_keys`]), and when this session's
    /// batches split a chunk by them instead of looking its keys up (the
    /// same doubling pause as `turns` after a key they did not know was
    /// stored).
    recent: Arc<RecentKeys>,
    hints: InsertTurns,
}

/// When a loader session tries a chunk straight into `events` (COPY, as
/// `psql \copy` does) before staging and merging it. The try fails as soon
/// as one key of the chunk is stored already, and the work done until then
/// is lost; so after a batch met a stored key, its later chunks are merged,
/// and so are the session's next 1, 2, 4 … 32 batches (doubling while
/// batches keep meeting stored keys: a replay of old files pays for one
/// failed try in 33 batches). A chunk that went in straight ends the
/// penalty.
#[derive(Debug, Default)]
struct InsertTurns {
    /// Batches still to merge without trying.
    skip: AtomicU32,
    /// How many the next stored key makes skip.
    penalty: AtomicU32,
}

/// At most this many batches are merged without a try after a stored key.
const MAX_INSERT_PENALTY: u32 = 32;

impl InsertTurns {
    /// Whether a new batch tries its chunks straight into `events`.
    fn take(&self) -> bool {
        self.skip.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err()
    }

    fn inserted(&self) {
        self.penalty.store(0, Ordering::Relaxed);
    }

    fn met_stored_key(&self) {
        let penalty = (self.penalty.load(Ordering::Relaxed) * 2).clamp(1, MAX_INSERT_PENALTY);
        self.penalty.store(penalty, Ordering::Relaxed);
        self.skip.store(penalty, Ordering::Relaxed);
    }
}

/// Which rows of a chunk a COPY writes, by a chunk's flags of stored keys.
#[derive(Debug, Clone, Copy)]
enum Pick<'s> {
    All,
    /// The rows whose key is not stored.
    Fresh(&'s [bool]),
    /// The rows whose key is stored.
    Stored(&'s [bool]),
}

impl Pick<'_> {
    fn has(&self, i: usize) -> bool {
        match self {
            Pick::All => true,
            Pick::Fresh(stored) => !stored.get(i).copied().unwrap_or(false),
            Pick::Stored(stored) => stored.get(i).copied().unwrap_or(false),
        }
    }
}

/// How [`Loader::split`] left a chunk.
#[derive(Debug)]
enum Split {
    /// None of its keys was stored: all of it went in straight.
    Inserted,
    /// Its fresh rows went in straight; these (flags by row) are to merge.
    Stored(Vec<bool>),
}

/// Pairs per `counters_delta` row: about 1.5 kB of arrays, under the size
/// at which PostgreSQL compresses them and moves them to the TOAST table
/// (db/011).
pub const COUNTERS_PART: usize = 64;

/// The most rows of a chunk merged from bound arrays ([`Loader::merge_rows`]):
/// the rows of a split chunk whose key is stored, usually a few re-sent
/// ones. More go through the stage (a COPY, then the merge).
pub const MERGE_ROWS_MAX: usize = 1024;

/// Rows bound as one array per column, in [`sql::rows_source`]'s order.
#[derive(Debug, Default)]
struct BoundRows<'r> {
    file_index: Vec<i32>,
    line: Vec<i32>,
    user_id: Vec<i32>,
    user_name: Vec<&'r str>,
    user_email: Vec<&'r str>,
    event_type: Vec<&'static str>,
    product_id: Vec<i32>,
    product_name: Vec<&'r str>,
    product_category: Vec<&'r str>,
    price: Vec<Decimal>,
    time: Vec<DateTime<Utc>>,
    rescued: Vec<Option<&'r str>>,
}

impl<'r> BoundRows<'r> {
    fn push(&mut self, file_index: i32, line: i32, r: &contract::Event<'r>, rescued: Option<&'r str>) {
        let values = Values::of(r);
        self.file_index.push(file_index);
        self.line.push(line);
        self.user_id.push(r.user_id);
        self.user_name.push(r.user_name);
        self.user_email.push(r.user_email);
        self.event_type.push(values.event_type);
        self.product_id.push(r.product_id);
        self.product_name.push(r.product_name);
        self.product_category.push(r.product_category);
        self.price.push(values.price);
        self.time.push(values.time);
        self.rescued.push(rescued);
    }

    fn arrays(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.file_index,
            &self.line,
            &self.user_id,
            &self.user_name,
            &self.user_email,
            &self.event_type,
            &self.product_id,
            &self.product_name,
            &self.product_category,
            &self.price,
            &self.time,
            &self.rescued,
        ]
    }
}

/// The values a row's contract columns are bound as, beside the row's own.
struct Values {
    event_type: &'static str,
    price: Decimal,
    time: DateTime<Utc>,
}

impl Values {
    fn of(r: &contract::Event<'_>) -> Values {
        Values {
            event_type: r.event_type.as_str(),
            price: Decimal::new(r.price_cents, 2),
            time: micros_to_utc(r.event_time_micros),
        }
    }

    /// The row's contract columns, in `COLUMNS` order.
    fn cells<'r>(&'r self, r: &'r contract::Event<'_>) -> [&'r (dyn ToSql + Sync); 9] {
        [
            &r.user_id,
            &r.user_name,
            &r.user_email,
            &self.event_type,
            &r.product_id,
            &r.product_name,
            &r.product_category,
            &self.price,
            &self.time,
        ]
    }
}

/// JSON text bound as `jsonb` (its binary form: a version byte, then the
/// text), for the straight COPY into `events`. The reader wrote it.
#[derive(Debug)]
struct JsonbText<'a>(&'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The statements of every batch, prepared when the session opens: a
/// statement sent as text is prepared again each time, a round trip of its
/// own (about a tenth of a millisecond each on a local server, a dozen per
/// batch). PostgreSQL plans a prepared statement again by itself when a
/// table it reads changes.
#[derive(Debug)]
struct Prepared {
    claim_next: Statement,
    claim_files: Statement,
    number: Statement,
    copy: Statement,
    insert: Statement,
    stored: Statement,
    file_order: Statement,
    merge_one: Statement,
    lost: Statement,
    merge_rows: Statement,
    lost_rows: Statement,
    rejected: Statement,
    metrics: Statement,
    counters: Statement,
    replaced: Statement,
    settle: Statement,
    history: Statement,
    batch: Statement,
}

impl Stage {
    /// The session shares these recent keys with the streamer's other
    /// loader sessions (a re-sent row was often committed by another).
    pub fn with_recent_keys(self, recent: Arc<RecentKeys>) -> Stage {
        Stage { recent, ..self }
    }

    async fn temp(client: &Client) -> Result<Stage, tokio_postgres::Error> {
        Stage::new(client, "events_stage".into(), false).await
    }

    async fn new(client: &Client, table: String, distributed: bool) -> Result<Stage, tokio_postgres::Error> {
        let prepared = Prepared {
            claim_next: client.prepare(&claim_next_sql()).await?,
            claim_files: client.prepare(&claim_files_sql()).await?,
            number: client.prepare("SELECT nextval(pg_get_serial_sequence('batches', 'batch_seq'))").await?,
            copy: client.prepare(&sql::stage_copy(&table)).await?,
            insert: client.prepare(&sql::insert_copy()).await?,
            stored: client.prepare(sql::STORED_KEYS).await?,
            file_order: client.prepare(&sql::same_time_older()).await?,
            merge_one: client.prepare(&sql::merge_sql(&table, distributed, false)).await?,
            lost: client.prepare(&sql::lost_sql(&table)).await?,
            merge_rows: client.prepare(&sql::merge_rows_sql(&STAGE_TYPES[1..])).await?,
            lost_rows: client.prepare(&sql::lost_rows_sql(&STAGE_TYPES[1..])).await?,
            rejected: client.prepare(sql::REJECTED_COPY).await?,
            metrics: client.prepare(sql::METRICS_COPY).await?,
            counters: client.prepare(sql::COUNTERS_COPY).await?,
            replaced: client.prepare(sql::REPLACED_PER_FILE).await?,
            settle: client.prepare(sql::SETTLE).await?,
            history: client.prepare(sql::HISTORY).await?,
            batch: client.prepare(sql::BATCH).await?,
        };
        Ok(Stage {
            merge_several: distributed.then(|| sql::merge_sql(&table, true, true)),
            table,
            distributed,
            prepared,
            turns: InsertTurns::default(),
            recent: Arc::default(),
            hints: InsertTurns::default(),
        })
    }
}

/// A batch being loaded: ONE transaction that its files are claimed in and
/// its chunks staged into and merged (on PostgreSQL each chunk as soon as
/// it is staged, so that the server's merge of one chunk overlaps the read
/// of the next; on Citus the whole batch at the end), then recorded and
/// committed by [`Loader::finish`]. Dropped before that, it rolls back.
#[allow(missing_debug_implementations)] // a Transaction has no Debug
pub struct Loader<'a> {
    tx: Transaction<'a>,
    stage: &'a Stage,
    meta: BatchMeta,
    batch_seq: i64,
    files: Vec<Claimed>,
    /// The files' registry ids and modification times, by index: the
    /// merge's `$1` and `$2`.
    ids: Vec<i32>,
    mtimes: Vec<i64>,
    /// The file order between the batch's files and older files of their
    /// times, read with the claim ([`sql::OLDER_OF_SAME_TIME`]): the merges' `$3`.
    order: Vec<i64>,
    /// Some staged row lost to a stored one: the file order is read again
    /// before the COMMIT (`settle::same_file_order`).
    lost_some: bool,
    chunks: i32,
    /// This batch tries its next chunk straight into `events`
    /// ([`InsertTurns`]; never on Citus, whose stage holds the batch).
    insert: bool,
    /// This batch splits chunks by the streamer's recent keys
    /// ([`RecentKeys`]) before it looks keys up.
    hint: bool,
    /// The batch's keys, for the streamer's recent keys once it commits.
    keys: BatchKeys,
    keys_looked_up: u64,
    /// The TEMP stage holds a merged chunk, to empty before the next.
    stage_used: bool,
    chunks_inserted: u32,
    chunks_merged: u32,
    rows_merged: u64,
    /// Rows staged per file.
    staged: Vec<u64>,
    /// Rows inserted and rows written over a stored row, per file, by the
    /// merges so far.
    written: Vec<(u64, u64)>,
    started: Instant,
    first_stage: bool,
    /// The chunks' counters, merged until they are written.
    counters: BatchCounters,
    /// The batch's writes of its counters so far.
    flushes: i32,
}

/// A claimed file: its identity, whether another version of its name was
/// loaded, and the file order between it and the older files of its
/// modification time ([`sql::OLDER_OF_SAME_TIME`]): read with the claim, so
/// that the first merge does not wait for a statement of its own (planned
/// again every time: about 0.35 ms of the server's time, a round trip
/// besides).
const CLAIM_COLUMNS: &str = "f.file_id, f.file_name, f.file_size, f.file_mtime_ns, \
     EXISTS (SELECT 1 FROM source_files o WHERE o.source = f.source AND o.file_name = f.file_name \
             AND o.file_id <> f.file_id AND o.state = 'loaded')";

/// The claim of the oldest pending files of source `$1`, at most `$2`,
/// until their sizes reach `$3`.
fn claim_next_sql() -> String {
    format!("SELECT {CLAIM_COLUMNS}, {} FROM claim_source_files($1, $2, $3) f", sql::OLDER_OF_SAME_TIME)
}

/// The claim of a batch's planned files (`$1`) that are still pending.
fn claim_files_sql() -> String {
    format!(
        "SELECT {CLAIM_COLUMNS}, {} FROM source_files f WHERE f.file_id = ANY($1) AND f.state = 'pending' \
         ORDER BY f.file_mtime_ns, f.file_name COLLATE \"C\", f.file_id FOR UPDATE OF f SKIP LOCKED",
        sql::OLDER_OF_SAME_TIME
    )
}

impl<'a> Loader<'a> {
    /// Begins the batch's transaction and claims its files (possibly none:
    /// then [`Loader::files`] is empty and the caller rolls back).
    /// `stage` is the session's ([`prepare_loader_session`]).
    pub async fn begin(
        client: &'a mut Client,
        stage: &'a Stage,
        meta: BatchMeta,
        claim: Claim,
    ) -> Result<Loader<'a>, SinkError> {
        let tx = client.transaction().await.map_err(SinkError::query("starting the batch transaction"))?;
        let prepared = &stage.prepared;
        let rows = match &claim {
            Claim::Next { files, bytes } => tx.query(&prepared.claim_next, &[&meta.source, files, bytes]).await,
            Claim::Files(ids) => tx.query(&prepared.claim_files, &[ids]).await,
        }
        .map_err(SinkError::query("claiming files"))?;
        let files: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                file_id: r.get(0),
                id: FileId { name: r.get(1), size: r.get::<_, i64>(2) as u64, mtime_ns: r.get(3) },
                reingest: r.get(4),
            })
            .collect();
        let ids: Vec<i32> = files.iter().map(|f| f.file_id).collect();
        let mtimes = files.iter().map(|f| f.id.mtime_ns).collect();
        let order = rows.iter().flat_map(|r| r.get::<_, Vec<i64>>(5)).collect();
        let (staged, written) = (vec![0; files.len()], vec![(0, 0); files.len()]);
        Ok(Loader {
            tx,
            stage,
            meta,
            batch_seq: 0,
            files,
            ids,
            mtimes,
            order,
            lost_some: false,
            chunks: 0,
            insert: false,
            hint: false,
            keys: BatchKeys::default(),
            keys_looked_up: 0,
            stage_used: false,
            chunks_inserted: 0,
            chunks_merged: 0,
            rows_merged: 0,
            staged,
            written,
            started: Instant::now(),
            first_stage: true,
            counters: BatchCounters::default(),
            flushes: 0,
        })
    }

    /// Numbers the batch (`batches.batch_seq`) once it claimed files, before
    /// it stages any: the loader runs this while the plan is written (the
    /// two do not depend on each other, and neither touches `events`).
    pub async fn number(&mut self) -> Result<(), SinkError> {
        if self.files.is_empty() || self.batch_seq != 0 {
            return Ok(());
        }
        let what = "numbering the batch";
        let seq: i64 =
            self.tx.query_one(&self.stage.prepared.number, &[]).await.map_err(SinkError::query(what))?.get(0);
        // The trigger on events reads them: the batch, and its files (a
        // row one of them wrote is the batch's own, which a later chunk
        // writes over). SET LOCAL (not set_config) so that Citus sends
        // them on to the workers, where the trigger runs on the shards
        // (on plain PostgreSQL the citus. setting is an unused
        // placeholder). Numbers only: nothing to quote.
        let list = self.ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        self.tx
            .batch_execute(&format!(
                "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL pipeline.batch_seq = '{seq}'; \
                 SET LOCAL pipeline.batch_files = '{{{list}}}'"
            ))
            .await
            .map_err(SinkError::query(what))?;
        self.batch_seq = seq;
        Ok(())
    }

    /// The claimed files, oldest first.
    pub fn files(&self) -> &[Claimed] {
        &self.files
    }

    pub fn meta(&self) -> &BatchMeta {
        &self.meta
    }

    /// Numbers the batch once it is planned (its files are claimed first).
    pub fn set_batch_id(&mut self, batch_id: u64) {
        self.meta.batch_id = batch_id;
    }

    /// Gives the claims back.
    pub async fn rollback(self) -> Result<(), SinkError> {
        self.tx.rollback().await.map_err(SinkError::query("rolling the batch back"))
    }

    /// Stages one chunk: its rows (batch schema, unique keys), its rejected
    /// rows and its deltas (awaited last: the reader computes them
    /// meanwhile), each by binary COPY.
    pub async fn stage(&mut self, chunk: &mut Chunk) -> Result<(), SinkError> {
        if self.first_stage {
            // The load phase starts here: the claim, the plan and the read
            // of the first chunk are phases of their own.
            self.first_stage = false;
            self.started = Instant::now();
            // Taken here, not at the claim: an idle loader's empty claims
            // would use the skipped turns up.
            self.insert = !self.stage.distributed && self.stage.turns.take();
            self.hint = !self.stage.distributed && !self.stage.recent.is_empty() && self.stage.hints.take();
            self.number().await?;
        }
        self.stage_rows(chunk).await?;
        self.reject(chunk).await?;
        let deltas = match (&mut chunk.deltas).await {
            Ok(deltas) => deltas?,
            Err(_) => return Err(SinkError::reader("the batch reader stopped before it aggregated the chunk")),
        };
        self.record_deltas(&deltas).await
    }

    async fn stage_rows(&mut self, chunk: &Chunk) -> Result<(), SinkError> {
        let view = EventView::new(&chunk.frame)?;
        if view.is_empty() {
            return Ok(());
        }
        let n = self.chunks;
        self.chunks += 1;
        let mut rows = vec![0u64; self.files.len()];
        if !self.stage.distributed {
            self.keys.note(&view);
        }
        // A chunk with a key the streamer committed lately would fail its
        // try straight in: it is split by those keys instead.
        let hinted = if self.hint { self.stage.recent.flags(&view) } else { None };
        if self.insert && hinted.is_none() {
            if self.insert_rows(&view, Pick::All, &mut rows).await? {
                self.count_inserted(&rows);
                self.went_straight();
                return Ok(());
            }
            // A key of the chunk is stored: it and the batch's later
            // chunks are split.
            self.stage.turns.met_stored_key();
            self.insert = false;
            rows.fill(0);
        }
        let stored = if self.stage.distributed { None } else { self.split(&view, hinted, &mut rows).await? };
        let pick = match &stored {
            Some(Split::Inserted) => return Ok(()),
            Some(Split::Stored(stored)) => Pick::Stored(stored),
            None => Pick::All,
        };
        if let Pick::Stored(stored) = pick {
            if stored.iter().filter(|&&s| s).count() <= MERGE_ROWS_MAX {
                return self.merge_rows(&view, pick, &mut rows).await;
            }
        }
        if self.stage_used {
            // The last chunk staged is merged: its rows are in events.
            self.tx.batch_execute("TRUNCATE events_stage").await.map_err(SinkError::query("emptying the stage"))?;
        }
        self.stage_used = !self.stage.distributed;
        self.chunks_merged += 1;
        let what = "staging the rows";
        let sink = self.tx.copy_in(&self.stage.prepared.copy).await.map_err(SinkError::query(what))?;
        let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
        pin_mut!(writer);
        for i in (0..view.len()).filter(|&i| pick.has(i)) {
            let Some((file_index, line, r)) = counted_row(&view, i, &mut rows) else { break };
            // The reader rejects rows past `MAX_LINE`: the line fits.
            let (file_index, line) = (file_index as i32, line as i32);
            let values = Values::of(&r);
            let [a, b, c, d, e, f, g, h, k] = values.cells(&r);
            let rescued = view.rescued(i);
            let row: [&(dyn ToSql + Sync); 13] = [&n, &file_index, &line, a, b, c, d, e, f, g, h, k, &rescued];
            writer.as_mut().write(&row).await.map_err(SinkError::query(what))?;
        }
        writer.finish().await.map_err(SinkError::query(what))?;
        for (staged, count) in self.staged.iter_mut().zip(&rows) {
            *staged += count;
        }
        let count: u64 = rows.iter().sum();
        self.rows_merged += count;
        if !self.stage.distributed {
            self.merge_chunk(count).await?;
        }
        Ok(())
    }

    /// A chunk that will not try straight into `events` as a whole (a key
    /// of it or of a recent batch was stored): its rows whose key is not
    /// stored are copied straight in all the same, which is COPY's work
    /// instead of the merge's (a re-sent row is one of many in new data),
    /// and only the others are left to stage and merge. `None`: merge it
    /// all (every key is stored, or another session stored one of the
    /// fresh keys meanwhile: its straight COPY failed and left nothing).
    ///
    /// Which keys are stored: `hinted`, the rows whose key the streamer
    /// committed lately, when it has some; else, or when a key it did not
    /// know was stored (its straight COPY failed), a look-up in `events`.
    async fn split(
        &mut self,
        view: &EventView<'_>,
        hinted: Option<Vec<bool>>,
        rows: &mut [u64],
    ) -> Result<Option<Split>, SinkError> {
        if let Some(stored) = hinted {
            if !stored.contains(&false) {
                return Ok(None);
            }
            if self.insert_rows(view, Pick::Fresh(&stored), rows).await? {
                self.stage.hints.inserted();
                self.count_inserted(rows);
                rows.fill(0);
                return Ok(Some(Split::Stored(stored)));
            }
            rows.fill(0);
            self.stage.hints.met_stored_key();
            self.hint = false;
        }
        let (users, times): (Vec<i32>, Vec<DateTime<Utc>>) =
            (0..view.len()).filter_map(|i| view.key(i)).map(|(user, time)| (user, micros_to_utc(time))).unzip();
        let found = self
            .tx
            .query(&self.stage.prepared.stored, &[&users, &times])
            .await
            .map_err(SinkError::query("finding the chunk's stored keys"))?;
        self.keys_looked_up += users.len() as u64;
        let mut stored = vec![false; view.len()];
        for row in &found {
            if let Some(s) = usize::try_from(row.get::<_, i32>(0)).ok().and_then(|i| stored.get_mut(i)) {
                *s = true;
            }
        }
        if found.len() >= view.len() {
            return Ok(None);
        }
        if !self.insert_rows(view, Pick::Fresh(&stored), rows).await? {
            rows.fill(0);
            return Ok(None);
        }
        self.count_inserted(rows);
        rows.fill(0);
        if found.is_empty() {
            self.went_straight();
            return Ok(Some(Split::Inserted));
        }
        Ok(Some(Split::Stored(stored)))
    }

    /// A whole chunk went straight into `events`: it ends the penalty.
    fn went_straight(&mut self) {
        self.stage.turns.inserted();
        self.chunks_inserted += 1;
    }

    /// Counts rows copied straight into `events` (`rows`, per file) as
    /// staged and inserted.
    fn count_inserted(&mut self, rows: &[u64]) {
        for (i, count) in rows.iter().enumerate() {
            self.staged[i] += count;
            self.written[i].0 += count;
        }
    }

    /// Tries the chunk's rows `pick` straight into `events` (binary COPY,
    /// under a savepoint), counting them per file into `rows`: false when
    /// one of their keys is stored already (then nothing of them stays).
    ///
    /// The savepoint goes out with the COPY (one round trip) and is not
    /// released: the next chunk's of the same name hides it, a rollback
    /// goes to the latest, and the COMMIT ends them all.
    async fn insert_rows(&mut self, view: &EventView<'_>, pick: Pick<'_>, rows: &mut [u64]) -> Result<bool, SinkError> {
        let what = "inserting the rows";
        let (savepoint, copied) =
            tokio::join!(self.tx.batch_execute("SAVEPOINT chunk_insert"), self.copy_into_events(view, pick, rows));
        savepoint.map_err(SinkError::query(what))?;
        match copied {
            Ok(()) => Ok(true),
            Err(e) if is_stored_key(&e) => {
                let undo = "undoing a chunk that met a stored key";
                self.tx.batch_execute("ROLLBACK TO SAVEPOINT chunk_insert").await.map_err(SinkError::query(undo))?;
                Ok(false)
            }
            Err(e) => Err(SinkError::Query { what, source: e }),
        }
    }

    async fn copy_into_events(
        &self,
        view: &EventView<'_>,
        pick: Pick<'_>,
        rows: &mut [u64],
    ) -> Result<(), tokio_postgres::Error> {
        let sink = self.tx.copy_in(&self.stage.prepared.insert).await?;
        let writer = BinaryCopyInWriter::new(sink, &INSERT_TYPES);
        pin_mut!(writer);
        for i in (0..view.len()).filter(|&i| pick.has(i)) {
            let Some((file_index, line, r)) = counted_row(view, i, rows) else { break };
            let (file_id, mtime) = match (self.ids.get(file_index as usize), self.mtimes.get(file_index as usize)) {
                (Some(&id), Some(&mtime)) => (id, mtime),
                // Every row's file is one of the batch's: not reached.
                _ => (0, 0),
            };
            let line = line as i32;
            let values = Values::of(&r);
            let [a, b, c, d, e, f, g, h, k] = values.cells(&r);
            let rescued = view.rescued(i).map(JsonbText);
            let row: [&(dyn ToSql + Sync); 13] = [a, b, c, d, e, f, g, h, k, &mtime, &file_id, &line, &rescued];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await.map(drop)
    }

    /// Merges the chunk's rows `pick` (at most [`MERGE_ROWS_MAX`]) into
    /// `events` from arrays bound to the merge ([`sql::merge_rows_sql`])
    /// instead of through the stage, counting them per file into `rows`:
    /// one statement where the stage takes a COPY and the merge.
    async fn merge_rows(&mut self, view: &EventView<'_>, pick: Pick<'_>, rows: &mut [u64]) -> Result<(), SinkError> {
        let mut bound = BoundRows::default();
        for i in (0..view.len()).filter(|&i| pick.has(i)) {
            let Some((file_index, line, r)) = counted_row(view, i, rows) else { break };
            // The reader rejects rows past `MAX_LINE`: the line fits.
            bound.push(file_index as i32, line as i32, &r, view.rescued(i));
        }
        for (staged, count) in self.staged.iter_mut().zip(rows.iter()) {
            *staged += count;
        }
        let count = bound.file_index.len() as u64;
        self.chunks_merged += 1;
        self.rows_merged += count;
        let prepared = &self.stage.prepared;
        self.merge(&prepared.merge_rows, &prepared.lost_rows, &bound.arrays(), count).await
    }

    /// Merges the chunk just staged (`rows` rows, unique keys) into
    /// `events` and counts what it wrote, per file.
    async fn merge_chunk(&mut self, rows: u64) -> Result<(), SinkError> {
        let prepared = &self.stage.prepared;
        self.merge(&prepared.merge_one, &prepared.lost, &[], rows).await
    }

    /// Runs a merge of `rows` rows (`merge`: the batch's file ids,
    /// modification times and file order, then `source`, the rows' own
    /// parameters if they are bound) and counts what it wrote, per file;
    /// when some row lost to a newer stored one, `lost` (the file ids and
    /// the batch, then `source`) records it, so that the applier takes its
    /// Polars deltas back.
    async fn merge(
        &mut self,
        merge: &Statement,
        lost: &Statement,
        source: &[&(dyn ToSql + Sync)],
        rows: u64,
    ) -> Result<(), SinkError> {
        let head: [&(dyn ToSql + Sync); 3] = [&self.ids, &self.mtimes, &self.order];
        let params: Vec<&(dyn ToSql + Sync)> = head.into_iter().chain(source.iter().copied()).collect();
        let merged = self.tx.query(merge, &params).await.map_err(SinkError::query("merging into events"))?;
        let won = settle::add_written(&self.ids, &merged, &mut self.written);
        if won < rows as i64 {
            self.lost_some = true;
            let head: [&(dyn ToSql + Sync); 2] = [&self.ids, &self.batch_seq];
            let params: Vec<&(dyn ToSql + Sync)> = head.into_iter().chain(source.iter().copied()).collect();
            self.tx.execute(lost, &params).await.map_err(SinkError::query("recording the rows lost to newer ones"))?;
        }
        Ok(())
    }

    async fn reject(&mut self, chunk: &Chunk) -> Result<(), SinkError> {
        if chunk.rejected.is_empty() {
            return Ok(());
        }
        let what = "recording rejected rows";
        let sink = self.tx.copy_in(&self.stage.prepared.rejected).await.map_err(SinkError::query(what))?;
        let writer =
            BinaryCopyInWriter::new(sink, &[Type::UUID, Type::INT8, Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT]);
        pin_mut!(writer);
        let batch_id = self.meta.batch_id as i64;
        for r in &chunk.rejected {
            let name = self.files.get(r.file_index as usize).map_or("", |f| f.id.name.as_str());
            let line = r.line as i64;
            let (raw, reason) = (text(&r.raw), text(&r.reason));
            writer
                .as_mut()
                .write(&[&self.meta.checkpoint_id, &batch_id, &name, &line, &raw, &reason])
                .await
                .map_err(SinkError::query(what))?;
        }
        writer.finish().await.map_err(SinkError::query(what))?;
        Ok(())
    }

    /// Records a chunk's metrics deltas, and keeps its counters to merge
    /// with the next chunks' (written out at the end of the batch, or once
    /// they are [`BatchCounters::full`]).
    async fn record_deltas(&mut self, d: &Deltas) -> Result<(), SinkError> {
        if d.is_empty() {
            return Ok(());
        }
        let what = "recording the batch's analytics deltas";
        let sink = self.tx.copy_in(&self.stage.prepared.metrics).await.map_err(SinkError::query(what))?;
        let types = [
            Type::INT8,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::NUMERIC,
            Type::INT4_ARRAY,
            Type::INT4_ARRAY,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for c in &d.cells {
            let (start, revenue) = (micros_to_utc(c.window_start_micros), Decimal::new(c.revenue_cents, 2));
            let row: [&(dyn ToSql + Sync); 8] =
                [&self.batch_seq, &start, &c.category, &c.views, &c.purchases, &revenue, &c.user_ids, &c.user_rows];
            writer.as_mut().write(&row).await.map_err(SinkError::query(what))?;
        }
        writer.finish().await.map_err(SinkError::query(what))?;

        self.counters.add(d);
        if self.counters.full(self.meta.counters_cap) {
            self.write_counters().await?;
        }
        Ok(())
    }

    /// Writes the merged counters: each kind's (user, key) pairs, each
    /// once, sorted, as `counters_delta` rows of [`COUNTERS_PART`] pairs
    /// numbered by this write of the batch (`flush`; db/011).
    async fn write_counters(&mut self) -> Result<(), SinkError> {
        if self.counters.is_empty() {
            return Ok(());
        }
        let m = self.counters.take();
        let flush = self.flushes;
        self.flushes += 1;
        let what = "recording the batch's analytics deltas";
        let sink = self.tx.copy_in(&self.stage.prepared.counters).await.map_err(SinkError::query(what))?;
        let types = [
            Type::INT8,
            Type::INT4,
            Type::INT4_ARRAY,
            Type::TEXT_ARRAY,
            Type::INT4_ARRAY,
            Type::INT4_ARRAY,
            Type::INT4_ARRAY,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let none: Option<PairColumn> = None;
        let col = |pairs, field| PairColumn { pairs, field };
        for cat in m.by_category.chunks(COUNTERS_PART) {
            let (users, names) = (col(cat, PairField::User), Some(col(cat, PairField::Name(&m.names))));
            let (views, purchases) = (col(cat, PairField::Views), col(cat, PairField::Purchases));
            let row: [&(dyn ToSql + Sync); 7] = [&self.batch_seq, &flush, &users, &names, &none, &views, &purchases];
            writer.as_mut().write(&row).await.map_err(SinkError::query(what))?;
        }
        for prod in m.by_product.chunks(COUNTERS_PART) {
            let (users, ids) = (col(prod, PairField::User), Some(col(prod, PairField::Key)));
            let (views, purchases) = (col(prod, PairField::Views), col(prod, PairField::Purchases));
            let row: [&(dyn ToSql + Sync); 7] = [&self.batch_seq, &flush, &users, &none, &ids, &views, &purchases];
            writer.as_mut().write(&row).await.map_err(SinkError::query(what))?;
        }
        writer.finish().await.map_err(SinkError::query(what))?;
        Ok(())
    }

    /// Merges the staged rows into `events`, settles the files in the
    /// registry (`to_move`: whether a file is to be archived, deleted or
    /// quarantined), records the load history and the batch, and commits.
    /// `read` holds each claimed file's outcome, in batch order.
    pub async fn finish(
        mut self,
        read: &[FileSummary],
        to_move: impl Fn(&FileOutcome) -> bool,
    ) -> Result<Committed, SinkError> {
        self.number().await?;
        self.write_counters().await?;
        let Loader {
            tx,
            stage,
            meta,
            batch_seq,
            files,
            ids,
            mtimes,
            order,
            mut lost_some,
            chunks,
            chunks_inserted,
            chunks_merged,
            rows_merged,
            keys,
            keys_looked_up,
            staged,
            mut written,
            started,
            ..
        } = self;
        let mut loads = settle::loads(&files, read);
        if chunks > 0 {
            if stage.distributed {
                let batch = settle::Merge { batch_seq, chunks, ids: &ids, mtimes: &mtimes, order: &order };
                lost_some = settle::merge_batch(&tx, stage, batch, &staged, &mut written).await?;
            } else if chunks_merged > 0 && chunks > 1 {
                settle::reconcile(&tx, batch_seq, &ids, &mut written).await?;
            }
            settle::count(&tx, &stage.prepared, batch_seq, &staged, &written, &mut loads).await?;
        }
        // One round trip: the check is sent after the closing rows. Both run
        // to the end, and the closing rows' error comes first: once one of
        // them fails, the check only meets the aborted transaction.
        let record = settle::record(&tx, &stage.prepared, &meta, batch_seq, &loads, to_move);
        let merged_by = Some(&order[..]).filter(|_| lost_some);
        let check = settle::same_file_order(&tx, &stage.prepared.file_order, &ids, merged_by);
        let (recorded, ordered) = tokio::join!(record, check);
        recorded.and(ordered)?;
        let load = started.elapsed();

        let committing = Instant::now();
        if meta.fence {
            let (class, object) = lock::COMMIT_FENCE;
            tx.execute("SELECT pg_advisory_lock_shared($1, $2)", &[&class, &object])
                .await
                .map_err(SinkError::query("taking the commit fence"))?;
        }
        tx.commit().await.map_err(SinkError::query("committing the batch"))?;
        stage.recent.add(keys.keys());
        Ok(Committed {
            batch_seq,
            files: loads,
            load,
            commit: committing.elapsed(),
            committed_at: Utc::now(),
            chunks_inserted,
            chunks_merged,
            rows_merged,
            keys_looked_up,
        })
    }
}

/// Whether a failed statement met a stored key of `events`.
fn is_stored_key(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(sql::KEY_CONSTRAINT))
}

/// Column types of the contract's columns, in `COLUMNS` order.
const CONTRACT_TYPES: [Type; 9] = [
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

/// Column types of [`sql::insert_copy`]: the contract's, then the source
/// position and the rescued columns.
static INSERT_TYPES: LazyLock<Vec<Type>> =
    LazyLock::new(|| CONTRACT_TYPES.iter().cloned().chain([Type::INT8, Type::INT4, Type::INT4, Type::JSONB]).collect());

/// Column types of the staging table: chunk, file and line, the
/// contract's, the rescued columns.
static STAGE_TYPES: LazyLock<Vec<Type>> = LazyLock::new(|| {
    [Type::INT4, Type::INT4, Type::INT4].into_iter().chain(CONTRACT_TYPES.iter().cloned()).chain([Type::TEXT]).collect()
});

/// One column of a batch's merged counters as a PostgreSQL array, encoded
/// straight from the pairs (a column copied out first would double the
/// counters' memory at the end of each batch).
#[derive(Debug)]
struct PairColumn<'a> {
    pairs: &'a [Pair],
    field: PairField<'a>,
}

#[derive(Debug, Clone, Copy)]
enum PairField<'a> {
    User,
    /// The product id.
    Key,
    Views,
    Purchases,
    /// The category, the key being its index in these names.
    Name(&'a [String]),
}

impl ToSql for PairColumn<'_> {
    fn to_sql(&self, ty: &Type, w: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let member = match (ty.kind(), self.field) {
            (Kind::Array(member), PairField::Name(_)) if *member == Type::TEXT => member,
            (Kind::Array(member), _) if *member == Type::INT4 => member,
            _ => return Err(format!("a counters column is not a {ty}").into()),
        };
        let dimension = ArrayDimension { len: i32::try_from(self.pairs.len())?, lower_bound: 1 };
        let field = self.field;
        array_to_sql(
            Some(dimension),
            member.oid(),
            self.pairs,
            |&(user, key, views, purchases), w| {
                match field {
                    PairField::User => int4_to_sql(user, w),
                    PairField::Key => int4_to_sql(key as i32, w),
                    PairField::Views => int4_to_sql(views, w),
                    PairField::Purchases => int4_to_sql(purchases, w),
                    PairField::Name(names) => text_to_sql(names.get(key as usize).map_or("", String::as_str), w),
                }
                Ok(postgres_protocol::IsNull::No)
            },
            w,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INT4_ARRAY || *ty == Type::TEXT_ARRAY
    }

    to_sql_checked!();
}

/// Row `i` of a chunk, counted into `rows` (per file index) by its file.
fn counted_row<'v>(view: &EventView<'v>, i: usize, rows: &mut [u64]) -> Option<(u32, u64, contract::Event<'v>)> {
    let row = view.row(i)?;
    if let Some(count) = rows.get_mut(row.0 as usize) {
        *count += 1;
    }
    Some(row)
}

fn micros_to_utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Releases the [`lock::COMMIT_FENCE`] a batch's COMMIT took (a session
/// lock: a COMMIT or a rollback keeps it; the batch took it once). Nothing
/// to do when the session is gone (the lock went with it).
pub async fn release_fence(client: &Client) {
    if !client.is_closed() {
        let (class, object) = lock::COMMIT_FENCE;
        if let Err(e) = client.execute("SELECT pg_advisory_unlock_shared($1, $2)", &[&class, &object]).await {
            tracing::debug!(error = %describe(&e), "releasing the commit fence");
        }
    }
}

/// How many stage slots a Citus database offers (loader sessions at once).
pub const STAGE_SLOTS: i32 = 256;

/// A Citus loader session's connections per worker.
const CITUS_POOL: u32 = 4;

/// Prepares a loader session: its staging table (`citus`: the database is
/// a Citus coordinator; the session takes the first free stage slot and
/// creates its table if no session did before).
pub async fn prepare_loader_session(client: &Client, citus: bool) -> Result<Stage, SinkError> {
    let what = "preparing the loader session";
    // On Citus too: its stage takes the TEMP stage's columns.
    client.batch_execute(sql::STAGE_DDL).await.map_err(SinkError::query(what))?;
    if !citus {
        return Stage::temp(client).await.map_err(SinkError::query(what));
    }
    let class = lock::STAGE_SLOT;
    for slot in 0..STAGE_SLOTS {
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &slot])
            .await
            .map_err(SinkError::query(what))?
            .get(0);
        if !taken {
            continue;
        }
        let table = format!("events_stage_{slot}");
        // A transaction without a statement timeout, as the schema's (a
        // worker may be slow to answer the DDL). Then the session's
        // connections to the workers: 4 per worker, kept between batches
        // (Citus's default keeps one, and a batch that opens the rest again
        // pays for it in every statement and in its two-phase commit).
        let ddl = format!(
            "BEGIN; SET LOCAL statement_timeout = 0; {} COMMIT; \
             SET citus.max_adaptive_executor_pool_size = {CITUS_POOL}; \
             SET citus.max_cached_conns_per_worker = {CITUS_POOL};",
            sql::CITUS_STAGE_DDL.replace("events_stage_SLOT", &table)
        );
        client.batch_execute(&ddl).await.map_err(SinkError::query(what))?;
        return Stage::new(client, table, true).await.map_err(SinkError::query(what));
    }
    Err(SinkError::Slots(STAGE_SLOTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_key_makes_the_next_batches_merge_doubling_up_to_a_cap() {
        let turns = InsertTurns::default();
        assert!(turns.take(), "a new session tries");
        turns.met_stored_key();
        assert_eq!([turns.take(), turns.take()], [false, true], "then skips one batch");
        turns.met_stored_key();
        assert_eq!([turns.take(), turns.take(), turns.take()], [false, false, true], "then two");
        for _ in 0..10 {
            turns.met_stored_key();
        }
        assert_eq!((0..40).filter(|_| !turns.take()).count(), MAX_INSERT_PENALTY as usize, "never more than the cap");
        turns.inserted();
        turns.met_stored_key();
        assert_eq!([turns.take(), turns.take()], [false, true], "a chunk that went in straight ends the penalty");
    }

    #[test]
    fn jsonb_text_is_bound_in_jsonb_binary_form() {
        let mut out = BytesMut::new();
        assert!(JsonbText::accepts(&Type::JSONB) && !JsonbText::accepts(&Type::TEXT));
        assert!(matches!(JsonbText(r#"{"a":1}"#).to_sql(&Type::JSONB, &mut out), Ok(IsNull::No)));
        assert_eq!(&out[..], b"\x01{\"a\":1}");
    }
}
