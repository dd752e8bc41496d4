//! Several streamers on one folder, coordinated by PostgreSQL alone, under
//! chaos: a private cluster; three `streamer` processes on one data folder
//! (each its own checkpoint; one with the analytics off, so analytics on
//! and off run at once) and the generator publishing every 30 ms with many
//! shared keys and bad rows. The harness kills its own streamers with
//! SIGKILL at random and at the named crash points (after staging, before
//! COMMIT, after COMMIT), freezes one with SIGSTOP past the session timeout
//! and resumes it, and restarts PostgreSQL once. At the end: `events` equals
//! the oracle in file order, every file is settled once, every bad row is
//! rejected once, and the derived tables equal their GROUP BY.
//!
//! The same chaos runs against a Citus cluster (a coordinator and two
//! workers on loopback ports; skipped with a message when Citus is not
//! installed), with one worker killed (`immediate`, as a power cut) while
//! batches commit, instead of the server restart.
//!
//! `CHAOS_SECS` (default 25) sets how long the chaos lasts; `CHAOS_SEED`
//! repeats a run (printed). A streamer that stops on its own (an exit code,
//! not a kill or a crash point) fails the run; its log is printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One of the harness's streamers.
struct Member {
    checkpoint: PathBuf,
    log: PathBuf,
    analytics: bool,
    child: Option<Child>,
    frozen: bool,
}

const FLAGS: [&str; 8] =
    ["--file-settle", "200", "--session-timeout", "3", "--statement-timeout", "5", "--rescan-interval", "500"];

impl Member {
    fn start(&mut self, data: &Path, url: &str, crash_at: Option<&str>) -> std::io::Result<()> {
        let mut flags = FLAGS.to_vec();
        flags.extend(["--analytics", if self.analytics { "true" } else { "false" }, "--max-files-per-batch", "4"]);
        let env: Vec<(&str, &str)> = crash_at.map(|c| ("STREAMER_CRASH_AT", c)).into_iter().collect();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        self.child = Some(
            streamer_bin(data, &self.checkpoint, url, &flags, &env)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()?,
        );
        self.frozen = false;
        Ok(())
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            if self.frozen {
                self.signal("-CONT");
            }
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Restarts it if it died (a crash point fired); a streamer that
    /// stopped on its own fails the run.
    fn revive(&mut self, data: &Path, url: &str) -> std::io::Result<bool> {
        let dead = match &mut self.child {
            Some(child) => match child.try_wait()? {
                Some(status) => {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    assert!(
                        status.code().is_none(),
                        "a streamer stopped on its own ({status}); the end of its log:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                    true
                }
                None => false,
            },
            None => true,
        };
        if dead {
            self.start(data, url, None)?;
        }
        Ok(dead)
    }
}

/// What the chaos runs against.
enum Target {
    Plain(TempCluster),
    Citus(CitusCluster),
}

impl Target {
    fn url(&self) -> String {
        match self {
            Target::Plain(c) => c.url("chaos"),
            Target::Citus(c) => c.url(),
        }
    }

    /// Once, halfway: the server restarted, or a Citus worker killed as by
    /// a power cut in the middle of a commit (the moment it holds a
    /// prepared transaction: phase one of Citus's two-phase commit done,
    /// phase two not), and started again. Says what it did.
    async fn disrupt(&self) -> String {
        match self {
            Target::Plain(c) => {
                c.down("fast");
                tokio::time::sleep(Duration::from_millis(500)).await;
                c.up();
                "server restarted".into()
            }
            Target::Citus(c) => {
                let worker = &c.workers[0];
                let watch = connect(&worker.url("chaos")).await;
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut prepared = 0;
                while prepared == 0 && Instant::now() < deadline {
                    prepared = count(&watch, "SELECT count(*) FROM pg_prepared_xacts").await;
                }
                drop(watch);
                worker.down("immediate");
                tokio::time::sleep(Duration::from_millis(1000)).await;
                worker.up();
                let in_doubt =
                    count(&connect(&worker.url("chaos")).await, "SELECT count(*) FROM pg_prepared_xacts").await;
                assert!(prepared > 0, "no commit was caught in its two-phase commit within 10 s");
                format!(
                    "worker killed holding {prepared} prepared transaction(s), {in_doubt} in doubt after its restart"
                )
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streamers_on_one_folder_survive_kills_freezes_and_a_server_restart() -> TestResult {
    let cluster = TempCluster::start();
    connect(&cluster.url("postgres")).await.batch_execute("CREATE DATABASE chaos").await?;
    chaos(Target::Plain(cluster)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streamers_on_a_citus_cluster_survive_kills_freezes_and_a_worker_killed_mid_commit() -> TestResult {
    let Some(cluster) = CitusCluster::start("chaos", 2).await else { return Ok(()) };
    chaos(Target::Citus(cluster)).await
}

async fn chaos(target: Target) -> TestResult {
    let seed = env_or("CHAOS_SEED", rand::random::<u64>() % 1_000_000);
    let secs = env_or("CHAOS_SECS", 25);
    println!("chaos seed {seed} (CHAOS_SEED={seed} repeats it), {secs} s");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let url = target.url();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;

    let stop = tokio_util::sync::CancellationToken::new();
    let producer = {
        let (data, stop) = (data.clone(), stop.clone());
        tokio::spawn(async move {
            let settings = generator::Settings {
                seed,
                users: 300,
                min_events: 20,
                max_events: 150,
                duplicate_rate: 0.15,
                bad_row_rate: 0.02,
                ..generator::Settings::default()
            };
            let mut g = generator::Generator::new(settings, "chaos");
            let mut files = Vec::new();
            while !stop.is_cancelled() {
                let f = g.next_file(chrono::Utc::now());
                files.push(runtime::publish::publish(&data, &f.name, &f.contents).expect("publish"));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            files
        })
    };
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member {
            checkpoint: dir.path().join(format!("cp{i}")),
            log: dir.path().join(format!("streamer{i}.log")),
            analytics: i != 2,
            child: None,
            frozen: false,
        })
        .collect();
    for m in &mut members {
        m.start(&data, &url, None)?;
    }

    let started = Instant::now();
    let (mut kills, mut crashes, mut freezes, mut disrupted) = (0, 0, 0, None);
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..700))).await;
        for m in &mut members {
            if m.revive(&data, &url)? {
                crashes += 1;
            }
        }
        if disrupted.is_none() && started.elapsed() > Duration::from_secs(secs * 3 / 4) {
            // Not drawn by now: once, for sure.
            disrupted = Some(target.disrupt().await);
            continue;
        }
        let i = rng.random_range(0..members.len());
        match rng.random_range(0..10) {
            0..=3 => {
                members[i].kill()?;
                kills += 1;
                members[i].start(&data, &url, None)?;
            }
            4..=6 => {
                // Dies at a named point the next time it gets there.
                let point = ["after_stage:0.5", "before_commit:0.5", "after_commit:0.5"][rng.random_range(0..3)];
                members[i].kill()?;
                members[i].start(&data, &url, Some(point))?;
            }
            7 if freezes < 2 && !members[i].frozen => {
                // Frozen past the session timeout: its claims and roles go.
                members[i].signal("-STOP");
                members[i].frozen = true;
                tokio::time::sleep(Duration::from_secs(5)).await;
                members[i].signal("-CONT");
                members[i].frozen = false;
                freezes += 1;
            }
            8 if disrupted.is_none() && started.elapsed() > Duration::from_secs(secs / 2) => {
                disrupted = Some(target.disrupt().await);
            }
            _ => {}
        }
    }
    stop.cancel();
    let files = producer.await?;
    for m in &mut members {
        m.kill()?;
    }
    // The last word: one streamer drains what is left and the analytics catch up.
    let out = streamer_bin(&data, &members[0].checkpoint, &url, &["--once", "--file-settle", "0"], &[]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let client = connect(&url).await;
    let (expected, invalid) = oracle(&in_file_order(&files));
    let got = table(&client).await;
    let stale = expected.iter().filter(|(k, v)| got.get(k).is_some_and(|g| g != *v)).count();
    assert_eq!(stale, 0, "{stale} keys hold another version than the last in file order");
    assert!(got == expected, "events equals the oracle ({} rows, {} expected)", got.len(), expected.len());
    let settled = count(&client, "SELECT count(*) FROM source_files WHERE state = 'loaded'").await;
    assert_eq!(settled, files.len() as i64, "every file settled, once");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history WHERE status = 'loaded'").await, files.len() as i64);
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, files.len() as i64);
    assert_eq!(count(&client, "SELECT count(*) FROM rejected_rows").await, invalid as i64, "each bad row once");
    assert_analytics_exact(&client).await;
    if let Target::Citus(_) = target {
        assert_events_on_workers(&client, 2).await;
        let per_worker = client
            .query(
                "SELECT result FROM run_command_on_workers($$SELECT count(*) FROM pg_prepared_xacts$$) ORDER BY nodeport",
                &[],
            )
            .await?;
        let left: Vec<String> = per_worker.iter().map(|r| r.get(0)).collect();
        println!("prepared transactions left on the workers: {left:?}");
    }
    let streamers = count(&client, "SELECT count(DISTINCT checkpoint_id) FROM batches").await;
    println!(
        "files {}, keys {}, bad rows {invalid}; kills {kills}, crash points hit {crashes}, freezes {freezes}, \
         {}; {streamers} streamers committed batches; {:.1} s",
        files.len(),
        expected.len(),
        disrupted.as_deref().unwrap_or("NOT DISRUPTED"),
        started.elapsed().as_secs_f64()
    );
    assert!(disrupted.is_some(), "the server was restarted (a worker killed) once");
    assert!(streamers >= 2, "the work was shared");
    Ok(())
}

/// `files` in the global file order: modification time, then name.
pub fn in_file_order(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<(i64, String, PathBuf)> = files
        .iter()
        .map(|p| {
            let mtime = std::fs::metadata(p).map(|m| streamer::watch::file_id("", &m).mtime_ns).unwrap_or(0);
            (mtime, p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned(), p.clone())
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, p)| p).collect()
}
