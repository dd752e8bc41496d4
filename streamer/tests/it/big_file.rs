//! One big file: it is loaded in chunks inside ONE transaction, so a kill
//! part-way leaves nothing behind, a restart loads all of it exactly as the
//! oracle says, and the streamer's memory stays bounded by the chunk size,
//! not by the file. (The 2 GB measurement is `scripts/bench-memory.sh`.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use generator::Settings;

/// Rows of the test file (about 180 bytes each); BIG_FILE_ROWS overrides.
const ROWS: usize = 200_000;
const CHUNK_BYTES: &str = "1048576";

fn spawn(data: &Path, cp: &Path, url: &str) -> std::io::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["--data-dir", &data.display().to_string(), "--checkpoint-dir", &cp.display().to_string()])
        .args(["--database-url", url, "--file-settle", "0", "--chunk-bytes", CHUNK_BYTES])
        .env_remove("DATABASE_URL")
        .env("HTTP_ADDR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Waits (polling every 10 ms, at most `within`) until `sql` returns true.
async fn until(client: &tokio_postgres::Client, sql: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if client.query_one(sql, &[]).await.map(|r| r.get::<_, bool>(0)).unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_loads_all_or_nothing_in_bounded_memory() -> TestResult {
    let rows = std::env::var("BIG_FILE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(ROWS);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let settings =
        Settings { seed: 21, min_events: rows, max_events: rows, duplicate_rate: 0.02, ..Settings::default() };
    let files = generate(&data, settings, 1);
    let size = std::fs::metadata(&files[0])?.len();
    let client = db.client().await;
    let database = client.query_one("SELECT current_database()", &[]).await?.get::<_, String>(0);
    // A chunk goes straight into events by COPY, or, when it meets a stored
    // key (a duplicate of an earlier chunk), its stored keys are merged: a
    // merge of a few rows lasts a few ms, too short to be caught by polling,
    // so the kill waits for either.
    let writing = format!(
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = '{database}' AND application_name = 'streamer' \
         AND state = 'active' AND (query LIKE 'COPY events %' OR query LIKE 'WITH %merged AS (INSERT INTO events %'))"
    );

    // Killed part-way through the batch's one transaction: nothing is committed.
    let mut streamer = spawn(&data, &cp, &db.url)?;
    let caught = until(&client, &writing, Duration::from_secs(300)).await;
    streamer.kill()?;
    streamer.wait()?;
    assert!(caught, "the batch writing into events was never seen");
    let gone = format!(
        "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE datname = '{database}' AND application_name = 'streamer')"
    );
    assert!(until(&client, &gone, Duration::from_secs(30)).await, "the killed session ends");
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 0, "nothing of a killed batch is visible");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM rejected_rows").await, 0);

    // Restarted: all of it, exactly, in memory bounded by the chunks.
    let mut streamer = spawn(&data, &cp, &db.url)?;
    let pid = streamer.id();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(&client, "SELECT count(*) FROM load_history").await == 0 && Instant::now() < deadline {
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak = peak.max(peak_rss(pid).unwrap_or(0));
    streamer.kill()?;
    streamer.wait()?;
    let (expected, _) = oracle(&files);
    assert_eq!(table(&client).await, expected, "events equals the oracle");
    let mb = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "big file: {rows} rows, {:.1} MB, loaded in {CHUNK_BYTES}-byte chunks with peak RSS {:.1} MB",
        mb(size),
        mb(peak)
    );
    // Holding this file whole peaks at about 85 MB (measured with one 64 MiB
    // chunk); in 1 MiB chunks the peak is the process plus a few chunks
    // (about 24 MB measured).
    assert!(peak > 0, "the peak RSS was read");
    assert!(peak < 48 * 1_048_576, "peak RSS {:.1} MB for a {:.1} MB file", mb(peak), mb(size));
    Ok(())
}
