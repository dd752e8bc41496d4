//! Crash torture: the real `streamer` binary ingests while files keep
//! arriving and is killed with SIGKILL at random moments, then restarted.
//! At the end `events` must equal the oracle exactly, every file must be in
//! the load history exactly once, every bad row rejected exactly once, the
//! checkpoint log consistent, and every batch id without rows a plan the
//! streamer's log says it closed (its files loaded by another batch).
//!
//! CI runs the short variant (≥ 25 kills over ≥ 200 files). For a long run:
//! `TORTURE_KILLS=500 TORTURE_FILES=5000 scripts/test.sh` (or cargo test
//! --test torture with DATABASE_URL set); `TORTURE_KEEP=1` keeps the folder
//! with the data, the checkpoint and each run's log.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use generator::{Generator, Settings};
use rand::{Rng, SeedableRng};
use streamer::checkpoint::Checkpoint;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Starts the streamer; its log goes to `log` (kept, so that the checks can
/// account for every plan closed unloaded and a failure shows the runs).
fn spawn_streamer(data: &Path, cp: &Path, url: &str, max_files: u32, once: bool, log: &Path) -> std::io::Result<Child> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamer"));
    cmd.args(["--data-dir", &data.display().to_string(), "--checkpoint-dir", &cp.display().to_string()])
        .args(["--database-url", url, "--file-settle", "0", "--max-backoff", "200", "--http-addr", "off"])
        .args(["--max-files-per-batch", &max_files.to_string()])
        .env_remove("DATABASE_URL")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    if once {
        cmd.arg("--once");
    }
    cmd.spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_at_random_moments_without_losing_or_duplicating_a_row() -> TestResult {
    let kills_wanted = env_or("TORTURE_KILLS", 25);
    let files_wanted = env_or("TORTURE_FILES", 200) as usize;
    let seed = env_or("TORTURE_SEED", rand::random::<u64>() % 1_000_000);
    println!("torture seed {seed} (TORTURE_SEED={seed} repeats the kill schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let db = TestDb::new().await;
    let mut dir = tempfile::tempdir()?;
    if std::env::var_os("TORTURE_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("torture folder kept: {}", dir.path().display());
    }
    let (data, cp, logs) = (dir.path().join("data"), dir.path().join("cp"), dir.path().join("logs"));
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&logs)?;

    // The producer: files keep arriving while the streamer is killed.
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (data, done) = (data.clone(), done.clone());
        std::thread::spawn(move || -> Vec<std::path::PathBuf> {
            let settings = Settings {
                seed,
                min_events: 20,
                max_events: 300,
                duplicate_rate: 0.1,
                bad_row_rate: 0.02,
                ..Settings::default()
            };
            let mut g = Generator::new(settings, "torture");
            let t = instant("2026-01-01T00:00:00Z");
            let mut files = Vec::new();
            for k in 0..files_wanted {
                let f = g.next_file(t + chrono::TimeDelta::milliseconds(k as i64 * 10));
                files.push(runtime::publish::publish(&data, &f.name, &f.contents).expect("publish"));
                std::thread::sleep(Duration::from_millis(8));
            }
            done.store(true, Ordering::Release);
            files
        })
    };

    let started = Instant::now();
    let mut kills = 0u64;
    let admin = db.client().await;
    while kills < kills_wanted || !done.load(Ordering::Acquire) {
        // Half the runs split every applier round in its two lanes (these
        // rounds are small: whole ones otherwise), so that kills fall
        // between the lanes' COMMITs too.
        let lanes = if rng.random_bool(0.5) {
            "SET pipeline.applier_lane_pairs = '0'"
        } else {
            "RESET pipeline.applier_lane_pairs"
        };
        database_set(&admin, lanes).await;
        let max_files = rng.random_range(1..=8);
        let log = logs.join(format!("run-{kills:04}.log"));
        let mut child = spawn_streamer(&data, &cp, &db.url, max_files, false, &log)?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..400))).await;
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(600), "torture ran past 10 minutes");
    }
    let files = producer.join().map_err(|_| "the producer panicked")?;

    // A last run drains what is left, then the checks.
    let status = spawn_streamer(&data, &cp, &db.url, 50, true, &logs.join("final.log"))?.wait()?;
    assert!(status.success(), "the final --once run failed");
    let client = db.client().await;
    let (expected, invalid) = oracle(&files);
    let got = table(&client).await;
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "events differs from the oracle");
    assert_analytics_exact(&client).await;
    assert_eq!(count(&client, "SELECT count(*) FROM applier_marks").await, 0, "no batch left half folded");
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, files.len() as i64, "each file loaded once");
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, files.len() as i64);
    assert_eq!(
        count(&client, "SELECT count(*) FROM rejected_rows").await,
        invalid as i64,
        "each bad row rejected once"
    );
    let checkpoint = Checkpoint::open(&cp)?;
    assert!(checkpoint.pending().next().is_none(), "no batch left pending");
    let last = checkpoint.last_committed().ok_or("no batch committed")? as i64;
    // Batch ids: each id with rows committed once and planned by this
    // checkpoint; an id without rows is a plan closed unloaded, which the
    // streamer says in its log (its files were loaded by another batch).
    let ids: Vec<i64> = client
        .query("SELECT DISTINCT batch_id FROM load_history ORDER BY 1", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.iter().all(|&id| (0..=last).contains(&id)), "batch ids within 0..=last: {ids:?}");
    let closed = closed_plans(&logs)?;
    let gaps: Vec<i64> = (0..=last).filter(|id| ids.binary_search(id).is_err()).collect();
    if gaps.iter().any(|id| !closed.contains(id)) {
        print_warnings(&logs)?;
        panic!("batch ids without rows {gaps:?}, plans closed in the log {closed:?}");
    }
    println!(
        "kills survived: {kills}; files: {}; rows compared: {} (plus {invalid} rejected rows); batches: {} \
         ({} plans closed unloaded); {:.1} s",
        files.len(),
        expected.len(),
        last + 1,
        gaps.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The batch ids whose plans the streamer closed unloaded, from its logs.
fn closed_plans(logs: &Path) -> std::io::Result<Vec<i64>> {
    let mut closed = Vec::new();
    for (_, line) in log_lines(logs)? {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if v["message"].as_str().is_some_and(|m| m.contains("its plan is closed")) {
            closed.extend(v["batch_id"].as_i64());
        }
    }
    Ok(closed)
}

/// Every run's warnings and the plans closed, in run order: what a failed
/// check needs to be understood.
fn print_warnings(logs: &Path) -> std::io::Result<()> {
    for (run, line) in log_lines(logs)? {
        if line.contains("\"WARN\"") || line.contains("plan is closed") || line.contains("re-running") {
            println!("{run}: {line}");
        }
    }
    Ok(())
}

/// (file name, line) of every log, runs in order.
fn log_lines(logs: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut paths: Vec<_> = std::fs::read_dir(logs)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    let mut lines = Vec::new();
    for p in paths {
        let run = p.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        lines.extend(std::fs::read_to_string(&p)?.lines().map(|l| (run.clone(), l.to_owned())));
    }
    Ok(lines)
}
