//! The stream end to end, through the library, against a real PostgreSQL
//! (one fresh database per test), checked against the oracle (docs/architecture.md).

use std::time::Duration;

use crate::common::*;
use contract::HEADER;
use generator::Settings;
use streamer::checkpoint::Checkpoint;
use tokio_util::sync::CancellationToken;

fn settings(seed: u64) -> Settings {
    Settings { seed, min_events: 50, max_events: 400, duplicate_rate: 0.1, ..Settings::default() }
}

async fn run_once(args: streamer::Config) -> streamer::RunSummary {
    streamer::run(args, CancellationToken::new()).await.expect("the stream runs")
}

#[tokio::test]
async fn loads_generated_files_exactly_as_the_oracle_says() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(1), 20);
    // One loader: two would share the backlog (any batching gives the same table).
    let summary =
        run_once(args(&data, &cp, &db.url, &["--once", "--loaders", "1", "--max-files-per-batch", "7"])).await;

    let (expected, invalid) = oracle(&files);
    assert_eq!(invalid, 0);
    let client = db.client().await;
    assert_eq!(table(&client).await, expected, "events equals the oracle, every column");
    assert_eq!(summary.totals.batches, 3);
    assert_eq!(summary.totals.files, 20);
    assert!(summary.totals.duplicates > 0, "the data has duplicates inside and across files");
    assert_eq!(summary.totals.inserted, expected.len() as u64);

    let history = client
        .query(
            "SELECT count(*), count(DISTINCT file_name), sum(rows_read), sum(rows_inserted), sum(rows_duplicate), \
             bool_and(status = 'loaded'), bool_or(reingest) FROM load_history",
            &[],
        )
        .await?;
    let r = &history[0];
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (20, 20), "each file once in the load history");
    let rows: i64 =
        files.iter().map(|f| std::fs::read_to_string(f).map(|s| s.lines().count() as i64 - 1).unwrap_or(0)).sum();
    assert_eq!(r.get::<_, rust_decimal::Decimal>(2), rows.into());
    assert_eq!(r.get::<_, rust_decimal::Decimal>(3), (expected.len() as i64).into());
    assert!(r.get::<_, bool>(5));
    assert!(!r.get::<_, bool>(6));
    assert!(cp.join("commits/2").exists() && cp.join("offsets/2").exists());
    let progress = std::fs::read_to_string(cp.join("progress/progress.jsonl"))?;
    assert_eq!(progress.lines().count(), 3);
    // Each record says when its COMMIT returned: after the batch's last
    // statement in the database, before the record itself.
    for line in progress.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        let at = |k: &str| record[k].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let (committed, written) = (at("committed_at").ok_or("committed_at")?, at("timestamp").ok_or("timestamp")?);
        let batch = client
            .query_one(
                "SELECT min(batch_started_at), max(committed_at) FROM load_history WHERE batch_id = $1",
                &[&record["batch_id"].as_i64()],
            )
            .await?;
        let (started, in_db): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            (batch.get(0), batch.get(1));
        assert!(in_db <= committed && committed <= written, "{in_db} <= {committed} <= {written}");
        // The phases (one chunk per batch here) add up to no more than the
        // batch's time from its start to its COMMIT's return.
        let wall_ms = (committed.with_timezone(&chrono::Utc) - started).num_microseconds().ok_or("µs")? as f64 / 1e3;
        let phase = |k: &str| record["phases"][k].as_f64().ok_or(k.to_owned());
        let total_ms = phase("total_ms")?;
        assert!(total_ms <= wall_ms + 1.0, "phases {total_ms} ms within the batch's {wall_ms} ms");
        // The total is the batch's own time: it holds its claim and plan, or
        // the read and dedup of the first (here only) chunk, which starts
        // with the plan, then its load and its COMMIT.
        let (discover, read, load, commit) =
            (phase("discover_ms")?, phase("read_ms")?, phase("load_ms")?, phase("commit_ms")?);
        assert!(
            total_ms + 0.1 >= discover.max(read) + load + commit,
            "total {total_ms} ms holds claim {discover} or read {read}, then load {load} and commit {commit} ms"
        );
    }
    Ok(())
}

/// A batch loaded in many small chunks (cross-chunk duplicates settled in
/// SQL) ends exactly as the same batch loaded in one chunk: same table, same
/// per-file counts in the load history.
#[tokio::test]
async fn a_batch_in_many_chunks_equals_the_batch_in_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let files = generate(&data, settings(11), 12);
    let history =
        "SELECT file_name, rows_read, rows_inserted, rows_updated, rows_unchanged, rows_duplicate, rows_rejected \
                   FROM load_history ORDER BY file_name";
    let mut results = Vec::new();
    for (i, chunk) in ["2048", "33554432"].iter().enumerate() {
        let db = TestDb::new().await;
        let cp = dir.path().join(format!("cp{i}"));
        let summary = run_once(args(&data, &cp, &db.url, &["--once", "--loaders", "1", "--chunk-bytes", chunk])).await;
        assert_eq!(summary.totals.batches, 1);
        let client = db.client().await;
        let rows: Vec<Vec<i64>> =
            client.query(history, &[]).await?.iter().map(|r| (1..7).map(|c| r.get::<_, i64>(c)).collect()).collect();
        results.push((table(&client).await, rows, summary.totals.duplicates));
    }
    let (expected, _) = oracle(&files);
    assert_eq!(results[0].0, expected, "many chunks: events equals the oracle");
    assert_eq!(results[1].0, expected, "one chunk: events equals the oracle");
    assert_eq!(results[0].1, results[1].1, "the same counts per file");
    assert!(results[0].2 > 0 && results[0].2 == results[1].2);
    Ok(())
}

/// The same, over rows stored before the batch: a batch of random upserts
/// merged chunk by chunk (keys written by one chunk and written over by a
/// later one) counts per file exactly as the batch merged in one chunk —
/// inserted, updated, unchanged (a file copied again), lost to a later row
/// or to a newer stored row (a file older than the stored rows) — and the
/// derived tables stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_many_chunks_counts_as_one_over_stored_rows() -> TestResult {
    let mut rng = seeded_rng("CHUNKS_SEED");
    let dir = tempfile::tempdir()?;
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first)?;
    std::fs::create_dir_all(&second)?;
    let base = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let at = |path: &std::path::Path, secs: u64| -> std::io::Result<()> {
        std::fs::File::options().write(true).open(path)?.set_modified(base + Duration::from_secs(secs))
    };
    // Stored first: three files. Then one batch of five: an old file (its
    // rows lose to the stored ones of its keys), a copy of a stored file
    // (its rows find their keys holding their values), three new files.
    let mut stored = Vec::new();
    for k in 0..3 {
        let path = crate::analytics::random_file(&first, &format!("a{k}.csv"), 300, &mut rng);
        at(&path, 100 + k)?;
        stored.push(path);
    }
    let old = crate::analytics::random_file(&second, "b_old.csv", 300, &mut rng);
    at(&old, 10)?;
    let copy = second.join("b_copy.csv");
    std::fs::copy(&stored[1], &copy)?;
    at(&copy, 200)?;
    let mut batch = vec![old.clone(), copy.clone()];
    for k in 0..3 {
        let path = crate::analytics::random_file(&second, &format!("c{k}.csv"), 300, &mut rng);
        at(&path, 300 + k)?;
        batch.push(path);
    }
    let history = "SELECT file_name, rows_read, rows_inserted, rows_updated, rows_unchanged, rows_duplicate, \
                   rows_rejected FROM load_history ORDER BY file_name";
    let mut results = Vec::new();
    for chunk in ["2048", "33554432"] {
        let db = TestDb::new().await;
        let data = dir.path().join(format!("data{chunk}"));
        let cp = dir.path().join(format!("cp{chunk}"));
        copy_dir(&first, &data);
        let flags = ["--once", "--loaders", "1", "--chunk-bytes", chunk, "--analytics", "false"];
        run_once(args(&data, &cp, &db.url, &flags)).await;
        copy_dir(&second, &data);
        let summary = run_once(args(&data, &cp, &db.url, &flags)).await;
        assert_eq!(summary.totals.batches, 1, "the second round is one batch");
        let client = db.client().await;
        let superseded = count(&client, "SELECT count(*) FROM analytics_rows WHERE kind = 'superseded'").await;
        // The applier folds what the batch logged.
        run_once(args(&data, &cp, &db.url, &["--once", "--loaders", "1"])).await;
        let rows: Vec<(String, Vec<i64>)> = client
            .query(history, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), (1..7).map(|c| r.get::<_, i64>(c)).collect()))
            .collect();
        let mut in_order = vec![old.clone()];
        in_order.extend(stored.iter().cloned());
        in_order.extend(batch.iter().skip(1).cloned());
        assert!(table(&client).await == oracle(&in_order).0, "chunks of {chunk} bytes: events differs from the oracle");
        assert_analytics_exact(&client).await;
        results.push((rows, superseded));
    }
    let ((many, superseded), (one, none)) = (&results[0], &results[1]);
    assert!(
        *superseded > 0 && *none == 0,
        "small chunks wrote over their own rows {superseded} times, one chunk {none}"
    );
    assert_eq!(many, one, "the same counts per file");
    let col = |name: &str, c: usize| one.iter().find(|(f, _)| f == name).map_or(0, |(_, v)| v[c]);
    assert!(col("b_old.csv", 4) > 0, "rows of the old file lost to newer stored rows");
    assert!(col("b_copy.csv", 3) > 0, "rows of the copied file found their values stored");
    let sum = |c: usize| one.iter().map(|(_, v)| v[c]).sum::<i64>();
    assert!(sum(1) > 0 && sum(2) > 0 && sum(4) > 0 && sum(5) > 0, "inserted, updated, duplicate, rejected: {one:?}");
    Ok(())
}

/// A chunk none of whose keys is stored goes straight into `events` (COPY);
/// one that meets a stored key halfway (stored by an earlier run: the
/// session does not know it) is undone to its savepoint and split by a
/// look-up of its keys: its rows of stored keys are merged, the others
/// copied straight; the session's next batch is split without a try (none
/// of its keys is stored: all of it goes straight). Each path's result is
/// the oracle's, counts and derived tables included, and the progress
/// records say which path each batch took, how many rows it merged and how
/// many keys it looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_goes_straight_into_events_unless_it_meets_a_stored_key() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let base = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    // Users 1..=100 at one minute each; the second file also holds user 50's
    // key of the first, other values, in the middle of its key order (the
    // copy has sent about 100 rows when it meets it). The first file has a
    // column beyond the contract's, kept as JSON by the straight COPY too.
    let rows = |minute: u32, extra: bool| {
        (1..=100)
            .map(|u| {
                let more = if extra { format!(",c{u}") } else { String::new() };
                format!("{u},U{u},u{u}@x,view,{u},P{u},Home,1.50,2026-03-01T12:{minute:02}:00Z{more}\n")
            })
            .collect::<String>()
    };
    let stored_again = "50,U50,u50@x,purchase,7,P7,Toys,9.99,2026-03-01T12:00:00Z\n";
    let files = [
        ("f1.csv", format!("{HEADER},coupon\n{}", rows(0, true))),
        ("f2.csv", format!("{HEADER}\n{}{stored_again}", rows(1, false))),
        ("f3.csv", format!("{HEADER}\n{}", rows(2, false))),
        ("f4.csv", format!("{HEADER}\n{}", rows(3, false))),
    ];
    // One loader, one file a batch: the first file by a run of its own,
    // then one session meets the others in this order.
    let flags = ["--once", "--loaders", "1", "--max-files-per-batch", "1"];
    for (k, (name, body)) in files.iter().enumerate() {
        put_at(&data, name, body.as_bytes(), base + Duration::from_secs(k as u64));
        if k == 0 {
            assert_eq!(run_once(args(&data, &cp, &db.url, &flags)).await.totals.batches, 1);
        }
    }
    // The oracle reads the contract's columns only: the first file without
    // its extra one.
    let plain = dir.path().join("plain");
    let mut paths = vec![put_at(&plain, "f1.csv", format!("{HEADER}\n{}", rows(0, false)).as_bytes(), base)];
    paths.extend(files[1..].iter().map(|(name, _)| data.join(name)));
    let summary = run_once(args(&data, &cp, &db.url, &flags)).await;
    assert_eq!(summary.totals.batches, 3);

    let client = db.client().await;
    assert!(table(&client).await == oracle(&paths).0, "events differs from the oracle");
    assert_analytics_exact(&client).await;
    let history = client
        .query(
            "SELECT file_name, rows_inserted, rows_updated, rows_duplicate FROM load_history ORDER BY file_name",
            &[],
        )
        .await?;
    let counts: Vec<(String, i64, i64, i64)> =
        history.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let expected = [("f1.csv", 100, 0, 0), ("f2.csv", 100, 1, 0), ("f3.csv", 100, 0, 0), ("f4.csv", 100, 0, 0)];
    assert_eq!(counts, expected.map(|(f, i, u, d)| (f.to_owned(), i, u, d)), "each file's counts");
    let replaced = "SELECT product_id, _rescued::text FROM events \
                    WHERE user_id = 50 AND event_time = '2026-03-01T12:00:00Z'";
    let replaced = client.query_one(replaced, &[]).await?;
    let replaced: (i32, Option<String>) = (replaced.get(0), replaced.get(1));
    assert_eq!(replaced, (7, None), "user 50's stored key holds f2's row, without the column");
    let kept: Option<String> = client
        .query_one(
            "SELECT _rescued::text FROM events WHERE user_id = 3 AND product_id = 3 \
                          AND event_time = '2026-03-01T12:00:00Z'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(kept.as_deref(), Some(r#"{"coupon": "c3"}"#), "the extra column went in straight");

    // By batch: straight; met the stored key, its 101 keys looked up, its
    // one row merged and the other 100 straight; split without a try (the
    // penalty), its 100 keys looked up, all straight; straight again.
    assert_eq!(
        paths_taken(&cp),
        [(1, 0, 0, 0), (0, 1, 1, 101), (1, 0, 0, 100), (1, 0, 0, 0)],
        "(chunks inserted, chunks merged, rows merged, keys looked up) by batch"
    );
    Ok(())
}

/// A batch's path from its progress record: chunks copied straight,
/// chunks merged, rows merged, keys looked up.
type Taken = (u64, u64, u64, u64);

/// Each batch's path, in commit order.
fn paths_taken(cp: &std::path::Path) -> Vec<Taken> {
    let progress = std::fs::read_to_string(cp.join("progress/progress.jsonl")).expect("progress records");
    let record = |l: &str| {
        let r: serde_json::Value = serde_json::from_str(l).expect("a JSON record");
        let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
        (n("chunks_inserted"), n("chunks_merged"), n("rows_merged"), n("keys_looked_up"))
    };
    progress.lines().map(record).collect()
}

/// A chunk that re-sends rows the streamer committed lately (an
/// at-least-once producer; the generator's duplicates) is split by the
/// streamer's recent keys, without a look-up or a failed try: those rows
/// merged, the others straight. A key the streamer did not know is stored
/// (an earlier run's) makes the hinted straight COPY fail: the chunk is
/// split by a look-up, and the next batch does not trust the hint (it
/// tries straight, fails, looks up); the one after trusts it again. Every
/// path's result is the oracle's, counts and derived tables included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_re_sent_from_recent_batches_are_merged_without_a_look_up() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let base = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let row = |u: u32, minute: u32, kind: &str| {
        format!("{u},U{u},u{u}@x,{kind},{u},P{u},Home,1.50,2026-03-01T12:{minute:02}:00Z\n")
    };
    let fresh = |minute: u32| (1..=100).map(|u| row(u, minute, "view")).collect::<String>();
    // f0 by a run of its own; then f1 fresh; f2 re-sends f1's user 50; f3
    // re-sends f2's user 60 and f0's user 70 (the hint's miss); f4 re-sends
    // f3's user 80; f5 f4's user 90. Each re-sent row is a purchase: newer,
    // it replaces the stored view.
    let files = [
        fresh(0),
        fresh(1),
        format!("{}{}", fresh(2), row(50, 1, "purchase")),
        format!("{}{}{}", fresh(3), row(60, 2, "purchase"), row(70, 0, "purchase")),
        format!("{}{}", fresh(4), row(80, 3, "purchase")),
        format!("{}{}", fresh(5), row(90, 4, "purchase")),
    ];
    let flags = ["--once", "--loaders", "1", "--max-files-per-batch", "1"];
    let mut paths = Vec::new();
    for (k, body) in files.iter().enumerate() {
        let at = base + Duration::from_secs(k as u64);
        paths.push(put_at(&data, &format!("f{k}.csv"), format!("{HEADER}\n{body}").as_bytes(), at));
        if k == 0 {
            assert_eq!(run_once(args(&data, &cp, &db.url, &flags)).await.totals.batches, 1);
        }
    }
    assert_eq!(run_once(args(&data, &cp, &db.url, &flags)).await.totals.batches, 5);

    let client = db.client().await;
    assert!(table(&client).await == oracle(&paths).0, "events differs from the oracle");
    assert_analytics_exact(&client).await;
    let counts = client.query("SELECT rows_inserted, rows_updated FROM load_history ORDER BY file_name", &[]).await?;
    let counts: Vec<(i64, i64)> = counts.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(counts, [(100, 0), (100, 0), (100, 1), (100, 2), (100, 1), (100, 1)], "inserted, updated by file");
    assert_eq!(
        paths_taken(&cp),
        [(1, 0, 0, 0), (1, 0, 0, 0), (0, 1, 1, 0), (0, 1, 2, 102), (0, 1, 1, 101), (0, 1, 1, 0)],
        "(chunks inserted, chunks merged, rows merged, keys looked up) by batch"
    );
    Ok(())
}

/// The stored-key rows of a split chunk are merged from arrays bound to
/// one statement when they are few (at most `MERGE_ROWS_MAX`), through the
/// stage when more: a file re-sends a newer file's key (its row loses, and
/// the applier takes its deltas back) and a stored key with a column
/// beyond the contract's (kept as JSON); a later file re-sends more stored
/// keys than that bound, beside one fresh row. Both paths give the oracle's
/// table, counts and derived tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_chunks_stored_rows_merge_from_arrays_or_through_the_stage() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let base = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let bound = streamer::sink::MERGE_ROWS_MAX as u32;
    let row = |u: u32, minute: u32, kind: &str, product: u32| {
        format!("{u},U{u},u{u}@x,{kind},{product},P{product},Home,1.50,2026-03-01T12:{minute:02}:00Z")
    };
    let lines = |users: std::ops::RangeInclusive<u32>, minute: u32, product: u32| {
        users.map(|u| row(u, minute, "view", u + product) + "\n").collect::<String>()
    };
    let many = bound + 70;
    // f0 and f1 by runs of their own; f2 is older than f1 in the file
    // order (its modification time is earlier), so its row of user 7 loses
    // to f1's; its row of user 8 replaces f0's, with its coupon. f3
    // re-sends users 9..=many (more than the bound) and adds user 5000.
    let f2_rows: String = lines(1..=50, 2, 0).lines().map(|l| format!("{l},c\n")).collect();
    let files = [
        ("f0.csv", format!("{HEADER}\n{}", lines(1..=many, 0, 0)), 0),
        ("f1.csv", format!("{HEADER}\n{}{}\n", lines(1..=50, 1, 0), row(7, 0, "purchase", 70)), 20),
        (
            "f2.csv",
            format!("{HEADER},coupon\n{f2_rows}{},c7\n{},c8\n", row(7, 0, "view", 71), row(8, 0, "purchase", 80)),
            10,
        ),
        ("f3.csv", format!("{HEADER}\n{}{}\n", lines(9..=many, 0, 1000), row(5000, 0, "view", 1)), 30),
    ];
    let flags = ["--once", "--loaders", "1", "--max-files-per-batch", "1"];
    let mut paths = Vec::new();
    for (k, (name, body, second)) in files.iter().enumerate() {
        paths.push(put_at(&data, name, body.as_bytes(), base + Duration::from_secs(*second)));
        if k < 2 {
            assert_eq!(run_once(args(&data, &cp, &db.url, &flags)).await.totals.batches, 1);
        }
    }
    assert_eq!(run_once(args(&data, &cp, &db.url, &flags)).await.totals.batches, 2);

    let client = db.client().await;
    // The oracle reads the contract's columns: f2 without its coupons.
    let plain = dir.path().join("plain");
    let plain_f2 = f2_rows.lines().map(|l| l.trim_end_matches(",c").to_owned() + "\n").collect::<String>();
    let plain_f2 = format!("{HEADER}\n{plain_f2}{}\n{}\n", row(7, 0, "view", 71), row(8, 0, "purchase", 80));
    paths[2] = put_at(&plain, "f2.csv", plain_f2.as_bytes(), base + Duration::from_secs(10));
    // In the file order: f2 before f1.
    paths.swap(1, 2);
    assert!(table(&client).await == oracle(&paths).0, "events differs from the oracle");
    assert_analytics_exact(&client).await;
    let history = client
        .query("SELECT rows_inserted, rows_updated, rows_duplicate FROM load_history ORDER BY file_name", &[])
        .await?;
    let counts: Vec<(i64, i64, i64)> = history.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let many = i64::from(many);
    assert_eq!(counts, [(many, 0, 0), (50, 1, 0), (50, 1, 1), (1, many - 8, 0)], "inserted, updated, lost by file");
    let user_8 =
        "SELECT product_id, _rescued::text FROM events WHERE user_id = 8 AND event_time = '2026-03-01T12:00:00Z'";
    let user_8 = client.query_one(user_8, &[]).await?;
    let user_8: (i32, Option<String>) = (user_8.get(0), user_8.get(1));
    assert_eq!(user_8, (80, Some(r#"{"coupon": "c8"}"#.to_owned())), "f2's row of user 8, its coupon kept");
    assert_eq!(
        paths_taken(&cp)[1..],
        [(0, 1, 1, 51), (0, 1, 2, 52), (0, 1, many as u64 - 8, many as u64 - 7)],
        "(chunks inserted, chunks merged, rows merged, keys looked up) by batch"
    );
    Ok(())
}

/// A straight COPY that meets another session's uncommitted row of one of
/// its keys waits for it: when that row commits, the chunk is split (the
/// row of that key merged, and the file's row, the newer, replaces it; the
/// others straight); when it rolls back, the chunk goes in straight. When a
/// second session's uncommitted row, which the split's look-up of stored
/// keys cannot see, commits while the split's straight COPY waits for it,
/// that COPY fails too and the whole chunk is merged. Either way `events`
/// is the oracle's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straight_copy_waits_for_an_uncommitted_key_then_merges_or_goes_in() -> TestResult {
    // How each held row ends; inserted and updated rows; (chunks inserted,
    // chunks merged, rows merged).
    type Case = (&'static [&'static str], (i64, i64), (u64, u64, u64));
    let cases: [Case; 3] = [
        (&["COMMIT"], (49, 1), (0, 1, 1)),
        (&["ROLLBACK"], (50, 0), (1, 0, 0)),
        (&["COMMIT", "COMMIT"], (48, 2), (0, 1, 50)),
    ];
    for (ends, counts_wanted, path_wanted) in cases {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir()?;
        let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
        let body: String =
            (1..=50).map(|u| format!("{u},U{u},u{u}@x,view,{u},P{u},Home,1.50,2026-03-01T12:00:00Z\n")).collect();
        let file = put_at(&data, "f.csv", format!("{HEADER}\n{body}").as_bytes(), std::time::SystemTime::now());
        let flags = ["--once", "--loaders", "1", "--analytics", "false"];
        // The schema first, then the held rows: users 25, then 40.
        streamer::sink::schema::migrate(&mut db.client().await).await?;
        let mut blockers = Vec::new();
        for user in [25, 40].iter().take(ends.len()) {
            let blocker = db.client().await;
            blocker
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO events (user_id, user_name, user_email, event_type, product_id, \
                     product_name, product_category, product_price, event_time) VALUES ({user}, 'held', 'held', \
                     'view', 9, 'held', 'Home', 1, '2026-03-01T12:00:00Z')"
                ))
                .await?;
            let pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
            blockers.push((blocker, pid));
        }
        let run = tokio::spawn(streamer::run(args(&data, &cp, &db.url, &flags), CancellationToken::new()));
        let client = db.client().await;
        for ((blocker, pid), end) in blockers.iter().zip(ends) {
            // A COPY into events waits for this held row.
            let waiting = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND {pid} = ANY(pg_blocking_pids(pid)) AND query LIKE 'COPY events (%'"
            );
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while count(&client, &waiting).await == 0 {
                assert!(tokio::time::Instant::now() < deadline, "no straight COPY waited on the row of {pid}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            blocker.batch_execute(end).await?;
        }
        tokio::time::timeout(Duration::from_secs(60), run).await??.map_err(|e| format!("{e:#}"))?;

        assert!(table(&client).await == oracle(&[file]).0, "{ends:?}: events differs from the oracle");
        let counts = client.query_one("SELECT rows_inserted, rows_updated FROM load_history", &[]).await?;
        let counts: (i64, i64) = (counts.get(0), counts.get(1));
        assert_eq!(counts, counts_wanted, "{ends:?}: inserted, updated");
        let progress = std::fs::read_to_string(cp.join("progress/progress.jsonl"))?;
        let record: serde_json::Value = serde_json::from_str(progress.trim())?;
        let n = |k: &str| record[k].as_u64().unwrap_or(u64::MAX);
        let taken = (n("chunks_inserted"), n("chunks_merged"), n("rows_merged"));
        assert_eq!(taken, path_wanted, "{ends:?}: the path");
    }
    Ok(())
}

#[tokio::test]
async fn running_again_over_processed_files_changes_nothing() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(2), 5);
    run_once(args(&data, &cp, &db.url, &["--once"])).await;
    let client = db.client().await;
    let before = table(&client).await;
    let again = run_once(args(&data, &cp, &db.url, &["--once"])).await;
    assert_eq!(again.totals.batches, 0);
    assert_eq!(table(&client).await, before);
    assert_eq!(before, oracle(&files).0);
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 5);
    Ok(())
}

#[tokio::test]
async fn a_rewritten_file_is_loaded_again_and_its_rows_upsert() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(3), 4);
    run_once(args(&data, &cp, &db.url, &["--once"])).await;

    // Rewrite the first file: every price goes up by one cent, one row is new.
    let original = std::fs::read_to_string(&files[0])?;
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    for line in lines.iter_mut().skip(1) {
        let mut f: Vec<String> = line.split(',').map(str::to_owned).collect();
        let cents = (f[7].replace('.', "").parse::<i64>()? + 1).to_string();
        f[7] = format!("{}.{}", &cents[..cents.len() - 2], &cents[cents.len() - 2..]);
        *line = f.join(",");
    }
    lines.push("1,New Person,new@example.com,purchase,1,Thing,Books,1.00,2030-01-01T00:00:00Z".into());
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&files[0], lines.join("\n") + "\n")?;

    let summary = run_once(args(&data, &cp, &db.url, &["--once"])).await;
    assert_eq!(summary.totals.files, 1);
    assert_eq!(summary.totals.inserted, 1);
    assert!(summary.totals.updated > 0);
    // The rewritten file now comes last in file order.
    let mut order = files[1..].to_vec();
    order.push(files[0].clone());
    let client = db.client().await;
    assert_eq!(table(&client).await, oracle(&order).0);
    let reloads = client
        .query(
            "SELECT reingest FROM load_history WHERE file_name = $1 ORDER BY load_id",
            &[&files[0].file_name().and_then(|n| n.to_str()).unwrap_or_default()],
        )
        .await?;
    let flags: Vec<bool> = reloads.iter().map(|r| r.get(0)).collect();
    assert_eq!(flags, vec![false, true]);
    Ok(())
}

/// Runs the binary with one loader and batches of `files` until the crash
/// point before COMMIT aborts it: batch 0 is planned and staged, not
/// committed.
fn crash_before_commit(data: &std::path::Path, cp: &std::path::Path, url: &str, files: u32) -> TestResult {
    let files = files.to_string();
    let flags = ["--once", "--loaders", "1", "--max-files-per-batch", &files];
    let crashed = streamer_bin(data, cp, url, &flags, &[("STREAMER_CRASH_AT", "before_commit")]).status()?;
    assert!(!crashed.success(), "the crash point aborts the process");
    Ok(())
}

/// A crash after `offsets/0` was written and the batch staged, before
/// COMMIT (the real binary, aborted at the crash point): the next start runs
/// batch 0 again with exactly its files.
#[tokio::test]
async fn replays_uncommitted_batch_after_crash_with_exactly_its_files() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(4), 6);
    crash_before_commit(&data, &cp, &db.url, 3)?;
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(cp.join("offsets/0"))?)?;
    let planned: Vec<String> =
        plan["files"].as_array().ok_or("files")?.iter().filter_map(|f| f["name"].as_str().map(str::to_owned)).collect();
    assert_eq!(planned.len(), 3);
    assert!(!cp.join("commits/0").exists());
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 0, "nothing of the batch is visible");

    run_once(args(&data, &cp, &db.url, &["--once"])).await;
    let batch0 = client.query("SELECT file_name FROM load_history WHERE batch_id = 0 ORDER BY load_id", &[]).await?;
    let names: Vec<String> = batch0.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, planned, "batch 0 re-run with exactly its files");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 6);
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, 6);
    assert_eq!(table(&client).await, oracle(&files).0, "whatever the order of the batches");
    Ok(())
}

/// A streamer killed mid-batch whose session the server has not ended yet
/// still holds its files' claims when the next start re-runs the batch (a
/// backend finishing a statement, a host cut off until its keepalives
/// fail): the re-run waits for the claims instead of closing its plan, so
/// batch 0 commits with its files and no batch id is left without rows.
#[tokio::test]
async fn a_rerun_batch_waits_for_claims_a_dead_session_still_holds() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(14), 2);
    crash_before_commit(&data, &cp, &db.url, 2)?;
    assert!(cp.join("offsets/0").exists() && !cp.join("commits/0").exists());

    // The dead streamer's session, still holding the claims.
    let mut holder = db.client().await;
    let held = holder.transaction().await?;
    let rows = held.execute("SELECT 1 FROM source_files WHERE state = 'pending' FOR UPDATE", &[]).await?;
    assert_eq!(rows, 2);
    let mut rerun = streamer_bin(&data, &cp, &db.url, &["--once", "--loaders", "2"], &[]).spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (waiting, open) = (rerun.try_wait()?.is_none(), !cp.join("commits/0").exists());
    if !(waiting && open) {
        let _ = rerun.kill(); // (it would wait for the held files for ever)
    }
    assert!(waiting, "the re-run waits while the claims are held");
    assert!(open, "the plan is not closed while its files are held");
    held.rollback().await?; // the session ends

    assert!(rerun.wait()?.success());
    let client = db.client().await;
    let batches: Vec<i64> =
        client.query("SELECT DISTINCT batch_id FROM load_history", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(batches, vec![0], "batch 0 committed its two files; no other batch id");
    let marker: serde_json::Value = serde_json::from_slice(&std::fs::read(cp.join("commits/0"))?)?;
    assert_eq!(marker["abandoned"], serde_json::json!(false));
    assert_eq!(table(&client).await, oracle(&files).0);
    Ok(())
}

/// A crash after COMMIT, before `commits/N` (the real binary, aborted at
/// the crash point): the next start writes only the marker.
#[tokio::test]
async fn a_batch_committed_before_its_marker_is_not_loaded_twice() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(5), 3);
    let flags = ["--once", "--loaders", "1", "--max-files-per-batch", "1"];
    let crashed = streamer_bin(&data, &cp, &db.url, &flags, &[("STREAMER_CRASH_AT", "after_commit")]).status()?;
    assert!(!crashed.success());
    assert!(cp.join("offsets/0").exists() && !cp.join("commits/0").exists());
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 1, "batch 0 committed");
    let summary = run_once(args(&data, &cp, &db.url, &["--once", "--max-files-per-batch", "1"])).await;
    assert_eq!(summary.totals.batches, 2, "only the two other files loaded");
    assert!(cp.join("commits/0").exists(), "the marker was written");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 3);
    assert_eq!(table(&client).await, oracle(&files).0);
    assert!(Checkpoint::open(&cp)?.pending().next().is_none());
    Ok(())
}

#[tokio::test]
async fn bad_rows_are_rejected_bad_files_quarantined_and_the_stream_goes_on() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, Settings { bad_row_rate: 0.05, ..settings(6) }, 6);
    std::fs::write(data.join("wrong_header.csv"), "a,b,c\n1,2,3\n")?;
    std::fs::write(data.join("empty.csv"), "")?;
    std::fs::write(data.join("latin1.csv"), b"user_id,user_n\xe4me,user_email,event_type,product_id,product_name,product_category,product_price,event_time\n1,Jos\xe9,j@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n")?;
    let summary = run_once(args(&data, &cp, &db.url, &["--once"])).await;

    let (expected, invalid) = oracle(&files);
    assert!(invalid > 10);
    let client = db.client().await;
    assert_eq!(table(&client).await, expected);
    assert_eq!(summary.totals.rejected, invalid as u64);
    assert_eq!(count(&client, "SELECT count(*) FROM rejected_rows").await, invalid as i64);
    assert_eq!(
        count(&client, "SELECT count(*) FROM rejected_rows WHERE reason = '' OR raw_line = '' OR line_number < 2")
            .await,
        0
    );
    // Each rejected row is the very line the file holds at that line number.
    for r in client.query("SELECT file_name, line_number, raw_line FROM rejected_rows", &[]).await? {
        let (name, line, raw): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
        let text = std::fs::read_to_string(data.join(&name))?;
        assert_eq!(text.lines().nth(line as usize - 1), Some(raw.as_str()));
    }
    let quarantined = client
        .query("SELECT file_name, reason FROM load_history WHERE status = 'quarantined' ORDER BY file_name", &[])
        .await?;
    let names: Vec<String> = quarantined.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["empty.csv", "latin1.csv", "wrong_header.csv"]);
    for name in &names {
        assert!(!data.join(name).exists(), "{name} moved out of the data folder");
        assert!(data.join("_rejected").join(name).exists());
        assert!(!std::fs::read_to_string(data.join("_rejected").join(format!("{name}.reason")))?.trim().is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn the_same_files_in_any_batching_give_the_same_table() -> TestResult {
    let source = tempfile::tempdir()?;
    let files = generate(source.path(), Settings { duplicate_rate: 0.3, ..settings(7) }, 12);
    let (expected, _) = oracle(&files);
    for max_files in ["1", "5", "100"] {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir()?;
        let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
        copy_dir(source.path(), &data);
        run_once(args(&data, &cp, &db.url, &["--once", "--max-files-per-batch", max_files])).await;
        assert_eq!(table(&db.client().await).await, expected, "batches of at most {max_files} files");
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 6, ..proptest::prelude::ProptestConfig::default() })]

    /// Random batch limits (files and bytes) over the same files: the table
    /// is the oracle's every time.
    #[test]
    fn any_batching_gives_the_oracle(max_files in 1usize..=10, max_kib in 1u64..=64, seed in 0u64..1_000) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let db = TestDb::new().await;
            let dir = tempfile::tempdir().expect("tempdir");
            let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
            let files = generate(&data, Settings { duplicate_rate: 0.3, min_events: 10, max_events: 200, ..settings(seed) }, 8);
            let limits = [max_files.to_string(), (max_kib * 1024).to_string()];
            let extra = ["--once", "--max-files-per-batch", &limits[0], "--max-bytes-per-batch", &limits[1]];
            run_once(args(&data, &cp, &db.url, &extra)).await;
            assert_eq!(table(&db.client().await).await, oracle(&files).0, "limits {limits:?}");
        });
    }
}

#[tokio::test]
async fn clean_source_archive_and_delete_act_after_commit() -> TestResult {
    for mode in ["archive", "delete"] {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir()?;
        let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
        let files = generate(&data, settings(8), 3);
        let expected = oracle(&files).0;
        run_once(args(&data, &cp, &db.url, &["--once", "--clean-source", mode])).await;
        assert_eq!(table(&db.client().await).await, expected);
        assert!(csv_files(&data).is_empty(), "{mode}: the data folder is emptied");
        let archived = if data.join("_archive").exists() { csv_files(&data.join("_archive")).len() } else { 0 };
        assert_eq!(archived, if mode == "archive" { 3 } else { 0 });
    }
    Ok(())
}

#[tokio::test]
async fn waits_for_a_database_that_appears_late() -> TestResult {
    let db = TestDb::unborn();
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(9), 2);
    let stream = tokio::spawn(streamer::run(args(&data, &cp, &db.url, &["--once"]), CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!stream.is_finished(), "the stream waits for the database");
    db.create().await;
    let summary = tokio::time::timeout(Duration::from_secs(30), stream).await???;
    assert_eq!(summary.totals.files, 2);
    assert_eq!(table(&db.client().await).await, oracle(&files).0);
    Ok(())
}

#[tokio::test]
async fn streams_new_files_as_they_arrive_and_stops_on_request() -> TestResult {
    let mut live = LiveStream::start(&["--file-settle", "60000"]).await;
    // Published by rename one by one, each file is ready at once although
    // the settle time is a minute: no close or rename hint may be lost.
    let mut g = generator::Generator::new(settings(10), "live");
    let mut files = Vec::new();
    for k in 0..30 {
        files.push(live.publish(&mut g, k));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    wait_for_loads(&live.client, 30, Duration::from_secs(30)).await;
    assert_eq!(table(&live.client).await, oracle(&files).0);
    let summary = live.stop().await;
    assert_eq!(summary.totals.files, 30);
    Ok(())
}

#[tokio::test]
async fn a_data_folder_removed_while_streaming_is_made_again_and_watched() -> TestResult {
    let mut live = LiveStream::start(&["--file-settle", "60000"]).await;
    let mut g = generator::Generator::new(settings(13), "gone");
    let first = live.publish(&mut g, 0);
    wait_for_loads(&live.client, 1, Duration::from_secs(20)).await;
    // Kept aside for the oracle: the folder goes with its files.
    let kept = live.dir.path().join("kept.csv");
    std::fs::copy(&first, &kept)?;
    let mut files = vec![kept];
    std::fs::remove_dir_all(&live.data)?;
    // The stream notices, makes the folder again and watches it: a file
    // published there is picked up by its rename event (the settle time is a minute).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !live.data.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the data folder was not made again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    files.push(live.publish(&mut g, 1));
    wait_for_loads(&live.client, 2, Duration::from_secs(20)).await;
    assert_eq!(table(&live.client).await, oracle(&files).0);
    assert_eq!(live.stop().await.totals.files, 2);
    Ok(())
}

#[tokio::test]
async fn a_lost_connection_is_reopened_and_nothing_is_lost() -> TestResult {
    let mut live = LiveStream::start(&[]).await;
    let mut g = generator::Generator::new(settings(12), "conn");
    let mut files = Vec::new();
    for k in 0..6 {
        files.push(live.publish(&mut g, k));
        wait_for_loads(&live.client, k + 1, Duration::from_secs(20)).await;
        // Kill the streamer's session between batches, as a server restart would.
        let killed = live
            .client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                &[&streamer::pg::APPLICATION_NAME],
            )
            .await?;
        assert!(!killed.is_empty(), "the streamer's sessions");
    }
    assert_eq!(table(&live.client).await, oracle(&files).0);
    assert_eq!(count(&live.client, "SELECT count(DISTINCT batch_id) FROM load_history").await, 6);
    assert_eq!(live.stop().await.totals.files, 6);
    Ok(())
}

#[tokio::test]
async fn a_file_copied_in_slowly_in_place_is_read_only_once_complete() -> TestResult {
    use std::io::Write as _;
    let mut live = LiveStream::start(&["--file-settle", "200"]).await;
    let source = generate(&live.dir.path().join("source"), settings(11), 1);
    let contents = std::fs::read(&source[0])?;

    // Written in three parts under its final name, pausing longer than the settle time.
    let target = live.data.join("slow.csv");
    let mut file = std::fs::File::create(&target)?;
    for part in contents.chunks(contents.len() / 3 + 1) {
        file.write_all(part)?;
        file.flush()?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    drop(file);
    wait_for_loads(&live.client, 1, Duration::from_secs(20)).await;
    live.stop().await;
    let client = &live.client;
    assert_eq!(count(client, "SELECT count(*) FROM load_history").await, 1, "read once, complete");
    assert_eq!(count(client, "SELECT count(*) FROM rejected_rows").await, 0);
    assert_eq!(table(client).await, oracle(&[target]).0);
    Ok(())
}

#[tokio::test]
async fn schema_applies_twice_and_its_constraints_refuse_bad_rows() -> TestResult {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let first = streamer::sink::schema::migrate(&mut client).await?;
    let every: Vec<i32> = streamer::sink::schema::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, every);
    assert!(streamer::sink::schema::migrate(&mut client).await?.applied.is_empty(), "applied once");
    let good = "(1, 'a', 'a@x', 'view', 1, 'p', 'c', 1.00, '2026-01-01T00:00:00Z')";
    client.batch_execute(&format!("INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name, product_category, product_price, event_time) VALUES {good}")).await?;
    let bad = [
        ("events_user_id_positive", "(0, 'a', 'a@x', 'view', 1, 'p', 'c', 1.00, '2026-01-01T00:00:01Z')"),
        ("events_product_id_positive", "(1, 'a', 'a@x', 'view', -1, 'p', 'c', 1.00, '2026-01-01T00:00:01Z')"),
        ("events_event_type_known", "(1, 'a', 'a@x', 'click', 1, 'p', 'c', 1.00, '2026-01-01T00:00:01Z')"),
        ("events_product_price_positive", "(1, 'a', 'a@x', 'view', 1, 'p', 'c', -1.00, '2026-01-01T00:00:01Z')"),
        (
            "events_user_name_length",
            &format!("(1, '{}', 'a@x', 'view', 1, 'p', 'c', 1.00, '2026-01-01T00:00:01Z')", "x".repeat(101)),
        ),
        (
            "events_product_category_length",
            &format!("(1, 'a', 'a@x', 'view', 1, 'p', '{}', 1.00, '2026-01-01T00:00:01Z')", "x".repeat(51)),
        ),
        ("events_user_id_event_time_key", good),
    ];
    for (constraint, values) in bad {
        let sql = format!("INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name, product_category, product_price, event_time) VALUES {values}");
        let err = client.batch_execute(&sql).await.err().ok_or(format!("{constraint} accepted a bad row"))?;
        let db_err = err.as_db_error().ok_or("not a database error")?;
        assert_eq!(db_err.constraint(), Some(constraint));
    }
    let price_scale = client.batch_execute("INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name, product_category, product_price, event_time) VALUES (2, 'a', 'a@x', 'view', 1, 'p', 'c', 123456789.00, now())").await;
    assert!(price_scale.is_err(), "NUMERIC(10,2) holds at most 99999999.99");
    Ok(())
}

/// A chunk whose aggregation fails (its deltas arrive after its rows, on a
/// channel of their own) fails the batch with the aggregation's message,
/// and so does a reader gone before it sent them; nothing of the batch
/// commits, and its claims go back.
#[tokio::test]
async fn a_failed_aggregation_fails_the_batch_and_nothing_commits() -> TestResult {
    use streamer::batch::{self, ReadPlan, SourceFile};
    use streamer::sink::{self, BatchMeta, Claim, Loader, SinkError};

    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let files = generate(&data, settings(77), 1);
    let name = files[0].file_name().and_then(|n| n.to_str()).ok_or("file name")?.to_owned();
    register(&db.url, "src", &data, &[&name]).await;
    let mut client = db.client().await;
    let stage = sink::prepare_loader_session(&client, false).await?;
    let id = streamer::watch::file_id(&name, &std::fs::metadata(&files[0])?);
    let sources = [SourceFile { id, path: files[0].clone() }];

    // The deltas' sender fails, then is dropped unsent.
    for (fail, says) in [(true, "boom: no deltas"), (false, "the batch reader stopped before it aggregated")] {
        let meta = BatchMeta {
            checkpoint_id: uuid::Uuid::new_v4(),
            batch_id: 1,
            source: "src".into(),
            started_at: chrono::Utc::now(),
            window_seconds: 60,
            fence: false,
            counters_cap: 1 << 20,
        };
        let mut loader = Loader::begin(&mut client, &stage, meta, Claim::Next { files: 10, bytes: i64::MAX }).await?;
        assert_eq!(loader.files().len(), 1, "the registered file is claimed");
        loader.number().await?;
        let mut chunks = Vec::new();
        let plan = ReadPlan {
            sources: &sources,
            forced: &[None],
            chunk_bytes: 1 << 22,
            max_rejects: 0,
            window_micros: 60_000_000,
        };
        batch::read_batch(plan, |chunk| {
            chunks.push(chunk);
            true
        })?
        .ok_or("read")?;
        let mut chunk = chunks.pop().ok_or("one chunk")?;
        let (deltas, receiver) = tokio::sync::oneshot::channel();
        chunk.deltas = receiver;
        if fail {
            let _ = deltas.send(Err(polars::error::PolarsError::ComputeError("boom: no deltas".into())));
        } else {
            drop(deltas);
        }
        match loader.stage(&mut chunk).await {
            Err(e @ SinkError::Frame(_)) => {
                assert!(e.to_string().contains(says), "{e}");
                assert_eq!(
                    e.class(),
                    streamer::pg::ErrorClass::Fatal,
                    "a failed aggregation is a bug: the stream stops"
                );
            }
            other => panic!("the batch must fail with the aggregation's error, not {:?}", other.map(|_| ())),
        }
        drop(loader);
    }
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 0, "nothing of the batch committed");
    assert_eq!(
        count(&client, "SELECT count(*) FROM source_files WHERE state = 'pending'").await,
        1,
        "the claim went back"
    );
    Ok(())
}

/// The registration is one statement: new files become pending and every
/// listener hears of them once; files already registered change nothing
/// and wake nobody; its commit skips the WAL flush for itself only (the
/// session's own `synchronous_commit` is untouched).
#[tokio::test]
async fn a_registration_wakes_the_listeners_once_and_leaves_the_session_as_it_was() -> TestResult {
    use streamer::registry::{self, REGISTER};

    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let files = generate(&data, settings(78), 2);
    let mut client = db.client().await;
    streamer::sink::schema::migrate(&mut client).await?;
    client.batch_execute("SET synchronous_commit = on").await?;

    // A listener, as another streamer's control session.
    let (listener, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = heard_tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute(&format!("LISTEN {}", registry::CHANNEL)).await?;

    let ids: Vec<streamer::checkpoint::FileId> = files
        .iter()
        .map(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            streamer::watch::file_id(name, &std::fs::metadata(p).expect("a generated file"))
        })
        .collect();
    let statement = client.prepare(REGISTER).await?;
    assert_eq!(registry::register(&client, &statement, "src", &ids).await?, 2);
    let (channel, payload) =
        tokio::time::timeout(Duration::from_secs(5), heard.recv()).await?.ok_or("the listener is gone")?;
    assert_eq!((channel.as_str(), payload.as_str()), (registry::CHANNEL, "src"));
    assert_eq!(registry::pending(&client, "src").await?, 2);

    // Again: nothing new, nothing heard.
    assert_eq!(registry::register(&client, &statement, "src", &ids).await?, 0);
    listener.batch_execute("SELECT 1").await?; // a round trip after any notification
    assert!(heard.try_recv().is_err(), "a registration of nothing new wakes nobody");
    assert_eq!(registry::pending(&client, "src").await?, 2);

    let sync: String = client.query_one("SHOW synchronous_commit", &[]).await?.get(0);
    assert_eq!(sync, "on", "the registration's setting held for its own transaction only");
    Ok(())
}

/// Between two files of one modification time the earlier name is older.
/// A batch reads that order before its first merge (its first chunk meets
/// a stored key, so it is merged, not copied straight in); a file older by it,
/// registered after that read and committed by another loader before the
/// batch's merge met its rows, must not win over the batch's rows: the
/// batch fails before its COMMIT with a transient error, runs again, and
/// `events` ends as the oracle says in file order (the derived tables
/// exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_time_older_file_committed_during_a_batch_makes_it_run_again() -> TestResult {
    use streamer::batch::{self, ReadPlan, SourceFile};
    use streamer::sink::{self, BatchMeta, Claim, Loader, SinkError};

    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let (row, header) = (race_row, format!("{}\n", contract::COLUMNS.join(",")));
    // b.csv: forty rows, the last of key (1, 12:00:59); a.csv, earlier by
    // name and of the same time: that key with another product.
    let b_rows: String = (0..40).map(|k| row(2 + k, k % 60, 1)).chain([row(1, 59, 2)]).collect();
    // Stored first, from an older file: b.csv's first key.
    let earlier = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_779_000_000);
    let stored = put_at(&data, "0.csv", format!("{header}{}", row(2, 0, 7)).as_bytes(), earlier);
    let config = args(&data, &cp, &db.url, &["--once"]);
    run_once(config.clone()).await;
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    for (name, body) in [("b.csv", format!("{header}{b_rows}")), ("a.csv", format!("{header}{}", row(1, 59, 3)))] {
        put_at(&data, name, body.as_bytes(), at);
    }
    let source = config.source.clone();
    let meta = |batch_id| BatchMeta {
        checkpoint_id: uuid::Uuid::new_v4(),
        batch_id,
        source: source.clone(),
        started_at: chrono::Utc::now(),
        window_seconds: 60,
        fence: false,
        counters_cap: 1 << 20,
    };
    let read = |name: &str, chunk_bytes: u64| -> TestResult<(Vec<batch::Chunk>, batch::BatchRead)> {
        let path = data.join(name);
        let sources = [SourceFile { id: streamer::watch::file_id(name, &std::fs::metadata(&path)?), path }];
        let plan =
            ReadPlan { sources: &sources, forced: &[None], chunk_bytes, max_rejects: 0, window_micros: 60_000_000 };
        let mut chunks = Vec::new();
        let summary = batch::read_batch(plan, |chunk| {
            chunks.push(chunk);
            true
        })?
        .ok_or("read")?;
        Ok((chunks, summary))
    };

    register(&db.url, &source, &data, &["b.csv"]).await;
    let (mut first, mut second) = (db.client().await, db.client().await);
    let (stage_a, stage_b) =
        (sink::prepare_loader_session(&first, false).await?, sink::prepare_loader_session(&second, false).await?);
    let mut batch_b = Loader::begin(&mut first, &stage_a, meta(1), Claim::Next { files: 10, bytes: i64::MAX }).await?;
    assert_eq!(batch_b.files().len(), 1, "b.csv is claimed");
    batch_b.number().await?;
    let (mut chunks, read_b) = read("b.csv", 400)?;
    assert!(chunks.len() > 1, "b.csv comes in several chunks");
    let mut last = chunks.pop().ok_or("a last chunk")?;
    for chunk in &mut chunks {
        batch_b.stage(chunk).await?;
    }

    // Meanwhile a.csv is registered, loaded and committed by another loader.
    register(&db.url, &source, &data, &["a.csv"]).await;
    let mut batch_a = Loader::begin(&mut second, &stage_b, meta(1), Claim::Next { files: 10, bytes: i64::MAX }).await?;
    assert_eq!(batch_a.files().len(), 1, "a.csv is claimed (b.csv is held)");
    let (mut a_chunks, read_a) = read("a.csv", 1 << 20)?;
    for chunk in &mut a_chunks {
        batch_a.stage(chunk).await?;
    }
    batch_a.finish(&read_a.files, |_| false).await?;

    // b.csv's last chunk meets a.csv's stored row of its key.
    batch_b.stage(&mut last).await?;
    match batch_b.finish(&read_b.files, |_| false).await {
        Err(e @ SinkError::FileOrderChanged) => {
            assert_eq!(e.class(), streamer::pg::ErrorClass::Transient, "the batch runs again: {e}");
        }
        other => panic!("the batch must not commit with a stale file order, got {:?}", other.map(|_| ())),
    }
    let client = db.client().await;
    let b_rows = "SELECT count(*) FROM events WHERE user_id <> 1 AND product_id <> 7";
    assert_eq!(count(&client, b_rows).await, 0, "nothing of b.csv committed");

    // The stream loads b.csv again: its row is the newer of the key.
    run_once(config).await;
    let files = [stored, data.join("a.csv"), data.join("b.csv")];
    assert!(
        table(&client).await == oracle(&crate::chaos::in_file_order(&files)).0,
        "events = the oracle in file order"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM events WHERE user_id = 1 AND product_id = 2").await,
        1,
        "b.csv's row of the shared key won"
    );
    assert_analytics_exact(&client).await;
    Ok(())
}

/// A view of user `user` at 12:00:`second` on 2026-03-01, of product
/// `product`: the rows of the file-order race tests.
fn race_row(user: u32, second: u32, product: u32) -> String {
    format!("{user},User {user},u{user}@example.com,view,{product},Product {product},Books,1.00,2026-03-01T12:00:{second:02}Z\n")
}

/// The same race through the binary, with two loaders: b.csv's batch is held
/// in a chunk's merge by a row lock of the test's (an uncommitted row of one
/// of its keys, (1, 12:00:30)), a.csv, of the same modification time and
/// earlier by name, is published meanwhile and the other loader commits it;
/// then the lock goes. b.csv's batch meets a.csv's row of their shared key,
/// (1, 12:00:59), in a later chunk, must not commit with the order it read
/// before its first merge, and runs again: b.csv's row is the one kept.
/// (Not on Citus: there the batch merges once, at its end, and another
/// loader's merge into `events` waits on Citus's own locks while that merge
/// runs, so the older file cannot commit in between; see
/// docs/architecture.md, "The global file order".)
#[tokio::test]
async fn the_binary_runs_again_a_batch_that_raced_a_same_time_older_file() -> TestResult {
    let db = TestDb::new().await;
    let url = db.url.as_str();
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let (row, header) = (race_row, format!("{}\n", contract::COLUMNS.join(",")));
    let log_path = dir.path().join("streamer.log");
    let child = Killed(
        streamer_bin(
            &data,
            &cp,
            url,
            &["--loaders", "2", "--chunk-bytes", "400", "--rescan-interval", "50"],
            &[("NO_COLOR", "1")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?,
    );
    // The message of a wait that timed out: what the database's sessions
    // are doing, and the streamer's log.
    let stuck = |what: &'static str| {
        let log_path = log_path.clone();
        async move {
            let sessions = connect(url)
                .await
                .query(
                    "SELECT format('%s %s %s/%s %s', pid, state, wait_event_type, wait_event, left(query, 160)) \
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap_or_default();
            let sessions: Vec<String> = sessions.iter().map(|r| r.get(0)).collect();
            format!("{what}\n{}\n{}", sessions.join("\n"), std::fs::read_to_string(&log_path).unwrap_or_default())
        }
    };
    let client = connect(url).await;
    // A first file, loaded before the lock is taken: the streamer is set up
    // and its loader sessions are ready. It holds b.csv's first key, (1,
    // 12:00:10), so that b.csv's first chunk is merged (reading the file
    // order) before it meets the held row, not copied straight in.
    let earlier = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_779_000_000);
    let first = put_at(&data, "0.csv", format!("{header}{}{}", row(99, 0, 1), row(1, 10, 7)).as_bytes(), earlier);
    wait_for_loads(&client, 1, Duration::from_secs(60)).await;

    let blocker = connect(url).await;
    blocker
        .batch_execute(
            "BEGIN; INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name, \
             product_category, product_price, event_time) VALUES (1, 'held', 'held', 'view', 9, 'held', 'Books', 1, \
             '2026-03-01T12:00:30Z')",
        )
        .await?;
    // Both files of one modification time: a.csv is the older by its name.
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let b_rows: String = [row(1, 10, 1)]
        .into_iter()
        .chain((0..5).map(|k| row(2 + k, k, 1)))
        .chain([row(1, 30, 1)])
        .chain((5..40).map(|k| row(2 + k, k % 60, 1)))
        .chain([row(1, 59, 2)])
        .collect();
    let b = put_at(&data, "b.csv", format!("{header}{b_rows}").as_bytes(), at);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND backend_type = 'client backend'";
    while count(&client, waiting).await == 0 {
        if tokio::time::Instant::now() > deadline {
            panic!("{}", stuck("b.csv's batch never met the held row").await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = put_at(&data, "a.csv", format!("{header}{}", row(1, 59, 3)).as_bytes(), at);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&client, "SELECT count(*) FROM events WHERE user_id = 1 AND product_id = 3").await == 0 {
        if tokio::time::Instant::now() > deadline {
            panic!("{}", stuck("the other loader did not commit a.csv").await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.batch_execute("ROLLBACK").await?;

    wait_for_loads(&client, 3, Duration::from_secs(60)).await;
    wait_for_applied(&client, Duration::from_secs(60)).await;
    drop(child);
    assert_eq!(
        count(&client, "SELECT count(*) FROM events WHERE user_id = 1 AND product_id = 2").await,
        1,
        "b.csv's row of the shared key won"
    );
    assert!(
        table(&client).await == oracle(&crate::chaos::in_file_order(&[first, a, b])).0,
        "events = the oracle in file order"
    );
    assert_analytics_exact(&client).await;
    let log = std::fs::read_to_string(&log_path)?;
    assert!(log.contains("registered while the batch ran"), "the batch met the race and ran again: {log}");
    Ok(())
}
