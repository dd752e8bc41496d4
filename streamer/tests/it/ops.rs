//! The operator commands through the real binary: `status` (text and JSON),
//! `reprocess` and `reset`, against a fresh database.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use generator::Settings;

fn streamer(data: &Path, cp: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(args)
        .args(["--data-dir", &data.display().to_string(), "--checkpoint-dir", &cp.display().to_string()])
        .args(["--database-url", url])
        .env_remove("DATABASE_URL")
        .env("HTTP_ADDR", "off")
        .output()
        .expect("the streamer binary runs")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn settings() -> Settings {
    Settings { seed: 31, min_events: 20, max_events: 60, bad_row_rate: 0.05, ..Settings::default() }
}

#[tokio::test]
async fn status_reports_the_checkpoint_the_waiting_files_and_the_database() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(), 4);

    // Before any run: no checkpoint, four files waiting, no schema yet.
    let out = streamer(&data, &cp, &db.url, &["status"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("checkpoint   none yet") && stdout.contains("4 in the data folder"), "{stdout}");
    assert!(stdout.contains("relation \"events\" does not exist"), "{stdout}");
    assert!(!cp.exists(), "status never creates a checkpoint");

    streamer::run(args(&data, &cp, &db.url, &["--once", "--max-files-per-batch", "2"]), Default::default()).await?;
    generate(&dir.path().join("more"), Settings { seed: 32, ..settings() }, 1)
        .iter()
        .try_for_each(|f| std::fs::rename(f, data.join("late.csv")))?;

    let out = streamer(&data, &cp, &db.url, &["status", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout)?;
    let client = db.client().await;
    let (expected, invalid) = oracle(&files);
    assert_eq!(status["next_batch"], 2);
    assert_eq!(status["last_committed_batch"], 1);
    assert_eq!(status["pending_batches"], serde_json::json!([]));
    assert_eq!(status["files_present"], 5);
    assert_eq!(status["database"]["files_waiting"], 1);
    assert_eq!(status["database"]["analytics_lag"]["batches"], 0, "--once returns once the analytics caught up");
    assert_eq!(status["database"]["events"], expected.len() as i64);
    assert_eq!(status["database"]["files_loaded"], 4);
    assert_eq!(status["database"]["rows_rejected"], invalid as i64);
    let batches = status["database"]["last_batches"].as_array().ok_or("last_batches")?;
    assert_eq!(batches.iter().map(|b| b["batch_id"].as_i64()).collect::<Vec<_>>(), [Some(1), Some(0)]);
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, expected.len() as i64);

    let out = streamer(&data, &cp, &db.url, &["status"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("5 in the data folder, 1 waiting") && stdout.contains("batch      1"), "{stdout}");
    assert!(stdout.contains("analytics    0 batches behind"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn reprocess_loads_a_file_again_and_the_load_history_says_so() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(), 3);
    let run = || streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default());
    run().await?;
    let client = db.client().await;
    let before = table(&client).await;
    let name = files[1].file_name().and_then(|n| n.to_str()).ok_or("name")?.to_owned();

    // The exact name and a glob both select it; the file is marked once.
    let glob = format!("{}*", name.trim_end_matches(".csv"));
    let out = streamer(&data, &cp, &db.url, &["reprocess", &name, &glob]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("1 file(s)") && stdout.contains(&name), "{stdout}");
    let again = run().await?;
    assert_eq!((again.totals.files, again.totals.inserted, again.totals.updated), (1, 0, 0));
    assert_eq!(table(&client).await, before, "the rows upsert onto themselves");
    let loads: Vec<bool> = client
        .query("SELECT reingest FROM load_history WHERE file_name = $1 ORDER BY load_id", &[&name])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(loads, [false, true]);

    // A pattern that matches nothing, and a path outside the data folder.
    let out = streamer(&data, &cp, &db.url, &["reprocess", "nothing_*.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no event file in"), "{}", text(&out).1);
    let outside = dir.path().join("elsewhere.csv");
    std::fs::write(&outside, "x")?;
    let out = streamer(&data, &cp, &db.url, &["reprocess", &outside.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("is not in the data folder"), "{}", text(&out).1);
    Ok(())
}

// Multi-threaded: the in-process runs' sessions finish closing while the
// test waits for the binary (reset refuses while a streamer's session is open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_needs_yes_forgets_the_checkpoint_and_can_empty_the_tables() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(), 3);
    let first = streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    let client = db.client().await;

    let out = streamer(&data, &cp, &db.url, &["reset"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--yes"), "{}", text(&out).1);
    assert!(cp.join("metadata").exists(), "nothing touched without --yes");

    let out = streamer(&data, &cp, &db.url, &["reset", "--yes"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&first.checkpoint_id.to_string()), "{stdout}");
    assert!(cp.exists() && std::fs::read_dir(&cp)?.next().is_none(), "the checkpoint folder is emptied");
    assert!(count(&client, "SELECT count(*) FROM events").await > 0, "the tables are kept without --truncate-tables");

    // Loaded again under a new checkpoint: the same table.
    let second = streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    assert_ne!(first.checkpoint_id, second.checkpoint_id);
    assert_eq!(table(&client).await, oracle(&files).0);

    let out = streamer(&data, &cp, &db.url, &["reset", "--yes", "--truncate-tables"]);
    assert!(out.status.success(), "{}", text(&out).1);
    for t in ["events", "load_history", "rejected_rows"] {
        assert_eq!(count(&client, &format!("SELECT count(*) FROM {t}")).await, 0, "{t}");
    }
    Ok(())
}

#[tokio::test]
async fn verify_finds_the_table_equal_to_the_files_and_reports_tampering() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, Settings { duplicate_rate: 0.2, ..settings() }, 4);
    streamer::run(args(&data, &cp, &db.url, &["--once", "--max-files-per-batch", "2"]), Default::default()).await?;
    let rows = oracle(&files).0.len();

    let out = streamer(&data, &cp, &db.url, &["verify"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("4 re-read"), "{stdout}");
    assert!(stdout.contains(&format!("{rows} compared: {rows} equal, 0 differing, 0 missing; 0 other")), "{stdout}");

    // One row changed, one deleted, one added by hand.
    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE events SET product_price = product_price + 1 WHERE event_id = (SELECT min(event_id) FROM events); \
             DELETE FROM events WHERE event_id = (SELECT max(event_id) FROM events); \
             INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name, product_category, \
             product_price, event_time) VALUES (999999, 'X', 'x@x', 'view', 1, 'P', 'C', 1, now())",
        )
        .await?;
    let out = streamer(&data, &cp, &db.url, &["verify"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{} equal, 1 differing, 1 missing; 1 other", rows - 2)), "{stdout}");
    assert!(stdout.contains("missing from the table") && stderr.contains("1 rows differ"), "{stdout}{stderr}");

    // A file changed since it was loaded is not used to judge the table.
    std::fs::write(&files[0], "changed")?;
    let out = streamer(&data, &cp, &db.url, &["verify"]);
    assert!(text(&out).0.contains("3 re-read; 0 no longer in the data folder, 1 changed"), "{}", text(&out).0);
    Ok(())
}
