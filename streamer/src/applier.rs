//! The analytics applier: folds committed batches into the derived tables
//! (`event_metrics_minute`, `user_category_counts`, `user_product_counts`)
//! off the commit path, on two sessions of its own.
//!
//! One applier runs per database: the one whose session holds the
//! [`lock::APPLIER`] advisory lock; every streamer with analytics on tries
//! to take it, so a dead owner is replaced within the session timeouts.
//!
//! Exactly once, in commit order: a round is ONE transaction at REPEATABLE
//! READ. Its snapshot holds a prefix of the commits, and with them every
//! delta those batches recorded (their rows and their deltas committed
//! together). The round folds all of them, deletes them and stamps the
//! batches applied, in the same snapshot and the same COMMIT: a crash
//! anywhere rolls the whole round back, and a batch committed after the
//! snapshot waits for the next round. Distinct users are counted against
//! `events` as of the same snapshot, so after every round each derived table
//! equals its `GROUP BY` over `events` as of that snapshot (see db/003).
//! A new window width, or analytics turned on for a database that never had
//! them, rebuilds the tables from `events` in one such round instead.
//!
//! That is a whole round. A big round (a backlog's; see [`LANE_PAIRS`]) is
//! split in two [`Lane`]s instead, each on a session of its own, at once,
//! so that it uses two of the server's cores: each lane's round is such a
//! transaction for its own tables, over the batches without its mark in
//! `applier_marks`, and marks them in its COMMIT; then one statement finishes the batches both lanes marked
//! (deletes their deltas and marks, stamps them applied). A lane folds
//! every change since its last snapshot (the distinct-user count needs
//! that), so a lane that sees an edit by hand or a rebuild to do gives way
//! to a whole round, which folds both lanes' leftovers and deletes every
//! mark. No two rounds of one lane overlap: lane 1 runs on the session that
//! holds [`lock::APPLIER`], lane 2 under [`lock::APPLIER_LANE`], taken
//! before its transaction and let go after its COMMIT; a whole round holds
//! both.
//!
//! On Citus a snapshot is one per node, and a COMMIT reaches the
//! coordinator before the workers: the round takes its snapshots (one
//! connection per node) under the exclusive [`lock::COMMIT_FENCE`], which
//! every batch holds shared through its COMMIT, and goes on only when no
//! worker holds a prepared transaction still in doubt (a worker that died
//! mid-commit, until Citus's recovery settles it); otherwise it waits.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::{Client, IsolationLevel};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::observe::metrics::Monitor;
use crate::pg::{classify, connect_session, describe, Backoff, ErrorClass, Session};
use crate::sink::lock;

const APPLY_METRICS: &str = include_str!("sink/sql/apply_metrics.sql");
const PRESENT_SCAN: &str = include_str!("sink/sql/present_scan.sql");
const PRESENT_JOIN: &str = include_str!("sink/sql/present_join.sql");
const PRESENT_RECOUNT: &str = include_str!("sink/sql/present_recount.sql");
const COUNTERS_BATCH: &str = include_str!("sink/sql/counters_batch.sql");
const COUNTERS_BATCH_GROUPED: &str = include_str!("sink/sql/counters_batch_grouped.sql");
const COUNTERS_ROWS: &str = include_str!("sink/sql/counters_rows.sql");
const APPLY_DONE: &str = include_str!("sink/sql/apply_done.sql");
const LANES_DONE: &str = include_str!("sink/sql/lanes_done.sql");
const REBUILD: &str = include_str!("sink/sql/rebuild.sql");

/// Before a round's folds. metrics_delta is filled and emptied all the
/// time, so its statistics are stale: with them the planner took a round of
/// one small batch for a big one and counted its distinct users by a scan of
/// all of events (860 ms at 600 000 rows, against 20 ms by index probes once
/// the table was analyzed). Its row count is what matters, so only the key
/// columns are analyzed (the user arrays took 100 of a big round's 120 ms;
/// on Citus the table is the coordinator's own). And room for a backlog's
/// round to group and sort in memory: at PostgreSQL's default 4 MB a round
/// of 600 000 rows spilled to disk three times, and the planner, costing
/// the spills, counted its distinct users by 217 000 index probes (3.4 s,
/// against 1.4 s by the hash join it picks with room; the applier's
/// sessions, for their transactions only).
const ROUND_SETUP: &str = concat!(work_mem!(), "; ANALYZE metrics_delta (window_start, product_category)");

/// Room for a big round to group and sort in memory (see [`ROUND_SETUP`]);
/// lane 2 reads no `metrics_delta`, so it sets only this.
macro_rules! work_mem {
    () => {
        "SET LOCAL work_mem = '64MB'"
    };
}
use work_mem;

/// A round counts its distinct users by one scan of the part of `events`
/// its windows cover (instead of one index probe per touched user and cell)
/// when its deltas hold at least one user entry per this many rows of that
/// part. Measured on this project's 2-core host: a probe costs about 8 µs
/// an entry, the scan about 0.25 µs a row. A backlog's round of 600 000
/// rows: 1.36 s probing, 1.45 s scanning; its next round of 150 000 against
/// 600 000 stored: 1.8 s against 0.74 s; one batch of 150 000 into 5.3 M
/// rows: 1.17 s probing, 1.9 s scanning all of `events`. The planner cannot
/// tell these apart itself: it does not know how many users a round's
/// arrays hold.
const SCAN_ROWS_PER_ENTRY: f64 = 32.0;

/// A round counts its cells' distinct users again from scratch
/// (present_recount.sql: every row of its range hashed once, no join with
/// its users) when its deltas hold at least one user entry per this many
/// rows of that part of `events`, and at least [`RECOUNT_ENTRIES`]
/// entries. Measured on this project's 2-core host, with files whose rows
/// spread over one day (the benchmark's data sets), the binaries
/// alternated: data set A's backlog (rounds of 117 000–233 000 entries
/// against 150 000–600 000 rows) folded its metrics in 1.9–2.6 s of server
/// time in all, median 2.1, against 1.9–3.3 s, median 2.6, by the scan
/// (six runs each); data set B loaded in 17.6–18.1 s against 18.3–19.6 s
/// (three each); one batch of 150 000 rows (about 120 000 entries) into
/// 600 000 rows of the same day, 1.2 s recounting against 0.9–1.0 s
/// scanning; 50 000 rows into the same, 1.0 s against 0.3 s.
const RECOUNT_ROWS_PER_ENTRY: f64 = 4.0;

/// The fewest user entries a round recounts with: below, a wrong estimate
/// of its range (a live stream's newest minute, past the statistics) would
/// make a small round hash a whole busy window.
const RECOUNT_ENTRIES: i64 = 20_000;

/// Bytes of `events` per row, to size a table without statistics (130–170
/// measured with generated data).
const BYTES_PER_ROW: f64 = 128.0;

/// How a round counts its distinct users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Users {
    /// One index probe per touched user and cell, which stops at the rows
    /// the count needs (apply_metrics.sql).
    Probe,
    /// One join of the touched users and cells with `events`, every row
    /// counted (present_join.sql): Citus's form.
    Join,
    /// One scan of the rows of `events` in the round's time range, joined
    /// with the touched users and cells (present_scan.sql).
    ScanRange,
    /// One scan of all of `events`: the table has no statistics yet (a new
    /// one, before its first `ANALYZE`), so the planner would take any range
    /// for a tiny part of it and read a backlog's whole table through its
    /// index (by hand, a round over 600 000 rows: 2.0–2.4 s against 1.4 s).
    ScanAll,
    /// The touched cells' users counted again by one scan of the rows of
    /// `events` in the round's time range (present_recount.sql).
    RecountRange,
    /// The same over all of `events` (no statistics yet, as [`Users::ScanAll`]).
    RecountAll,
}

/// How the round counts the distinct users (`pipeline.applier_join` set on
/// the database overrides the choice: `probe`, `scan` or `recount`). Sets
/// the round's time range, the windows its deltas touch, as
/// `pipeline.round_from` and `pipeline.round_to` (transaction-local): the
/// scan and the recount read only that part of `events`, by its
/// `event_time` index when the part is small, and its size is the
/// planner's estimate of the rows in it (EXPLAIN: statistics, no scan).
async fn users_form(tx: &tokio_postgres::Transaction<'_>) -> Result<Users, tokio_postgres::Error> {
    let row = tx.query_one(ROUND_RANGE, &[]).await?;
    let (entries, forced, heap, stats): (i64, String, i64, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let rows = if stats {
        let rows = tx.simple_query(RANGE_ROWS).await?.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(plan_rows),
            _ => None,
        });
        Some(rows.flatten().unwrap_or(f64::INFINITY))
    } else {
        None
    };
    let users = choose(entries, rows, heap, &forced);
    tracing::debug!(?users, entries, range_rows = rows, heap, "distinct users counted");
    Ok(users)
}

/// The round's user entries, the override, the bytes of `events` and
/// whether it has statistics on `event_time`; sets the round's time range
/// (empty when the round has no deltas).
const ROUND_RANGE: &str = "\
    WITH s AS (SELECT make_interval(secs => window_seconds) AS width FROM analytics_settings), \
    d AS (SELECT coalesce(sum(cardinality(user_ids)), 0) AS n, min(window_start) AS lo, max(window_start) AS hi \
          FROM metrics_delta WHERE batch_seq NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 1)), \
    a AS (SELECT count(*) AS n, min(event_time) AS lo, max(event_time) AS hi FROM analytics_rows \
          WHERE coalesce(batch_seq, 0) NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 1)) \
    SELECT (d.n + a.n)::int8, coalesce(current_setting('pipeline.applier_join', true), ''), \
           pg_relation_size('events'), \
           EXISTS (SELECT 1 FROM pg_stats p JOIN pg_class c ON c.relname = p.tablename \
                   JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.schemaname \
                   WHERE c.oid = 'events'::regclass AND p.attname = 'event_time'), \
           set_config('pipeline.round_from', coalesce(least(d.lo, date_bin(s.width, a.lo, \
               TIMESTAMPTZ '2000-01-01 00:00:00+00')), 'infinity')::text, true), \
           set_config('pipeline.round_to', coalesce(greatest(d.hi, date_bin(s.width, a.hi, \
               TIMESTAMPTZ '2000-01-01 00:00:00+00')) + s.width, '-infinity')::text, true) \
    FROM s, d, a";

/// The planner's estimate of the rows of `events` in the round's range.
const RANGE_ROWS: &str = "EXPLAIN (FORMAT JSON) SELECT 1 FROM events \
    WHERE event_time >= current_setting('pipeline.round_from')::timestamptz \
      AND event_time < current_setting('pipeline.round_to')::timestamptz";

/// "Plan Rows" of the top node of an `EXPLAIN (FORMAT JSON)`.
fn plan_rows(explain: &str) -> Option<f64> {
    let plan: serde_json::Value = serde_json::from_str(explain).ok()?;
    plan.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()
}

/// The choice itself: `entries` user entries in the round's deltas,
/// `range_rows` the planner's estimate of the rows of `events` in the
/// round's range (`None`: the table has no statistics), `heap` the bytes
/// of `events`, `forced` the database's override.
fn choose(entries: i64, range_rows: Option<f64>, heap: i64, forced: &str) -> Users {
    let (rows, scan, recount) = match range_rows {
        Some(rows) => (rows, Users::ScanRange, Users::RecountRange),
        None => (heap as f64 / BYTES_PER_ROW, Users::ScanAll, Users::RecountAll),
    };
    match forced {
        "probe" => Users::Probe,
        "scan" => scan,
        "recount" => recount,
        _ if entries >= RECOUNT_ENTRIES && entries as f64 * RECOUNT_ROWS_PER_ENTRY >= rows => recount,
        _ if entries as f64 * SCAN_ROWS_PER_ENTRY >= rows => scan,
        _ => Users::Probe,
    }
}

/// `sql` with `part` between its `-- <name>` and `-- </name>` lines.
fn splice(sql: &str, name: &str, part: &str) -> String {
    let (start, end) = (format!("-- <{name}>\n"), format!("-- </{name}>\n"));
    match (sql.find(&start), sql.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{part}{}", &sql[..a], &sql[b + end.len()..]),
        // Pinned by a unit test: not reached.
        _ => sql.to_owned(),
    }
}

/// The metrics fold in the round's form.
fn apply_metrics(users: Users) -> &'static str {
    use std::sync::OnceLock;
    static JOIN: OnceLock<String> = OnceLock::new();
    static RANGE: OnceLock<String> = OnceLock::new();
    static ALL: OnceLock<String> = OnceLock::new();
    static RECOUNT_RANGE: OnceLock<String> = OnceLock::new();
    static RECOUNT_ALL: OnceLock<String> = OnceLock::new();
    let whole = |part: &str| splice(APPLY_METRICS, "present", part);
    match users {
        Users::Probe => APPLY_METRICS,
        Users::Join => JOIN.get_or_init(|| whole(PRESENT_JOIN)),
        Users::ScanRange => RANGE.get_or_init(|| whole(PRESENT_SCAN)),
        Users::ScanAll => ALL.get_or_init(|| whole(&splice(PRESENT_SCAN, "range", ""))),
        Users::RecountRange => RECOUNT_RANGE.get_or_init(|| recounted(whole(PRESENT_RECOUNT))),
        Users::RecountAll => RECOUNT_ALL.get_or_init(|| recounted(whole(&splice(PRESENT_RECOUNT, "range", "")))),
    }
}

/// The recount's fold with sorts disabled for it alone (present_recount.sql
/// says why), then the setting the transaction had before.
fn recounted(fold: String) -> String {
    format!(
        "SELECT set_config('pipeline.enable_sort', current_setting('enable_sort'), true);\n\
         SET LOCAL enable_sort = off;\n{fold}\n\
         SELECT set_config('enable_sort', current_setting('pipeline.enable_sort'), true);\n"
    )
}

/// How long an idle applier waits before looking again (it is also woken
/// by this streamer's commits).
const IDLE_POLL: Duration = Duration::from_millis(200);

/// How long the applier runs whole rounds on one session before it tries
/// again to open its second session.
const LANE_RETRY: Duration = Duration::from_secs(30);

/// How far the derived tables are behind `events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Lag {
    /// Committed batches not folded in yet.
    pub batches: i64,
    /// Age of the oldest of them, in seconds (0 when none).
    pub seconds: f64,
}

/// The lag, read in one statement.
pub async fn lag(client: &Client) -> Result<Lag, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(committed_at)), 0)::float8 \
             FROM batches WHERE applied_at IS NULL",
            &[],
        )
        .await?;
    Ok(Lag { batches: row.get(0), seconds: row.get(1) })
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing to fold.
    Idle,
    /// Finished this many batches (and folded any edits by hand).
    Applied { batches: i64, rebuilt: bool },
    /// On Citus: a worker holds a prepared transaction in doubt; the round
    /// waits for Citus to settle it.
    InDoubt { prepared: i64 },
    /// Lane 2's lock is held by another session (a replaced applier's lane
    /// round that has not ended yet): what needs lane 2 waits for it.
    Busy,
}

/// The applier's two lanes: the folds split in two, each on a session of
/// its own, so that a round uses two of the server's cores (db/009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `event_metrics_minute` and `user_category_counts`, on the applier's
    /// main session (the one that holds [`lock::APPLIER`]).
    Metrics = 1,
    /// `user_product_counts`, on the applier's second session, each round
    /// under [`lock::APPLIER_LANE`].
    Products = 2,
}

/// What one lane's round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneRound {
    /// Every committed batch has this lane's mark.
    Idle,
    /// Folded this many batches and marked them.
    Folded(i64),
    /// The snapshot holds what only a whole round folds (a rebuild to do,
    /// edits by hand): the lane folded nothing.
    Whole,
    /// Lane 2's lock is held by another session.
    Busy,
}

/// A lane round's first statement (it fixes the snapshot): whether a whole
/// round is needed, and the batches this lane has not folded.
const LANE_START: &str = "\
    SELECT s.needs_rebuild \
           OR EXISTS (SELECT 1 FROM batches b WHERE b.applied_at IS NULL AND b.window_seconds <> s.window_seconds) \
           OR EXISTS (SELECT 1 FROM analytics_rows WHERE batch_seq IS NULL), \
           (SELECT count(*) FROM batches b WHERE b.applied_at IS NULL \
              AND NOT EXISTS (SELECT 1 FROM applier_marks k WHERE k.lane = $1 AND k.batch_seq = b.batch_seq)) \
    FROM analytics_settings s";

/// A lane's record of the batches it folded, in the snapshot it folded.
const LANE_MARK: &str = "\
    INSERT INTO applier_marks (batch_seq, lane) \
    SELECT b.batch_seq, $1 FROM batches b WHERE b.applied_at IS NULL \
       AND NOT EXISTS (SELECT 1 FROM applier_marks k WHERE k.lane = $1 AND k.batch_seq = b.batch_seq)";

/// One round (see the module docs): on `lanes`, the applier's second
/// session, the two lanes at once, then the batches both lanes folded are
/// finished; without it (or on Citus, `citus`, or when a lane saw what
/// only it folds) a whole round on `main`.
pub async fn round(main: &mut Client, lanes: Option<&mut Client>, citus: bool) -> Result<Round, tokio_postgres::Error> {
    let waiting: bool = main
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM batches WHERE applied_at IS NULL) \
                 OR EXISTS (SELECT 1 FROM analytics_rows WHERE batch_seq IS NULL) \
                 OR EXISTS (SELECT 1 FROM analytics_settings WHERE needs_rebuild)",
            &[],
        )
        .await?
        .get(0);
    if !waiting {
        return Ok(Round::Idle);
    }
    let second = match lanes {
        Some(second) if !citus && lanes_pay(main).await? => second,
        _ => return whole(main, citus).await,
    };
    let (metrics, products) = tokio::join!(lane(main, Lane::Metrics), locked_lane(second));
    let (metrics, products) = (metrics?, products?);
    if metrics == LaneRound::Whole || products == LaneRound::Whole {
        return whole(main, citus).await;
    }
    let batches = main.execute(LANES_DONE, &[]).await? as i64;
    let folded = matches!(metrics, LaneRound::Folded(_)) || matches!(products, LaneRound::Folded(_));
    Ok(if batches > 0 || folded {
        Round::Applied { batches, rebuilt: false }
    } else if products == LaneRound::Busy {
        Round::Busy
    } else {
        Round::Idle
    })
}

/// A round splits into its lanes from this many (user, product) pairs to
/// fold (`pipeline.applier_lane_pairs` set on the database overrides it).
/// A lane round costs two transactions and the finishing statement more
/// than a whole round, and its second session takes a core from the
/// loaders at once: worth it for a backlog's round (the (user, product)
/// pairs alone took 374–430 ms per 136 000 on this project's 2-core host,
/// about 3 µs each), not for a round of one small file (about 1 200 pairs,
/// a few ms). With lanes for every round, the latency benchmark (1 500-row
/// files) ran worse than the whole rounds' code on the same host minutes
/// apart, one run each: idle p50 43.9 ms against 28.1 ms, and at 20 000
/// rows/s the derived tables' lag p99 5.9 s against 3.9 s.
pub const LANE_PAIRS: i64 = 20_000;

/// Whether the round's work is worth its two lanes (see [`LANE_PAIRS`]).
async fn lanes_pay(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client.query_one(LANE_SIZE, &[]).await?;
    let (pairs, forced): (i64, Option<String>) = (row.get(0), row.get(1));
    let from = forced.and_then(|f| f.trim().parse::<i64>().ok()).unwrap_or(LANE_PAIRS);
    Ok(pairs >= from)
}

/// The (user, product) pairs lane 2 has to fold, and the override.
const LANE_SIZE: &str = "\
    SELECT coalesce(sum(cardinality(product_ids)), 0)::int8, \
           nullif(current_setting('pipeline.applier_lane_pairs', true), '') \
    FROM counters_delta WHERE product_ids IS NOT NULL \
      AND batch_seq NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 2)";

/// Lane 2's round on its session, under its lock.
async fn locked_lane(client: &mut Client) -> Result<LaneRound, tokio_postgres::Error> {
    if !lane_lock(client).await? {
        return Ok(LaneRound::Busy);
    }
    let folded = lane(client, Lane::Products).await;
    lane_unlock(client).await?;
    folded
}

/// One lane's round: ONE transaction at REPEATABLE READ that folds the
/// deltas of every batch its snapshot holds without the lane's mark, and
/// marks them, in the same COMMIT.
async fn lane(client: &mut Client, lane: Lane) -> Result<LaneRound, tokio_postgres::Error> {
    let started = Instant::now();
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().await?;
    let id = lane as i16;
    let row = tx.query_one(LANE_START, &[&id]).await?;
    let (whole, batches): (bool, i64) = (row.get(0), row.get(1));
    if whole || batches == 0 {
        tx.rollback().await?;
        return Ok(if whole { LaneRound::Whole } else { LaneRound::Idle });
    }
    tx.batch_execute(if lane == Lane::Metrics { ROUND_SETUP } else { work_mem!() }).await?;
    folds(&tx, lane, false).await?;
    tx.execute(LANE_MARK, &[&id]).await?;
    tx.commit().await?;
    tracing::debug!(?lane, batches, ms = started.elapsed().as_secs_f64() * 1000.0, "analytics lane folded");
    crate::crashpoint::hit("applier_lane");
    Ok(LaneRound::Folded(batches))
}

/// One lane's folds, in the round's transaction (set up by the caller).
async fn folds(tx: &tokio_postgres::Transaction<'_>, lane: Lane, citus: bool) -> Result<(), tokio_postgres::Error> {
    match lane {
        Lane::Metrics => {
            // On Citus `events` is the coordinator's empty shell: the
            // probes, which Citus runs on the workers.
            let users = if citus { Users::Join } else { users_form(tx).await? };
            tx.batch_execute(apply_metrics(users)).await?;
            fold_counters(tx, &BY_CATEGORY).await
        }
        Lane::Products => fold_counters(tx, &BY_PRODUCT).await,
    }
}

/// One counters table's statements (the templates of sink/sql/counters_*.sql
/// filled in for it).
struct Counted {
    /// Its batches not folded yet by the lane that folds it, in commit
    /// order, each with its number of writes of the kind: the loader's
    /// numbered writes (`flush`, each in parts that hold a pair once:
    /// db/011), and each row without a number (written before db/011).
    batches: String,
    /// One batch's pairs as they are (one write: merged by its loader).
    batch: String,
    /// One batch's pairs grouped first (several writes).
    grouped: String,
    /// The rows to take back or add, then the pairs left at zero.
    rows: String,
}

impl Counted {
    fn new(table: &str, key: &str, keys: &str, lane: Lane) -> Counted {
        let fill = |sql: &str| {
            sql.replace("{table}", table)
                .replace("{keys}", keys)
                .replace("{key}", key)
                .replace("{lane}", &(lane as i16).to_string())
        };
        Counted {
            batches: fill(
                "SELECT batch_seq, count(*) FILTER (WHERE flush IS NULL) + count(DISTINCT flush) \
                 FROM counters_delta WHERE {keys} IS NOT NULL \
                 AND batch_seq NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = {lane}) \
                 GROUP BY batch_seq ORDER BY batch_seq",
            ),
            batch: fill(COUNTERS_BATCH),
            grouped: fill(COUNTERS_BATCH_GROUPED),
            rows: fill(COUNTERS_ROWS),
        }
    }
}

static BY_CATEGORY: LazyLock<Counted> =
    LazyLock::new(|| Counted::new("user_category_counts", "product_category", "categories", Lane::Metrics));
static BY_PRODUCT: LazyLock<Counted> =
    LazyLock::new(|| Counted::new("user_product_counts", "product_id", "product_ids", Lane::Products));

/// Folds one counters table: each batch's pairs in commit order, one
/// statement each (a statement's upsert may meet a pair only once, and a
/// batch's merged pairs are unique: no grouping across batches needed),
/// then the rows to take back or add. Each form is prepared once per fold,
/// at its first batch (a round that catches up holds many).
async fn fold_counters(tx: &tokio_postgres::Transaction<'_>, c: &Counted) -> Result<(), tokio_postgres::Error> {
    let (mut as_written, mut grouped) = (None, None);
    for row in tx.query(c.batches.as_str(), &[]).await? {
        let (batch, writes): (i64, i64) = (row.get(0), row.get(1));
        let (prepared, sql) = if writes == 1 { (&mut as_written, &c.batch) } else { (&mut grouped, &c.grouped) };
        let statement = match prepared {
            Some(statement) => statement,
            None => prepared.insert(tx.prepare(sql).await?),
        };
        tx.execute(&*statement, &[&batch]).await?;
    }
    tx.batch_execute(&c.rows).await
}

/// Takes lane 2's lock on `client` if it is free (a session lock: a
/// rollback keeps it; [`lane_unlock`] lets go).
async fn lane_lock(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let (class, object) = lock::APPLIER_LANE;
    Ok(client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &object]).await?.get(0))
}

/// Lets go of lane 2's lock (on a closed session it went with the session).
async fn lane_unlock(client: &Client) -> Result<(), tokio_postgres::Error> {
    if client.is_closed() {
        return Ok(());
    }
    let (class, object) = lock::APPLIER_LANE;
    client.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]).await.map(drop)
}

/// A whole round: both lanes' folds in one transaction, on `main`, under
/// lane 2's lock too; it also folds edits by hand and rebuilds.
async fn whole(client: &mut Client, citus: bool) -> Result<Round, tokio_postgres::Error> {
    if !lane_lock(client).await? {
        return Ok(Round::Busy);
    }
    let folded = if citus { fenced(client).await } else { fold(client, false, &mut false).await };
    lane_unlock(client).await?;
    folded
}

/// On Citus, the whole round takes its snapshots under the fence.
async fn fenced(client: &mut Client) -> Result<Round, tokio_postgres::Error> {
    let (class, object) = lock::COMMIT_FENCE;
    client.execute("SELECT pg_advisory_lock($1, $2)", &[&class, &object]).await?;
    let mut fenced = true;
    let folded = fold(client, true, &mut fenced).await;
    if fenced && !client.is_closed() {
        // The round failed before it let go (a session lock: the rollback keeps it).
        let _ = client.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]).await;
    }
    folded
}

/// The round's transaction; on Citus it takes its snapshots under the
/// fence the caller took, and lets go of it (`fenced` false then).
async fn fold(client: &mut Client, citus: bool, fenced: &mut bool) -> Result<Round, tokio_postgres::Error> {
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().await?;
    if citus {
        // One connection per worker for the whole round, each with its
        // snapshot taken now, under the fence; then no prepared
        // transaction may be in doubt on any worker.
        tx.batch_execute(
            "SET LOCAL citus.multi_shard_modify_mode = 'sequential'; \
             SET LOCAL citus.max_adaptive_executor_pool_size = 1; \
             SELECT count(*) FROM batches; SELECT count(*) FROM analytics_rows",
        )
        .await?;
        let prepared: i64 = tx
            .query_one(
                "SELECT coalesce(sum(result::int8), 0)::int8 \
                 FROM run_command_on_workers('SELECT count(*) FROM pg_prepared_xacts \
                                              WHERE database = current_database()') WHERE success",
                &[],
            )
            .await?
            .get(0);
        let (class, object) = lock::COMMIT_FENCE;
        tx.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]).await?;
        *fenced = false;
        if prepared > 0 {
            return Ok(Round::InDoubt { prepared });
        }
    }
    // The first statement fixes the snapshot (on Citus, the coordinator's
    // was fixed above).
    let row = tx
        .query_one(
            "SELECT s.needs_rebuild, (SELECT count(*) FROM batches WHERE applied_at IS NULL), \
                    EXISTS (SELECT 1 FROM batches b WHERE b.applied_at IS NULL AND b.window_seconds <> s.window_seconds) \
             FROM analytics_settings s",
            &[],
        )
        .await?;
    let (needs_rebuild, batches, other_width): (bool, i64, bool) = (row.get(0), row.get(1), row.get(2));
    let rebuilt = needs_rebuild || other_width;
    tx.batch_execute(ROUND_SETUP).await?;
    if rebuilt {
        tx.batch_execute(REBUILD).await?;
    } else {
        folds(&tx, Lane::Metrics, citus).await?;
        folds(&tx, Lane::Products, citus).await?;
    }
    tx.batch_execute(APPLY_DONE).await?;
    tx.commit().await?;
    Ok(Round::Applied { batches, rebuilt })
}

/// Where the applier runs and what it reports to.
#[derive(Debug, Clone)]
pub struct Applier {
    pub url: crate::pg::Target,
    pub session: Session,
    pub max_backoff: Duration,
    pub monitor: Arc<Monitor>,
    /// Notified by this streamer's commits.
    pub wake: Arc<Notify>,
    /// The database is a Citus coordinator.
    pub citus: bool,
}

impl Applier {
    /// Runs until `stop` fires: owns the applier role when it can, folds
    /// rounds while there is work, waits when idle.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.max_backoff);
        let mut client: Option<Client> = None;
        // Lane 2's session, while this streamer owns the applier; when it
        // cannot be opened, whole rounds until the next try.
        let mut second: Option<Client> = None;
        let mut second_try = Instant::now();
        let mut owner = false;
        while !stop.is_cancelled() {
            if client.as_ref().is_none_or(Client::is_closed) {
                owner = false;
                second = None;
                match self.connect(&mut backoff).await {
                    Ok(c) => client = Some(c),
                    Err(wait) if pause(&stop, wait).await => continue,
                    Err(_) => return,
                }
            }
            let Some(c) = client.as_mut() else { continue };
            if !owner {
                let (class, object) = lock::APPLIER;
                match c.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &object]).await {
                    Ok(row) if row.get::<_, bool>(0) => {
                        owner = true;
                        info!("this streamer runs the analytics applier");
                    }
                    Ok(_) => {
                        // Another streamer's applier runs: look again later.
                        self.report(c).await;
                        if !self.idle(&stop, Duration::from_secs(1)).await {
                            return;
                        }
                        continue;
                    }
                    Err(_) => {
                        client = None;
                        continue;
                    }
                }
            }
            if !self.citus && second.as_ref().is_none_or(Client::is_closed) && Instant::now() >= second_try {
                let opened = match connect_session(&self.url, "streamer-applier-lane", &self.session).await {
                    Ok((s, _)) => s.batch_execute("SET statement_timeout = '1h'").await.map(|()| s),
                    Err(e) => Err(e),
                };
                second = match opened {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(error = %describe(&e), retry_in_s = LANE_RETRY.as_secs(), "the analytics applier cannot open its second session; its rounds run on one session meanwhile");
                        second_try = Instant::now() + LANE_RETRY;
                        None
                    }
                };
            }
            let started = Instant::now();
            let lanes = second.as_mut().filter(|s| !s.is_closed());
            match round(c, lanes, self.citus).await {
                Ok(Round::Idle) => {
                    self.monitor.applier_lag(Lag::default());
                    backoff = Backoff::new(self.max_backoff);
                    if !self.idle(&stop, IDLE_POLL).await {
                        return;
                    }
                }
                Ok(Round::Busy) => {
                    let wait = backoff.step();
                    warn!(retry_in_ms = wait.as_millis() as u64, "another session still holds the applier's lane 2 (a replaced applier's round that has not ended); waiting");
                    if !pause(&stop, wait).await {
                        return;
                    }
                }
                Ok(Round::InDoubt { prepared }) => {
                    let wait = backoff.step();
                    warn!(prepared, retry_in_ms = wait.as_millis() as u64, "a Citus worker holds prepared transactions in doubt (it failed mid-commit); the analytics wait for Citus to recover them");
                    if !pause(&stop, wait).await {
                        return;
                    }
                }
                Ok(Round::Applied { batches, rebuilt }) => {
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    if rebuilt {
                        info!(batches, ms, "analytics tables rebuilt from events");
                    } else {
                        tracing::debug!(batches, ms, "analytics applied");
                    }
                    self.monitor.applier_round(batches as u64, started.elapsed());
                    self.report(c).await;
                }
                Err(e) => {
                    let wait = backoff.step();
                    match classify(&e) {
                        ErrorClass::Transient => {
                            warn!(error = %describe(&e), retry_in_ms = wait.as_millis() as u64, "analytics round rolled back; retrying")
                        }
                        _ => {
                            tracing::error!(error = %describe(&e), retry_in_ms = wait.as_millis() as u64, "analytics round failed; ingest goes on, the round is retried")
                        }
                    }
                    if c.is_closed() {
                        client = None;
                    }
                    if !pause(&stop, wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// The applier's own session (its rounds may run long: a rebuild reads
    /// all of `events`); on failure, how long to wait before trying again.
    async fn connect(&self, backoff: &mut Backoff) -> Result<Client, Duration> {
        let error = match connect_session(&self.url, "streamer-applier", &self.session).await {
            Ok((c, _)) => match c.batch_execute("SET statement_timeout = '1h'").await {
                Ok(()) => return Ok(c),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let wait = backoff.step();
        warn!(error = %describe(&error), retry_in_ms = wait.as_millis() as u64, "the analytics applier cannot open its session; waiting");
        Err(wait)
    }

    async fn report(&self, client: &Client) {
        if let Ok(l) = lag(client).await {
            self.monitor.applier_lag(l);
        }
    }

    /// Waits `poll` or until woken; false when `stop` fired.
    async fn idle(&self, stop: &CancellationToken, poll: Duration) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.wake.notified() => true,
            _ = tokio::time::sleep(poll) => true,
        }
    }
}

/// Sleeps `wait` unless `stop` fires first; false when it did.
pub async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_scans_or_recounts_when_it_touches_a_big_part_of_events_unless_told_otherwise() {
        use Users::*;
        // Measured cases (see SCAN_ROWS_PER_ENTRY and
        // RECOUNT_ROWS_PER_ENTRY): a backlog's round of 473 736 entries
        // against 600 000 rows, and of 122 675 against 300 000; one batch
        // of 120 000 entries against the day it shares with 600 000 rows;
        // one of 122 693 entries into 5.3 M rows when its range is all of
        // them (late data over the years the table holds) and when it is
        // the batch's own day (150 000 rows); a 1 500-row file against a
        // range of 600 000.
        let mb = 1_000_000;
        assert_eq!(choose(473_736, Some(600_000.0), 100 * mb, ""), RecountRange);
        assert_eq!(choose(122_675, Some(300_000.0), 50 * mb, ""), RecountRange);
        assert_eq!(choose(120_000, Some(750_000.0), 120 * mb, ""), ScanRange);
        assert_eq!(choose(122_693, Some(5_300_000.0), 690 * mb, ""), Probe);
        assert_eq!(choose(122_693, Some(150_000.0), 690 * mb, ""), RecountRange);
        assert_eq!(choose(1_500, Some(600_000.0), 100 * mb, ""), Probe);
        // A small round is not recounted, however few rows its range seems
        // to hold (a live stream's newest minute, past the statistics).
        assert_eq!(choose(1_500, Some(5.0), 100 * mb, ""), ScanRange);
        assert_eq!(choose(RECOUNT_ENTRIES - 1, Some(0.0), 0, ""), ScanRange);
        assert_eq!(choose(RECOUNT_ENTRIES, Some(0.0), 0, ""), RecountRange);
        assert_eq!(choose(1, Some(0.0), 0, ""), ScanRange, "an empty range is scanned");
        assert_eq!(choose(1, Some(f64::INFINITY), 0, ""), Probe, "no estimate: probes");
        // No statistics yet: sized by its bytes, and read whole.
        assert_eq!(choose(473_736, None, 100 * mb, ""), RecountAll);
        assert_eq!(choose(122_675, None, 77 * mb, ""), ScanAll);
        assert_eq!(choose(122_693, None, 690 * mb, ""), Probe);
        assert_eq!(choose(1, None, 0, ""), ScanAll, "an empty table is scanned");
        // The override.
        assert_eq!(choose(473_736, Some(1.0), 1, "probe"), Probe);
        assert_eq!(choose(473_736, Some(1.0), 1, "scan"), ScanRange);
        assert_eq!(choose(1, Some(f64::MAX), i64::MAX, "scan"), ScanRange);
        assert_eq!(choose(1, None, i64::MAX, "scan"), ScanAll);
        assert_eq!(choose(1, Some(f64::MAX), i64::MAX, "recount"), RecountRange);
        assert_eq!(choose(1, None, i64::MAX, "recount"), RecountAll);
        assert_eq!(choose(i64::MAX, None, i64::MAX, ""), RecountAll, "no overflow");
    }

    #[test]
    fn the_estimate_is_the_top_plan_nodes_rows() {
        let explain = r#"[{"Plan": {"Node Type": "Index Only Scan", "Plan Rows": 1234, "Plans": [{"Plan Rows": 9}]}}]"#;
        assert_eq!(plan_rows(explain), Some(1234.0));
        assert_eq!(plan_rows("[]"), None);
        assert_eq!(plan_rows("not json"), None);
    }

    #[test]
    fn the_other_forms_swap_the_present_part_and_nothing_else() {
        use Users::*;
        let (start, end) = ("-- <present>\n", "-- </present>\n");
        let a = APPLY_METRICS.find(start).expect("start marker");
        let b = APPLY_METRICS.find(end).expect("end marker") + end.len();
        let capped = "LIMIT abs(g.net) + 1) x) AS now";
        assert!(APPLY_METRICS.contains(capped));
        assert!(APPLY_METRICS[a..b].contains("users AS ("), "the part swapped defines the users' change");
        assert_eq!(apply_metrics(Probe), APPLY_METRICS);
        let range_lines = "current_setting('pipeline.round_from')";
        let (sorts_off, sorts_back) = ("SET LOCAL enable_sort = off;\n", "current_setting('pipeline.enable_sort')");
        for (users, part) in [
            (ScanRange, PRESENT_SCAN.to_owned()),
            (ScanAll, splice(PRESENT_SCAN, "range", "")),
            (Join, PRESENT_JOIN.to_owned()),
            (RecountRange, PRESENT_RECOUNT.to_owned()),
            (RecountAll, splice(PRESENT_RECOUNT, "range", "")),
        ] {
            let recount = matches!(users, RecountRange | RecountAll);
            let form = apply_metrics(users);
            // The recount runs with sorts off, and the setting is put back.
            let other = if recount {
                let fold = form.strip_prefix(&form[..form.find(sorts_off).expect("sorts off") + sorts_off.len()]);
                let fold = fold.and_then(|f| f.rsplit_once("\nSELECT set_config('enable_sort'")).expect("put back").0;
                assert!(form.trim_end().ends_with(&format!("{sorts_back}, true);")), "{users:?}");
                fold
            } else {
                assert!(!form.contains("enable_sort"), "{users:?}");
                form
            };
            let scan = matches!(users, ScanRange | ScanAll);
            assert_eq!(other.contains("touched AS (SELECT DISTINCT window_start, user_id FROM nets)"), scan);
            assert_eq!(other.contains("count(e.user_id) AS now"), users == Join, "{users:?}");
            assert_eq!(other.contains("coalesce(c.users, 0) - coalesce(m.users, 0)"), recount, "{users:?}");
            assert!(!other.contains(capped), "{users:?}");
            assert_eq!(other.contains(range_lines), matches!(users, ScanRange | RecountRange), "{users:?}");
            assert_eq!(other.matches("users AS (").count(), 1, "{users:?}");
            assert!(other.starts_with(&APPLY_METRICS[..a]));
            assert!(other.ends_with(&APPLY_METRICS[b..]));
            assert_eq!(other.len(), a + part.len() + APPLY_METRICS.len() - b);
        }
        for part in [PRESENT_SCAN, PRESENT_RECOUNT] {
            assert!(part.contains("-- <range>\n") && part.contains("-- </range>\n"));
            assert!(part.contains(range_lines));
        }
    }
}
