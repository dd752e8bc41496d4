//! Citus as the sink: a coordinator and two workers of the test's own on
//! loopback ports (skipped with a message when Citus is not installed;
//! `../shared/tools/citus.sh` installs it here). The streamer finds the
//! extension and distributes the tables itself (db/citus_layout.sql); a
//! database loaded before Citus was there moves with its rows; every round
//! through the binary leaves `events` equal to the oracle and the derived
//! tables equal to their GROUP BY. The chaos test runs on Citus too
//! (chaos.rs).

use rand::{Rng, SeedableRng};

use crate::analytics::random_file;
use crate::common::*;

/// Loads `files` with the binary (`--once`: it returns when the analytics
/// caught up) and returns its log.
fn load_once(data: &std::path::Path, cp: &std::path::Path, url: &str, per_batch: &str) -> String {
    let out = streamer_bin(data, cp, url, &["--once", "--max-files-per-batch", per_batch], &[])
        .output()
        .expect("streamer runs");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "streamer failed: {log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_moves_to_citus_and_every_round_after_is_exact() -> TestResult {
    let Some(cluster) = CitusCluster::without_citus("moved", 2).await else { return Ok(()) };
    let mut rng = seeded_rng("CITUS_SEED");
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let url = cluster.url();
    let mut files = Vec::new();
    for round in 0..6 {
        if round == 2 {
            // The operator installs Citus under a loaded database.
            cluster.enable().await;
        }
        let first = files.len();
        for k in 0..rng.random_range(2..=3) {
            let rows = rng.random_range(20..150);
            files.push(random_file(&data, &format!("r{round:02}_{k}.csv"), rows, &mut rng));
        }
        // The round's files share one modification time: the merge on the
        // workers decides between them by name (the order read on the
        // coordinator, passed in).
        let mtime = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + round);
        for f in &files[first..] {
            std::fs::File::options().write(true).open(f)?.set_modified(mtime)?;
        }
        // One file per batch in rounds 0 and 3: files of one time in
        // separate batches.
        let per_batch = (round % 3 + 1).to_string();
        let log = load_once(&data, &cp, &url, &per_batch);
        assert_eq!(log.contains("now distributed by user_id"), round == 2, "round {round}: the layout is applied once");
        let client = connect(&url).await;
        let (expected, _) = oracle(&crate::chaos::in_file_order(&files));
        assert!(table(&client).await == expected, "round {round}: events differs from the oracle");
        assert_analytics_exact(&client).await;
    }
    let client = connect(&url).await;
    let layout: Vec<(String, String)> = client
        .query(
            "SELECT logicalrelid::text, CASE WHEN partmethod = 'n' THEN 'reference' ELSE 'by ' || \
             column_to_column_name(logicalrelid, partkey) END FROM pg_dist_partition \
             WHERE logicalrelid::text NOT LIKE 'events_stage_%' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let by_user = |t: &str| (t.to_owned(), "by user_id".to_owned());
    let reference = |t: &str| (t.to_owned(), "reference".to_owned());
    assert_eq!(
        layout,
        vec![
            by_user("analytics_rows"),
            reference("analytics_settings"),
            by_user("events"),
            by_user("user_category_counts"),
            by_user("user_product_counts"),
        ]
    );
    let colocated =
        count(&client, "SELECT count(DISTINCT colocationid) FROM pg_dist_partition WHERE partmethod = 'h'").await;
    assert_eq!(colocated, 1, "the distributed tables are co-located");
    assert_events_on_workers(&client, 2).await;
    let updated = count(&client, "SELECT sum(rows_updated)::int8 FROM load_history").await;
    assert!(updated > 20, "only {updated} rows were updated: the test lost its point");
    let lost = count(&client, "SELECT sum(rows_duplicate)::int8 FROM load_history").await;
    assert!(lost > 0, "no row lost to a newer one: the order between files of one time was not tried");

    // A worker holding a prepared transaction in doubt (as after it died
    // mid-commit, until Citus recovers it) holds the analytics back: the
    // rows commit, the applier waits, and goes on once it is settled.
    let worker = connect(&cluster.workers[0].url("moved")).await;
    worker.batch_execute("BEGIN; SELECT txid_current(); PREPARE TRANSACTION 'held_by_the_test'").await?;
    files.push(random_file(&data, "last.csv", 100, &mut rng));
    let run = tokio::task::spawn_blocking({
        let (data, cp, url) = (data.clone(), cp.clone(), url.clone());
        move || load_once(&data, &cp, &url, "1")
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count(&client, "SELECT count(*) FROM load_history WHERE file_name = 'last.csv'").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the last file was not committed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let waiting = count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await;
    assert_eq!(waiting, 1, "the applier waits while a transaction is in doubt");
    assert!(!run.is_finished(), "--once waits for the analytics");
    worker.batch_execute("ROLLBACK PREPARED 'held_by_the_test'").await?;
    let log = run.await?;
    assert!(log.contains("prepared transactions in doubt"), "{log}");
    assert!(table(&client).await == oracle(&crate::chaos::in_file_order(&files)).0);
    assert_analytics_exact(&client).await;
    Ok(())
}

/// The stage of a loader session on Citus is a distributed table co-located
/// with `events` (empty between batches), Citus pushes the merge's
/// statements down whole to the shards, and a load's per-file counts equal
/// those of the same load into a plain PostgreSQL database. A slot whose
/// table a transaction left prepared on a worker holds (a worker died
/// mid-commit) is passed over by the next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merge_runs_on_the_workers_and_counts_as_on_postgresql() -> TestResult {
    let Some(cluster) = CitusCluster::start("pushed", 2).await else { return Ok(()) };
    let plain = TestDb::new().await;
    let mut rng = seeded_rng("CITUS_SEED");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let mut files = Vec::new();
    for k in 0..9 {
        files.push(random_file(&data, &format!("f{k}.csv"), rng.random_range(100..400), &mut rng));
    }
    // Three files of one modification time, one older than the rest: rows
    // lost to stored newer ones.
    let t = |s: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + s);
    for (k, f) in files.iter().enumerate() {
        let at = match k {
            3..=5 => t(100),
            8 => t(1),
            _ => t(10 + k as u64),
        };
        std::fs::File::options().write(true).open(f)?.set_modified(at)?;
    }
    let history = "SELECT file_name, rows_read, rows_inserted, rows_updated, rows_unchanged, rows_duplicate, \
                   rows_rejected FROM load_history ORDER BY file_name";
    let mut loads = Vec::new();
    for (i, url) in [plain.url.clone(), cluster.url()].iter().enumerate() {
        let cp = dir.path().join(format!("cp{i}"));
        // Small chunks (keys repeated across chunks) and three files a batch
        // (one loader: the same batches both times).
        let extra = ["--once", "--loaders", "1", "--chunk-bytes", "4096", "--max-files-per-batch", "3"];
        let out = streamer_bin(&data, &cp, url, &extra, &[]).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let client = connect(url).await;
        let rows: Vec<Vec<i64>> =
            client.query(history, &[]).await?.iter().map(|r| (1..7).map(|c| r.get::<_, i64>(c)).collect()).collect();
        assert!(table(&client).await == oracle(&crate::chaos::in_file_order(&files)).0, "{url}: events = oracle");
        assert_analytics_exact(&client).await;
        loads.push(rows);
    }
    assert_eq!(loads[0], loads[1], "the same counts per file on Citus as on PostgreSQL");
    let duplicates: i64 = loads[1].iter().map(|r| r[4]).sum();
    assert!(duplicates > 0, "no row lost to a newer one or a later chunk: the test lost its point");

    let client = connect(&cluster.url()).await;
    // Each statement of the merge is pushed down whole: a task per shard
    // writes `events` (or `analytics_rows`) from the stage's shard on its
    // own worker; no insert-select through the coordinator.
    let ids: Vec<i32> = vec![1];
    let mtimes: Vec<i64> = vec![1];
    let after: Vec<i64> = Vec::new();
    for several in [false, true] {
        let merge = streamer::sink::sql::merge_sql("events_stage_0", true, several);
        let plan = explain(&client, &merge, &[&ids, &mtimes, &after]).await;
        assert!(!plan.contains("INSERT/SELECT method"), "{plan}");
        assert!(plan.contains("Task Count: 32") && plan.contains("Insert on events_"), "{plan}");
        assert!(plan.contains("Seq Scan on events_stage_0_"), "{plan}");
    }
    let lost = streamer::sink::sql::lost_sql("events_stage_0");
    let plan = explain(&client, &lost, &[&ids, &1i64]).await;
    assert!(!plan.contains("INSERT/SELECT method"), "{plan}");
    assert!(plan.contains("Task Count: 32") && plan.contains("Insert on analytics_rows_"), "{plan}");

    // A batch that a worker left prepared in doubt (it died mid-commit; Citus
    // recovers it later) staged rows into stage 0's shard there and deleted
    // them: the next batch on that stage neither waits for it nor sees them.
    let shard: String = client
        .query_one(
            "SELECT shard_name FROM citus_shards WHERE table_name = 'events_stage_0'::regclass AND nodeport = $1 \
             ORDER BY 1 LIMIT 1",
            &[&i32::from(cluster.workers[0].port)],
        )
        .await?
        .get(0);
    let worker = connect(&cluster.workers[0].url("pushed")).await;
    worker
        .batch_execute(&format!(
            "BEGIN; SET LOCAL citus.enable_manual_changes_to_shards = on; \
             INSERT INTO {shard} (chunk, file_index, line, user_id, user_name, user_email, event_type, product_id, \
             product_name, product_category, product_price, event_time, event_id) \
             SELECT 0, 0, g, g, 'held', 'held', 'view', 1, 'held', 'held', 1, now(), -g FROM generate_series(1, 50) g; \
             DELETE FROM {shard}; PREPARE TRANSACTION 'stage_held_by_the_test'"
        ))
        .await?;
    files.push(random_file(&data, "last.csv", 200, &mut rng));
    let cp = dir.path().join("cp1");
    let mut run = streamer_bin(&data, &cp, &cluster.url(), &["--once", "--loaders", "1"], &[]).spawn()?;
    // The batch commits while the transaction is in doubt (the applier, and
    // so `--once`, waits for it to be settled).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&client, "SELECT count(*) FROM load_history WHERE file_name = 'last.csv'").await == 0 {
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            let _ = worker.batch_execute("ROLLBACK PREPARED 'stage_held_by_the_test'").await;
            panic!("the batch waited for the prepared transaction");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    worker.batch_execute("ROLLBACK PREPARED 'stage_held_by_the_test'").await?;
    assert!(tokio::task::spawn_blocking(move || run.wait()).await??.success());
    assert!(table(&client).await == oracle(&crate::chaos::in_file_order(&files)).0);
    assert_analytics_exact(&client).await;

    // Two loaders: a stage each.
    files.push(random_file(&data, "two.csv", 200, &mut rng));
    let out = streamer_bin(&data, &cp, &cluster.url(), &["--once", "--loaders", "2"], &[]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table(&client).await == oracle(&crate::chaos::in_file_order(&files)).0);

    let stages: Vec<(String, bool, String)> = client
        .query(
            "SELECT p.logicalrelid::text, p.colocationid = (SELECT colocationid FROM pg_dist_partition \
             WHERE logicalrelid = 'events'::regclass), c.relpersistence::text FROM pg_dist_partition p \
             JOIN pg_class c ON c.oid = p.logicalrelid WHERE p.logicalrelid::text LIKE 'events_stage_%' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected: Vec<(String, bool, String)> =
        ["events_stage_0", "events_stage_1"].iter().map(|t| (t.to_string(), true, "u".to_string())).collect();
    assert_eq!(stages, expected, "one unlogged stage per loader session, co-located with events");
    for (stage, ..) in &stages {
        assert_eq!(count(&client, &format!("SELECT count(*) FROM {stage}")).await, 0, "{stage} empty between batches");
    }
    Ok(())
}

/// Every stage slot held (by the test's own session here): a loader cannot
/// stage, says so and waits — the stream does not stop — and loads once a
/// slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_stage_slot_held_a_loader_waits_and_then_loads() -> TestResult {
    let Some(cluster) = CitusCluster::start("slots", 2).await else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let files = vec![random_file(&data, "a.csv", 100, &mut rng)];
    let holder = connect(&cluster.url()).await;
    holder
        .execute(
            "SELECT count(pg_advisory_lock($1, g)) FROM generate_series(0, $2 - 1) g",
            &[&streamer::sink::lock::STAGE_SLOT, &streamer::sink::STAGE_SLOTS],
        )
        .await?;
    let run = streamer_bin(&data, &cp, &cluster.url(), &["--once", "--loaders", "1"], &[])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let client = connect(&cluster.url()).await;
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 0, "nothing staged without a slot");
    drop(holder);
    let out = tokio::task::spawn_blocking(move || run.wait_with_output()).await??;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("no stage slot is free; waiting"), "{log}");
    assert!(log.contains("all 256 stage slots of the Citus database are held"), "{log}");
    assert!(table(&client).await == oracle(&files).0);
    assert_analytics_exact(&client).await;
    Ok(())
}
