//! The windowed metrics and the counters datamart (db/003_analytics.sql)
//! equal their GROUP BY definitions over `events` after every batch: with
//! upserts that change a row's type, product, category and price, with
//! duplicates and bad rows, when the window width changes, and on a database
//! that had events before the analytics tables existed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::common::*;
use rand::{Rng, SeedableRng};

const CATEGORIES: [&str; 3] = ["Books", "Toys", "Garden"];

/// A file of `rows` random rows over a small key space (15 users, 4 minutes
/// of whole and half seconds), so later files overwrite earlier keys with
/// other values; about one row in 40 is invalid.
pub fn random_file(dir: &Path, name: &str, rows: usize, rng: &mut impl Rng) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut out = std::fs::File::create(&tmp).expect("test file");
    writeln!(out, "{}", contract::COLUMNS.join(",")).expect("write");
    for _ in 0..rows {
        let user = rng.random_range(1..=15);
        let millis = rng.random_range(0..480) * 500;
        let time = instant("2026-03-01T12:00:00Z") + chrono::TimeDelta::milliseconds(millis);
        let kind = if rng.random_bool(0.3) { "purchase" } else { "view" };
        let product = rng.random_range(1..=8);
        let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
        let cents = rng.random_range(1..100_000);
        let price =
            if rng.random_bool(0.025) { "-1".to_owned() } else { format!("{}.{:02}", cents / 100, cents % 100) };
        writeln!(
            out,
            "{user},User {user},u{user}@example.com,{kind},{product},Product {product},{category},{price},{}",
            time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
        .expect("write");
    }
    drop(out);
    std::fs::rename(&tmp, &path).expect("publish");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_after_random_batches_with_upserts() -> TestResult {
    random_batches_equal_their_group_by("probe", false, false, true).await
}

/// The same with every join of the database's sessions hashed, as the
/// planner does for a backlog's big rounds (the small rounds above probe
/// indexes): the applier's distinct-user count then matches the touched
/// users and cells to their rows by a hash join over a scan of `events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_hashes_its_joins() -> TestResult {
    random_batches_equal_their_group_by("probe", true, false, false).await
}

/// The same with the distinct users counted once per touched (user,
/// window), the form a round that touches a big part of `events` takes;
/// `events` has no statistics, so the scan reads all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_counts_users_by_one_scan() -> TestResult {
    random_batches_equal_their_group_by("scan", false, false, false).await
}

/// The same with `events` analyzed after every round: the scan reads only
/// the rows in the round's time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_scans_the_rounds_time_range() -> TestResult {
    random_batches_equal_their_group_by("scan", false, true, true).await
}

/// The same with the touched cells' distinct users counted again from
/// scratch, the form a round whose users have most of its range's rows
/// takes; `events` has no statistics, so the recount reads all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_recounts_the_touched_cells() -> TestResult {
    random_batches_equal_their_group_by("recount", false, false, false).await
}

/// The same with `events` analyzed after every round, in lanes: the
/// recount reads only the rows in the round's time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_recounts_the_rounds_time_range() -> TestResult {
    random_batches_equal_their_group_by("recount", false, true, true).await
}

/// `join`: the applier's distinct-user count (`pipeline.applier_join`);
/// `hash_joins`: every join of the database's sessions hashed; `analyze`:
/// `events` analyzed after every round (the applier's scan then reads only
/// the round's time range); `lanes`: every round split in the applier's two
/// lanes, however small (else these small rounds are whole ones).
async fn random_batches_equal_their_group_by(join: &str, hash_joins: bool, analyze: bool, lanes: bool) -> TestResult {
    let mut rng = seeded_rng("ANALYTICS_SEED");
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let client = db.client().await;
    // New sessions (the streamer's) take the database's settings.
    let mut settings = vec![format!("pipeline.applier_join = '{join}'")];
    if hash_joins {
        settings.extend(["enable_nestloop = off".to_owned(), "enable_mergejoin = off".to_owned()]);
    }
    if lanes {
        settings.push(ALWAYS_LANES.to_owned());
    }
    for setting in settings {
        database_set(&client, &format!("SET {setting}")).await;
    }
    let mut files = Vec::new();
    // At least eight rounds, and on until the upserts changed enough rows in
    // place (with a random seed, eight rounds sometimes changed only 40).
    let mut updated = 0;
    for round in 0..24 {
        if round >= 8 && updated > 50 {
            break;
        }
        for k in 0..rng.random_range(1..=3) {
            let rows = rng.random_range(20..150);
            files.push(random_file(&data, &format!("r{round:02}_{k}.csv"), rows, &mut rng));
        }
        // Several files per batch (duplicates across files) or one per
        // batch; sometimes in chunks so small that a batch writes its
        // counters out in several rows, which the applier groups first.
        let per_batch = rng.random_range(1..=3).to_string();
        let chunk = if rng.random_bool(0.3) { "400" } else { "4194304" };
        let flags = ["--once", "--max-files-per-batch", &per_batch, "--chunk-bytes", chunk];
        streamer::run(args(&data, &cp, &db.url, &flags), Default::default()).await?;
        let (expected, _) = oracle(&files);
        assert!(table(&client).await == expected, "round {round}: events differs from the oracle");
        let sizes = assert_analytics_exact(&client).await;
        assert!(sizes.iter().all(|&n| n > 0), "round {round}: an analytics table is empty: {sizes:?}");
        updated = count(&client, "SELECT sum(rows_updated)::int8 FROM load_history").await;
        if analyze {
            client.batch_execute("ANALYZE events").await?;
        }
    }
    // The rounds did exercise the hard path: rows changed in place.
    assert!(updated > 50, "only {updated} rows were updated: the test lost its point");
    let windows = count(&client, "SELECT count(DISTINCT window_start) FROM event_metrics_minute").await;
    assert_eq!(windows, 4, "four minutes of data make four one-minute windows");

    // A round whose windows are apart: rows deleted by hand in the first
    // minute (the users keep other rows there) and a file in the last. The
    // scan form reads only the round's time range: it must span both.
    let deleted = client
        .execute(
            "DELETE FROM events WHERE event_id IN (SELECT min(event_id) FROM events \
             WHERE event_time < '2026-03-01T12:01:00Z' GROUP BY user_id, product_category HAVING count(*) > 1)",
            &[],
        )
        .await?;
    assert!(deleted > 0, "the first minute has users with several rows in a category");
    let last = data.join("last_minute.csv");
    let mut lines = vec![contract::COLUMNS.join(",")];
    lines.extend((1..=5).map(|u| {
        format!("{u},User {u},u{u}@example.com,view,1,Product 1,{},9.99,2026-03-01T12:03:59.{u}75Z", CATEGORIES[0])
    }));
    std::fs::write(data.join(".last.tmp"), lines.join("\n") + "\n")?;
    std::fs::rename(data.join(".last.tmp"), &last)?;
    streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM events WHERE to_char(event_time, 'MS') LIKE '_75'").await, 5);
    assert_analytics_exact(&client).await;
    Ok(())
}

async fn width(client: &tokio_postgres::Client) -> i64 {
    count(client, "SELECT window_seconds::int8 FROM analytics_settings").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_window_width_rebuilds_the_metrics_and_analytics_off_then_on_catches_up_without_a_rebuild() -> TestResult
{
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for k in 0..4 {
        random_file(&data, &format!("f{k}.csv"), 200, &mut rng);
    }
    let client = db.client().await;
    let run = |extra: &'static [&'static str]| {
        let (data, cp, url) = (data.clone(), cp.clone(), db.url.clone());
        async move {
            let mut flags = vec!["--once"];
            flags.extend_from_slice(extra);
            streamer::run(args(&data, &cp, &url, &flags), Default::default()).await
        }
    };

    run(&[]).await?;
    assert_eq!(width(&client).await, 60);
    assert_analytics_exact(&client).await;
    let misaligned = count(
        &client,
        "SELECT count(*) FROM event_metrics_minute WHERE window_start <> date_trunc('minute', window_start)",
    )
    .await;
    assert_eq!(misaligned, 0, "one-minute windows start on the minute");
    let minute_windows = count(&client, "SELECT count(DISTINCT window_start) FROM event_metrics_minute").await;

    // Nothing new to load, another width: the table is rebuilt.
    run(&["--metrics-window", "15"]).await?;
    assert_eq!(width(&client).await, 15);
    assert_analytics_exact(&client).await;
    let quarter_windows = count(&client, "SELECT count(DISTINCT window_start) FROM event_metrics_minute").await;
    assert_eq!((minute_windows, quarter_windows), (4, 16), "four minutes of data");

    // Analytics off: events go on loading, the derived tables wait (the
    // batch's deltas are kept, not applied).
    let before: i64 =
        count(&client, "SELECT coalesce(sum(views + purchases), 0)::int8 FROM event_metrics_minute").await;
    random_file(&data, "f4.csv", 200, &mut rng);
    run(&["--analytics", "false", "--metrics-window", "15"]).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 5);
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 1, "waiting");
    let still: i64 = count(&client, "SELECT coalesce(sum(views + purchases), 0)::int8 FROM event_metrics_minute").await;
    assert_eq!(still, before, "not applied while off");
    // On again: the applier folds what waited, with no rebuild.
    run(&["--metrics-window", "15"]).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 0);
    assert!(!client.query_one("SELECT needs_rebuild FROM analytics_settings", &[]).await?.get::<_, bool>(0));
    assert_analytics_exact(&client).await;

    // A database of a version without analytics: events, no settings, empty tables.
    client
        .batch_execute(
            "DELETE FROM analytics_settings; TRUNCATE event_metrics_minute, user_category_counts, user_product_counts",
        )
        .await?;
    run(&["--metrics-window", "60"]).await?;
    assert_eq!(width(&client).await, 60);
    let sizes = assert_analytics_exact(&client).await;
    assert!(sizes.iter().all(|&n| n > 0), "the analytics were built from events: {sizes:?}");
    Ok(())
}

/// A batch merges its chunks' counters and writes them once, each (user,
/// key) pair once and sorted, in parts of `COUNTERS_PART` pairs (here two
/// of one write), and the applier upserts them as written; a batch whose
/// pairs outgrew the loader's cap (here: 400-byte chunks, a cap of 100
/// pairs) wrote them out several times, which the applier groups first (an
/// upsert may meet a pair only once). Both fold exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_its_counters_merged_and_the_applier_folds_them_as_written() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    // 600 rows over 100 users, 10 products and 3 categories: each pair
    // comes back in many chunks; 100 pairs of each kind.
    let write = |name: &str, minute: u32| {
        let mut lines = vec![contract::COLUMNS.join(",")];
        lines.extend((0..600u32).map(|i| {
            let (user, product) = (i % 100 + 1, i % 10 + 1);
            let kind = if i % 7 == 0 { "purchase" } else { "view" };
            let category = CATEGORIES[(product % 3) as usize];
            format!(
                "{user},User {user},u{user}@example.com,{kind},{product},Product {product},{category},9.99,\
                 2026-03-01T12:{minute:02}:{:02}.{:03}Z",
                i / 10,
                i % 10
            )
        }));
        put_at(&data, name, (lines.join("\n") + "\n").as_bytes(), std::time::SystemTime::now());
    };
    let client = db.client().await;
    let run = |flags: &'static [&'static str]| {
        let (data, cp, url) = (data.clone(), cp.clone(), db.url.clone());
        async move {
            let mut all = vec!["--once"];
            all.extend_from_slice(flags);
            streamer::run(args(&data, &cp, &url, &all), Default::default()).await
        }
    };
    // The analytics on first (the tables are built), then two batches
    // whose deltas wait: one in one chunk, one in 400-byte chunks.
    write("a.csv", 0);
    run(&[]).await?;
    write("b.csv", 1);
    run(&["--analytics", "false"]).await?;
    write("c.csv", 2);
    run(&["--analytics", "false", "--chunk-bytes", "400"]).await?;
    let rows = |table: &str| {
        format!(
            "SELECT count(*), count(DISTINCT d.flush), max(cardinality(d.user_ids)) FROM counters_delta d \
             JOIN batches b USING (batch_seq) WHERE d.{table} IS NOT NULL GROUP BY d.batch_seq ORDER BY d.batch_seq"
        )
    };
    let part = streamer::sink::COUNTERS_PART as i32;
    for table in ["product_ids", "categories"] {
        let per_batch: Vec<(i64, i64, i32)> =
            client.query(&rows(table), &[]).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        assert_eq!(per_batch.len(), 2, "{table}: two batches wait");
        assert_eq!(per_batch[0], (2, 1, part), "{table}: one chunk, one write of 100 pairs in two parts");
        assert!(per_batch[1].1 > 1, "{table}: past the cap, several writes: {per_batch:?}");
        assert!(per_batch[1].2 <= part, "{table}: no part over {part} pairs: {per_batch:?}");
    }
    // The one-write batch's pairs: each once, in (user, product) order
    // across its parts.
    let unsorted = count(
        &client,
        "SELECT count(*) FROM (SELECT u.user_id, u.product_id, lag(u.user_id) OVER w AS pu, lag(u.product_id) OVER w AS pp \
         FROM counters_delta d, unnest(d.user_ids, d.product_ids) WITH ORDINALITY AS u(user_id, product_id, n) \
         WHERE d.product_ids IS NOT NULL AND d.batch_seq = (SELECT min(batch_seq) FROM counters_delta) \
         WINDOW w AS (ORDER BY d.ctid, u.n)) x WHERE (pu, pp) >= (user_id, product_id)",
    )
    .await;
    assert_eq!(unsorted, 0, "one write: each pair once, sorted");
    // The applier folds both (a fold that failed would be retried forever:
    // the run would not return).
    tokio::time::timeout(std::time::Duration::from_secs(120), run(&[])).await??;
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 0);
    assert_analytics_exact(&client).await;
    Ok(())
}

/// The applier updates the counters in place on their pages (HOT: no new
/// index entry), because db/010 leaves room there: a second batch that
/// touches every other user's pairs again finds room on the pages of the
/// first one. Full pages (fillfactor 100) turn nearly every such update into
/// a new index entry on another page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_updates_stay_on_their_pages() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    // 4 000 users, each one view of product 7 in Books: 4 000 new pairs in
    // each counters table (tens of pages); then every other user again.
    let users = 4_000;
    let write = |name: &str, step: usize, minute: u32| {
        let mut lines = vec![contract::COLUMNS.join(",")];
        lines.extend((1..=users).step_by(step).map(|u| {
            format!("{u},User {u},u{u}@example.com,view,7,Product 7,Books,9.99,2026-03-01T12:{minute:02}:00.{u:04}Z")
        }));
        put_at(&data, name, (lines.join("\n") + "\n").as_bytes(), std::time::SystemTime::now());
    };
    let client = db.client().await;
    write("first.csv", 1, 0);
    streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    write("second.csv", 2, 1);
    streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    assert_analytics_exact(&client).await;

    for (table, fillfactor) in [("event_metrics_minute", 50), ("user_category_counts", 60), ("user_product_counts", 80)]
    {
        let options: Vec<String> = client
            .query_one("SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = $1::text::regclass", &[&table])
            .await?
            .get(0);
        assert_eq!(options, [format!("fillfactor={fillfactor}")], "{table}");
    }
    // The applier's session reported its counts when it ended; the
    // statistics collector shows them shortly after.
    let stats = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1";
    for (table, least) in [("user_category_counts", 0.9), ("user_product_counts", 0.3)] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (updated, hot) = loop {
            let row = client.query_one(stats, &[&table]).await?;
            let (updated, hot): (i64, i64) = (row.get(0), row.get(1));
            if updated >= users as i64 / 2 || std::time::Instant::now() > deadline {
                break (updated, hot);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(updated, users as i64 / 2, "{table}: every other pair updated once");
        assert!(hot as f64 >= least * updated as f64, "{table}: only {hot} of {updated} updates were HOT");
    }
    Ok(())
}

#[tokio::test]
async fn the_streamer_session_compiles_nothing_with_jit() -> TestResult {
    // JIT compiled the batch statements for about 200 ms a batch.
    let db = TestDb::new().await;
    let (client, _) = streamer::pg::connect_session(
        &streamer::pg::Target::parse(&db.url)?,
        "test",
        &streamer::pg::Session::default(),
    )
    .await?;
    let jit: String = client.query_one("SHOW jit", &[]).await?.get(0);
    assert_eq!(jit, "off");
    Ok(())
}

/// Splits every round of the applier in its two lanes, however small.
const ALWAYS_LANES: &str = "pipeline.applier_lane_pairs = '0'";

/// Rows of `applier_marks` of batches one lane has folded and the other
/// not yet.
async fn half_marked(client: &tokio_postgres::Client) -> i64 {
    count(client, "SELECT count(*) FROM (SELECT batch_seq FROM applier_marks GROUP BY 1 HAVING count(*) = 1) x").await
}

/// Nothing of the applier's work is left over: every batch finished, no
/// delta, no mark.
async fn assert_applier_drained(client: &tokio_postgres::Client) {
    for (what, sql) in [
        ("unapplied batches", "SELECT count(*) FROM batches WHERE applied_at IS NULL"),
        ("lane marks", "SELECT count(*) FROM applier_marks"),
        ("metrics deltas", "SELECT count(*) FROM metrics_delta"),
        ("counters deltas", "SELECT count(*) FROM counters_delta"),
        ("rows to fold", "SELECT count(*) FROM analytics_rows"),
    ] {
        assert_eq!(count(client, sql).await, 0, "{what} left");
    }
}

/// The applier's two lanes commit apart, so a crash can fall between them:
/// one lane has folded a batch and marked it, the other has not, and the
/// batch's deltas are still there. The real binary aborts at random right
/// after a lane's COMMIT (`applier_lane`), over runs of upserting files and
/// edits by hand (which only a whole round folds, so whole rounds meet
/// half-marked batches too). After a last clean run every derived table
/// equals its GROUP BY over `events`, and nothing is left over: no delta
/// was lost or folded twice by either lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applier_killed_between_its_two_lanes_neither_loses_nor_doubles_a_delta() -> TestResult {
    killed_between_lanes(None).await
}

/// The same with every round counting its cells' distinct users again from
/// scratch (`pipeline.applier_join = 'recount'`): a half-marked batch's
/// cells are counted against what lane 1 stored when it folded them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applier_killed_between_its_lanes_while_recounting_neither_loses_nor_doubles_a_delta() -> TestResult {
    killed_between_lanes(Some("recount")).await
}

/// `join`: the distinct-user count forced on the database, if any.
async fn killed_between_lanes(join: Option<&str>) -> TestResult {
    let mut rng = seeded_rng("ANALYTICS_SEED");
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let client = db.client().await;
    database_set(&client, &format!("SET {ALWAYS_LANES}")).await;
    if let Some(join) = join {
        database_set(&client, &format!("SET pipeline.applier_join = '{join}'")).await;
    }
    let flags = ["--once", "--max-files-per-batch", "1"];
    let (mut runs, mut crashes, mut halves, mut edits) = (0, 0, 0, 0);
    while runs < 8 || halves < 2 || edits < 2 {
        assert!(runs < 60, "after {runs} runs: {crashes} crashes, {halves} left a half-marked batch, {edits} edits");
        for k in 0..rng.random_range(1..=3) {
            let rows = rng.random_range(50..200);
            random_file(&data, &format!("r{runs:02}_{k}.csv"), rows, &mut rng);
        }
        let out = streamer_bin(&data, &cp, &db.url, &flags, &[("STREAMER_CRASH_AT", "applier_lane:0.5")]).output()?;
        runs += 1;
        if out.status.success() {
            assert_analytics_exact(&client).await;
            assert_applier_drained(&client).await;
        } else {
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(log.contains("crash point applier_lane hit"), "the run failed otherwise:\n{log}");
            crashes += 1;
            if half_marked(&client).await > 0 {
                halves += 1;
                // An edit by hand while a batch is half marked: the next
                // round is a whole one over both lanes' leftovers.
                if halves % 2 == 0 {
                    let changed = client
                        .execute(
                            "UPDATE events SET event_type = CASE event_type WHEN 'view' THEN 'purchase' ELSE 'view' END \
                             WHERE event_id IN (SELECT event_id FROM events ORDER BY event_id LIMIT 3)",
                            &[],
                        )
                        .await?;
                    assert_eq!(changed, 3);
                    edits += 1;
                }
            }
        }
    }
    let out = streamer_bin(&data, &cp, &db.url, &["--once"], &[]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sizes = assert_analytics_exact(&client).await;
    assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
    assert_applier_drained(&client).await;
    println!("{runs} runs, {crashes} crashes, {halves} left a half-marked batch, {edits} edits by hand");
    Ok(())
}

/// A replaced applier's second session may still be in its lane round when
/// the new owner starts: the new owner's lane 2 waits for its lock (held
/// here by the test), lane 1 goes on alone, and no batch is finished until
/// both have it; once the lock is let go, everything is folded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lane_two_held_by_another_session_waits_then_every_batch_is_folded_once() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    database_set(&db.client().await, &format!("SET {ALWAYS_LANES}")).await;
    let flags = ["--once", "--max-files-per-batch", "1"];
    // A first run makes the tables (its first round is a whole one: the
    // rebuild of a database that had no analytics).
    random_file(&data, "f0.csv", 150, &mut rng);
    streamer::run(args(&data, &cp, &db.url, &flags), Default::default()).await?;
    for k in 1..=4 {
        random_file(&data, &format!("f{k}.csv"), 150, &mut rng);
    }
    let client = db.client().await;
    let products_sum = "SELECT sum(views + purchases)::int8 FROM user_product_counts";
    let products = count(&client, products_sum).await;
    let holder = db.client().await;
    let (class, object) = streamer::sink::lock::APPLIER_LANE;
    holder.execute("SELECT pg_advisory_lock($1, $2)", &[&class, &object]).await?;

    let run = tokio::spawn(streamer::run(args(&data, &cp, &db.url, &flags), Default::default()));
    // Lane 1 marks all four batches; none is finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&client, "SELECT count(*) FROM applier_marks WHERE lane = 1").await < 4 {
        assert!(std::time::Instant::now() < deadline, "lane 1 did not fold the four batches");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM applier_marks WHERE lane = 2").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 4, "none finished");
    assert_eq!(count(&client, products_sum).await, products, "lane 2 folded nothing");
    // Lane 1's tables are exact meanwhile, with all five files' rows.
    for (table, definition) in &ANALYTICS_DEFINITIONS[..2] {
        let differ = format!("SELECT count(*) FROM ((({table}) EXCEPT ALL ({definition})) UNION ALL (({definition}) EXCEPT ALL ({table}))) d");
        assert_eq!(count(&client, &differ).await, 0, "{table}");
    }
    assert!(!run.is_finished(), "--once waits for the derived tables");

    holder.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]).await?;
    tokio::time::timeout(std::time::Duration::from_secs(60), run).await???;
    assert_analytics_exact(&client).await;
    assert_applier_drained(&client).await;
    Ok(())
}

/// When the applier cannot open its second session (here the database's
/// connection limit is reached once the streamer's other sessions are in),
/// it says so and runs whole rounds on its one session: the batches the
/// analytics waited for are folded, exactly, with no lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_second_session_the_applier_says_so_and_runs_whole_rounds() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for k in 0..4 {
        random_file(&data, &format!("f{k}.csv"), 150, &mut rng);
    }
    // The limit binds roles without SUPERUSER: the streamer runs as one
    // that owns the database.
    let role = format!("r_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&admin_url()).await;
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN; ALTER DATABASE {} OWNER TO {role}", db.name)).await?;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let client = db.client().await;
    database_set(&client, &format!("SET {ALWAYS_LANES}")).await;

    let outcome = async {
        // The batches commit; their analytics wait.
        let flags = ["--once", "--analytics", "false", "--max-files-per-batch", "1"];
        let out = streamer_bin(&data, &cp, &url, &flags, &[]).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 4);

        // The applier's role held here until the streamer's sessions are in.
        let (class, object) = streamer::sink::lock::APPLIER;
        let holder = db.client().await;
        holder.execute("SELECT pg_advisory_lock($1, $2)", &[&class, &object]).await?;
        let log = dir.path().join("run.log");
        let mut child = streamer_bin(&data, &cp, &url, &["--once", "--loaders", "1"], &[("NO_COLOR", "1")])
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let in_db = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()";
        let applier = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                       AND application_name = 'streamer-applier'";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while count(&client, applier).await == 0 {
            assert!(std::time::Instant::now() < deadline, "the applier's session did not come");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = count(&client, in_db).await;
        client.batch_execute(&format!("ALTER DATABASE {} CONNECTION LIMIT {now}", db.name)).await?;
        holder.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]).await?;

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill()?;
                panic!("the run did not end:\n{}", std::fs::read_to_string(&log)?);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let text = std::fs::read_to_string(&log)?;
        assert!(status.success(), "{text}");
        assert!(text.contains("cannot open its second session"), "{text}");
        assert_analytics_exact(&client).await;
        assert_applier_drained(&client).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} CONNECTION LIMIT -1; ALTER DATABASE {} OWNER TO postgres",
            db.name, db.name
        ))
        .await?;
    drop(client);
    drop(db);
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await.ok();
    outcome
}

/// The probe form counts each touched (user, window, category) once: its
/// plan holds one scan of `events`. `users` reads `now` twice, and without
/// `MATERIALIZED` PostgreSQL inlines `present` into both reads, which ran
/// every index probe twice (a quarter of a sustained round's fold).
#[tokio::test]
async fn the_probe_form_reads_events_once_per_touched_user() -> TestResult {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    streamer::sink::schema::migrate(&mut client).await?;
    let fold = include_str!("../../src/sink/sql/apply_metrics.sql");
    // The fold's first statement: the upsert of the metrics.
    let upsert = fold.split(";\n").next().ok_or("no statement")?;
    let plan = explain(&client, upsert, &[]).await;
    let events = plan.lines().filter(|l| l.ends_with(" on events") || l.contains(" on events ")).count();
    assert_eq!(events, 1, "the probe form's plan scans events {events} times:\n{plan}");
    Ok(())
}
