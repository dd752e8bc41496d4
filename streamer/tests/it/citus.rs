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
    let seed: u64 = std::env::var("CITUS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (CITUS_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
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
             column_to_column_name(logicalrelid, partkey) END FROM pg_dist_partition ORDER BY 1",
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
