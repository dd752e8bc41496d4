//! Database faults: the server stopped mid-stream (fast and immediate),
//! kept down for seconds and started again, and the streamer's session killed
//! again and again while batches load. The stream resumes by itself, and the
//! oracle holds. Each test owns a throwaway cluster (see `TempCluster`).

use std::time::{Duration, Instant};

use crate::common::*;
use generator::{Generator, Settings};
use tokio_util::sync::CancellationToken;

type Stream = tokio::task::JoinHandle<anyhow::Result<streamer::RunSummary>>;

/// Waits for `n` loaded files; fails at once with its error if the stream died.
async fn wait_loads(url: &str, n: i64, within: Duration, stream: &mut Stream) {
    let deadline = Instant::now() + within;
    loop {
        if stream.is_finished() {
            panic!("the stream ended early: {:?}", stream.await);
        }
        let loaded = loads_now(url).await.unwrap_or(0);
        if loaded >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{loaded} of {n} files loaded within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_survives_server_stops_and_killed_sessions() -> TestResult {
    init_logs();
    let cluster = tokio::task::spawn_blocking(TempCluster::start).await?;
    connect(&cluster.url("postgres")).await.batch_execute("CREATE DATABASE events").await?;
    let url = cluster.url("events");
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let shutdown = CancellationToken::new();
    let mut stream: Stream =
        tokio::spawn(streamer::run(args(&data, &cp, &url, &["--max-files-per-batch", "3"]), shutdown.clone()));

    let settings = Settings {
        seed: 31,
        min_events: 1_000,
        max_events: 4_000,
        duplicate_rate: 0.1,
        bad_row_rate: 0.01,
        ..Settings::default()
    };
    let mut g = Generator::new(settings, "faults");
    let mut files = Vec::new();
    let mut publish = |n: usize, files: &mut Vec<_>| publish_more(&data, &mut g, n, files);

    publish(5, &mut files);
    wait_loads(&url, 5, Duration::from_secs(30), &mut stream).await;
    for mode in ["fast", "immediate"] {
        // Files arrive while the server goes down, stays down, comes back.
        publish(4, &mut files);
        let c = &cluster;
        tokio::task::block_in_place(|| c.down(mode));
        publish(4, &mut files);
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| c.up());
        wait_loads(&url, files.len() as i64, Duration::from_secs(60), &mut stream).await;
    }

    // Kill the streamer's session a dozen times while big batches load
    // (whatever they are doing: staging, merging, committing).
    publish(12, &mut files);
    let admin = connect(&cluster.url("postgres")).await;
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while killed < 12 && loads_now(&url).await.unwrap_or(0) < files.len() as i64 {
        assert!(Instant::now() < deadline, "12 kills not done within 60 s");
        assert!(!stream.is_finished(), "the stream ended early");
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'events' AND application_name = $1 AND state = 'active'",
                &[&streamer::pg::APPLICATION_NAME],
            )
            .await?;
        killed += rows.len();
        tokio::time::sleep(Duration::from_millis(if rows.is_empty() { 5 } else { 150 })).await;
    }
    wait_loads(&url, files.len() as i64, Duration::from_secs(60), &mut stream).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), stream).await???;
    let client = connect(&url).await;
    let (expected, invalid) = oracle(&files);
    assert!(table(&client).await == expected, "events differs from the oracle");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, files.len() as i64);
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, files.len() as i64);
    assert_eq!(count(&client, "SELECT count(*) FROM rejected_rows").await, invalid as i64);
    println!(
        "server stops survived: 2 (fast, immediate); sessions killed mid-batch: {killed}; files: {}; rows compared: {}",
        files.len(),
        expected.len()
    );
    Ok(())
}
