//! The live-generator kill test: the generator (its library's `run`, what
//! its binary runs) publishes a file every 40 ms (5 % of rows repeat a recent key, half of them changed),
//! while the real `streamer` is killed with SIGKILL at random moments and
//! started again, 25 times or more. Each restart lists files with no
//! close/rename hint, which wait the settle time while newer files are
//! ready at once: files become ready out of order. At the end `events`
//! equals the oracle in the global file order (modification time, then
//! name), every file is in the load history once, and the derived tables
//! equal their GROUP BY. Run with a fixed seed and a random one (printed;
//! `LIVE_KILL_SEED` repeats it, `LIVE_KILL_KILLS` asks for more kills).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The generator, publishing every 40 ms until `stop`.
fn start_generator(
    data: &Path,
    seed: u64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<generator::Summary>> {
    use clap::Parser as _;
    let args = [
        "generator",
        "--data-dir",
        &data.display().to_string(),
        "--interval",
        "0.04",
        "--duplicate-rate",
        "0.05",
        "--min-events",
        "20",
        "--max-events",
        "200",
        "--seed",
        &seed.to_string(),
    ]
    .map(str::to_owned);
    let config = generator::Config::try_parse_from(args).expect("generator settings");
    tokio::spawn(generator::run(config, stop))
}

/// The event files of `dir` in the global file order.
fn in_file_order(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(i64, PathBuf)> = csv_files(dir)
        .into_iter()
        .map(|p| (std::fs::metadata(&p).map(|m| streamer::watch::file_id("", &m).mtime_ns).unwrap_or(0), p))
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

async fn run(seed: u64) -> TestResult {
    let kills_wanted = env_or("LIVE_KILL_KILLS", 25);
    println!("live kill seed {seed} (LIVE_KILL_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let generator = start_generator(&data, seed, stop.clone());
    let started = Instant::now();
    let mut kills = 0;
    while kills < kills_wanted {
        let flags = ["--file-settle", "300", "--max-files-per-batch", &rng.random_range(1..=6).to_string()];
        let mut child =
            streamer_bin(&data, &cp, &db.url, &flags, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(300), "ran past 5 minutes");
    }
    stop.cancel();
    generator.await??;
    let out = streamer_bin(&data, &cp, &db.url, &["--once", "--file-settle", "300"], &[]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = in_file_order(&data);
    let client = db.client().await;
    let (expected, _) = oracle(&files);
    let got = table(&client).await;
    let older: usize = expected.iter().filter(|(k, v)| got.get(k).is_some_and(|g| g != *v)).count();
    assert_eq!(older, 0, "{older} keys hold another version than the last in file order");
    assert!(got == expected, "events equals the oracle in file order");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, files.len() as i64, "each file once");
    assert_analytics_exact(&client).await;
    println!(
        "kills: {kills}; files: {}; keys: {}; {:.1} s",
        files.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_generator_and_random_sigkills_end_oracle_exact_with_a_fixed_seed() -> TestResult {
    run(env_or("LIVE_KILL_SEED", 40_040)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_generator_and_random_sigkills_end_oracle_exact_with_a_random_seed() -> TestResult {
    run(env_or("LIVE_KILL_SEED", rand::random::<u64>() % 1_000_000)).await
}
