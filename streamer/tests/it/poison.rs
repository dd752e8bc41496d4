//! Input that once stopped the stream for good, and operator mistakes that
//! lost data in silence: each case runs through the real binary (`--once`,
//! exit code and log checked) or the library against a real PostgreSQL,
//! always beside a clean file that must load exactly. (docs/reliability.md
//! has the table of cases and what each test proves.)

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use contract::HEADER;

/// A valid file of `rows` rows for users `first..first + rows` (keys no
/// poison file shares).
fn clean_file(dir: &Path, name: &str, first: i32, rows: i32) -> std::path::PathBuf {
    let mut text = format!("{HEADER}\n");
    for u in first..first + rows {
        text.push_str(&format!(
            "{u},Clean {u},c{u}@x,view,{},Mug,Home,1.50,2026-01-01T00:00:{:02}Z\n",
            u % 7 + 1,
            u % 60
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("clean file");
    path
}

/// Runs the binary `--once`; returns whether it exited 0 and its stderr.
fn once(data: &Path, cp: &Path, url: &str, extra: &[&str]) -> (bool, String) {
    let mut flags = vec!["--once"];
    flags.extend_from_slice(extra);
    let out = streamer_bin(data, cp, url, &flags, &[("NO_COLOR", "1")]).output().expect("the streamer runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The load history of a file: (status, rows_read, rows_rejected, reason).
async fn history(client: &tokio_postgres::Client, name: &str) -> (String, i64, i64, Option<String>) {
    let r = client
        .query_one("SELECT status, rows_read, rows_rejected, reason FROM load_history WHERE file_name = $1", &[&name])
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Every poison value of the first list of the reliability issue, in one
/// folder with a clean file: the process exits 0, the clean file loads, and
/// each poison row or file ends rejected or quarantined with a readable
/// reason (no NUL reaches PostgreSQL), its counts adding up.
#[tokio::test]
async fn poison_values_are_rejected_and_the_clean_file_beside_them_loads() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let good = "7,Ann,a@x,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z";
    let rows = [
        "1\0,Ann,a@x,view,2,Mug,Home,3.50,2026-01-01T00:00:01Z",
        "2,Ann,a@x,view,2,Mug,Home,3.5\0,2026-01-01T00:00:02Z",
        "3,Ann,a@x,vi\0ew,2,Mug,Home,3.50,2026-01-01T00:00:03Z",
        "4,Ann,a@x,view,2,Mug,Home,3.50,2026-01-01T00:00:04\0Z",
        "5,Ann,a@x,view,2,Mug,Home,3.50,-5000-01-01 00:00:00",
        "6,Ann,a@x,view,2,Mug,Home,3.50,+10000-01-01T00:00:00Z",
    ];
    std::fs::write(data.join("nul_values.csv"), format!("{HEADER}\n{good}\n{}\n", rows.join("\n")))?;
    std::fs::write(data.join("nul_header.csv"), format!("user_id\0,{}\n{good}\n", &HEADER[8..]))?;
    // A record past the 64 MiB limit after valid rows, quoted and not.
    for (name, open) in [("huge_plain.csv", ""), ("huge_quoted.csv", "\"")] {
        let mut f = std::fs::File::create(data.join(name))?;
        writeln!(f, "{HEADER}\n8,Bob,b@x,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z")?;
        write!(f, "9,{open}")?;
        let block = vec![b'x'; 1 << 20];
        for _ in 0..65 {
            f.write_all(&block)?;
        }
        writeln!(f, "{open},b@x,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z")?;
    }
    let clean = clean_file(&data, "zz_clean.csv", 1_000, 50);

    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "exit 0: {stderr}");
    let client = db.client().await;
    let (status, read, rejected, _) = history(&client, "nul_values.csv").await;
    assert_eq!((status.as_str(), read, rejected), ("loaded", 7, 6));
    let reasons: Vec<String> = client
        .query("SELECT reason FROM rejected_rows WHERE file_name = 'nul_values.csv' ORDER BY line_number", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons.len(), 6);
    assert!(reasons[0].starts_with("user_id: '1\\0'"), "{reasons:?}");
    assert!(reasons[4].contains("outside years 1 to 9999"), "{reasons:?}");
    let (status, _, _, reason) = history(&client, "nul_header.csv").await;
    assert_eq!(status, "quarantined");
    assert!(reason.unwrap_or_default().contains("user_id\\0"), "the NUL is spelled out");
    for name in ["huge_plain.csv", "huge_quoted.csv"] {
        let (status, read, rejected, _) = history(&client, name).await;
        assert_eq!(
            (status.as_str(), read, rejected),
            ("loaded", 2, 1),
            "{name}: the rows before load, the rest is one reject"
        );
    }
    assert_eq!(count(&client, "SELECT count(*) FROM events WHERE user_id IN (7, 8)").await, 2);
    let expected = oracle(&[clean]).0;
    let got: Table = table(&client).await.into_iter().filter(|((u, _), _)| *u >= 1_000).collect();
    assert_eq!(got, expected, "the clean file loads exactly");
    Ok(())
}

/// 10 001 purchases at 99 999 999.99 in one window and category: revenue
/// past NUMERIC(14,2) used to fail every batch; the applier sums it.
#[tokio::test]
async fn aggregates_cannot_overflow() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut text = format!("{HEADER}\n");
    for u in 1..=10_001 {
        text.push_str(&format!(
            "{u},Rich,r@x,purchase,1,Yacht,Boats,99999999.99,2026-01-01T00:00:{:02}.{u:06}Z\n",
            u % 60
        ));
    }
    std::fs::write(data.join("rich.csv"), text)?;
    clean_file(&data, "zz_clean.csv", 20_000, 10);
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "{stderr}");
    let client = db.client().await;
    let revenue: String = client
        .query_one("SELECT sum(revenue)::text FROM event_metrics_minute WHERE product_category = 'Boats'", &[])
        .await?
        .get(0);
    assert_eq!(revenue, "1000099999899.99", "10 001 × 99 999 999.99");
    assert_analytics_exact(&client).await;
    Ok(())
}

/// Last row wins whatever order files become ready in: the newer file
/// (by modification time) is loaded first, the older one later, and its
/// rows do not overwrite the newer ones.
#[tokio::test]
async fn an_older_file_loaded_after_a_newer_one_does_not_overwrite_it() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let row = |price: &str| format!("{HEADER}\n1,Ann,a@x,view,2,Mug,Home,{price},2026-01-01T00:00:00Z\n");
    let newer = data.join("b_newer.csv");
    std::fs::write(&newer, row("2.00"))?;
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "{stderr}");
    // Written earlier (its modification time is an hour before), ready now.
    let older = data.join("a_older.csv");
    std::fs::write(&older, row("1.00"))?;
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&older)?.set_modified(hour_ago)?;
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "{stderr}");
    let client = db.client().await;
    let price: String = client.query_one("SELECT product_price::text FROM events WHERE user_id = 1", &[]).await?.get(0);
    assert_eq!(price, "2.00", "the newer file's row stays");
    assert_eq!(table(&client).await, oracle(&[older.clone(), newer.clone()]).0, "the oracle in file order");
    let (status, read, ..) = history(&client, "a_older.csv").await;
    let dup: i64 = count(&client, "SELECT rows_duplicate FROM load_history WHERE file_name = 'a_older.csv'").await;
    assert_eq!((status.as_str(), read, dup), ("loaded", 1, 1), "the older row is counted as a duplicate");
    assert_analytics_exact(&client).await;
    Ok(())
}

/// A batch the database refuses with a data-class SQLSTATE (a constraint
/// the contract does not know, added here): the batch runs again with its
/// first file alone; the file that fails alone is quarantined with the
/// server's message, and every other file commits.
#[tokio::test]
async fn a_file_the_database_refuses_is_isolated_and_the_rest_commits() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut client = db.client().await;
    streamer::sink::schema::migrate(&mut client).await?;
    client.batch_execute("ALTER TABLE events ADD CONSTRAINT no_product_999 CHECK (product_id <> 999)").await?;
    let a = clean_file(&data, "a.csv", 100, 20);
    std::fs::write(data.join("b.csv"), format!("{HEADER}\n1,Ann,a@x,view,999,Mug,Home,1.00,2026-01-01T00:00:00Z\n"))?;
    let c = clean_file(&data, "c.csv", 200, 20);
    let (ok, stderr) = once(&data, &cp, &db.url, &["--loaders", "1"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("the database refused the batch's data"), "{stderr}");
    let (status, _, _, reason) = history(&client, "b.csv").await;
    assert_eq!(status, "quarantined");
    assert!(reason.unwrap_or_default().contains("no_product_999"), "the server's message is the reason");
    assert!(data.join("_rejected/b.csv").exists() && data.join("_rejected/b.csv.reason").exists());
    assert_eq!(table(&client).await, oracle(&[a, c]).0);
    Ok(())
}

/// A role whose statement_timeout is 1 ms: the streamer's sessions set
/// their own, so it loads as usual (it used to retry 57014 forever).
#[tokio::test]
async fn a_role_with_a_tiny_statement_timeout_does_not_stop_the_stream() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let role = format!("r_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN SUPERUSER; ALTER ROLE {role} SET statement_timeout = '1ms'; \
             ALTER DATABASE {} OWNER TO {role}",
            db.name
        ))
        .await?;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let clean = clean_file(&data, "clean.csv", 1, 500);
    let (ok, stderr) = once(&data, &cp, &url, &[]);
    let client = db.client().await;
    let loaded = table(&client).await;
    drop(client);
    admin
        .batch_execute(&format!("ALTER DATABASE {} OWNER TO postgres; DROP ROLE IF EXISTS {role}", db.name))
        .await
        .ok();
    assert!(ok, "{stderr}");
    assert_eq!(loaded, oracle(&[clean]).0);
    Ok(())
}

/// A 32 MiB file of one-character lines: each line is a rejected row, so
/// past MAX_REJECTS_PER_FILE the file is quarantined with the count, and
/// memory stays bounded (rejects count in the chunk budget).
#[tokio::test]
async fn a_file_of_garbage_lines_is_quarantined_with_bounded_memory() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut text = format!("{HEADER}\n").into_bytes();
    text.extend(std::iter::repeat_n(*b"x\n", 16 << 20).flatten());
    std::fs::write(data.join("garbage.csv"), &text)?;
    let clean = clean_file(&data, "zz_clean.csv", 1, 100);
    let mut child = streamer_bin(&data, &cp, &db.url, &["--once"], &[]).stderr(std::process::Stdio::piped()).spawn()?;
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        peak = peak.max(peak_rss(child.id()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client = db.client().await;
    let (status, _, _, reason) = history(&client, "garbage.csv").await;
    assert_eq!(status, "quarantined");
    assert!(reason.unwrap_or_default().starts_with("more than 100000 rows break the contract"));
    assert_eq!(
        count(&client, "SELECT count(*) FROM rejected_rows").await,
        0,
        "a quarantined file's rejects do not commit"
    );
    assert_eq!(table(&client).await, oracle(&[clean]).0);
    println!("peak RSS {} MB", peak >> 20);
    assert!(peak < 256 << 20, "peak RSS {} MB", peak >> 20);
    Ok(())
}

/// Files that are not loaded are named, once: a name that is not UTF-8
/// and a FIFO named `*.csv`.
#[tokio::test]
async fn files_never_read_are_named_once_in_a_warning() -> TestResult {
    use std::os::unix::ffi::OsStrExt as _;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join(std::ffi::OsStr::from_bytes(b"caf\xe9.csv")), format!("{HEADER}\n"))?;
    let fifo = data.join("pipe.csv");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status()?.success());
    let clean = clean_file(&data, "clean.csv", 1, 10);
    let (ok, stderr) = once(&data, &cp, &db.url, &["--rescan-interval", "50"]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches("file in the data folder never read").count(), 2, "{stderr}");
    assert!(stderr.contains("its name is not UTF-8") && stderr.contains("not a regular file"), "{stderr}");
    assert_eq!(table(&db.client().await).await, oracle(&[clean]).0);
    Ok(())
}

/// A `_rejected` link planted in the data folder: the quarantined file is
/// not moved through it (a warning says why), nothing lands elsewhere, and
/// the file, settled, is never read again.
#[tokio::test]
async fn a_planted_quarantine_link_is_never_followed() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp, elsewhere) = (dir.path().join("data"), dir.path().join("cp"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&elsewhere)?;
    std::os::unix::fs::symlink(&elsewhere, data.join("_rejected"))?;
    std::fs::write(data.join("bad.csv"), "not,the,header\n")?;
    let clean = clean_file(&data, "clean.csv", 1, 10);
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("not a folder (a link?)"), "{stderr}");
    assert_eq!(std::fs::read_dir(&elsewhere)?.count(), 0);
    assert!(data.join("bad.csv").exists());
    let (ok, _) = once(&data, &cp, &db.url, &[]);
    assert!(ok);
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM load_history WHERE file_name = 'bad.csv'").await, 1, "never again");
    assert_eq!(table(&client).await, oracle(&[clean]).0);
    Ok(())
}

/// `docker compose down -v`, a restore, a failover: the checkpoint has
/// batches the database never saw. The start says so and the registry,
/// empty, has every file loaded again — never a silent skip.
#[tokio::test]
async fn a_checkpoint_the_database_does_not_know_is_said_and_nothing_is_skipped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, generator::Settings { seed: 5, ..generator::Settings::default() }, 5);
    let first = TestDb::new().await;
    let (ok, stderr) = once(&data, &cp, &first.url, &[]);
    assert!(ok, "{stderr}");
    drop(first);
    let fresh = TestDb::new().await;
    let (ok, stderr) = once(&data, &cp, &fresh.url, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("this checkpoint has committed batches this database does not have"), "{stderr}");
    let client = fresh.client().await;
    assert_eq!(table(&client).await, oracle(&files).0, "every file loaded into the new database");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 5);
    Ok(())
}

/// One process per checkpoint folder, and per checkpoint id on a database
/// (a copied folder): the second one is refused with a message.
#[tokio::test]
async fn a_second_streamer_on_one_checkpoint_is_refused() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut first = streamer_bin(&data, &cp, &db.url, &[], &[]).stderr(std::process::Stdio::null()).spawn()?;
    wait_for_schema(&db.client().await).await;
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(!ok);
    assert!(stderr.contains("is in use by another streamer") && stderr.contains("own CHECKPOINT_DIR"), "{stderr}");
    // A copy of the folder has the same id.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy)?;
    std::fs::copy(cp.join("metadata"), copy.join("metadata"))?;
    let (ok, stderr) = once(&data, &copy, &db.url, &["--session-timeout", "1"]);
    assert!(!ok);
    assert!(stderr.contains("a session of this checkpoint is still open"), "it waited first: {stderr}");
    assert!(stderr.contains("another streamer runs with checkpoint"), "{stderr}");
    first.kill()?;
    first.wait()?;
    Ok(())
}

/// A streamer started again at once after a kill can find its checkpoint's
/// lock still held by the killed run's session (the server ends it once it
/// notices): it waits for it, then runs, instead of stopping.
#[tokio::test]
async fn a_restart_waits_for_the_killed_runs_session_to_end() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, generator::Settings { seed: 5, ..generator::Settings::default() }, 2);
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "{stderr}");
    let id = std::fs::read_to_string(cp.join("metadata"))?;
    let id: serde_json::Value = serde_json::from_str(&id)?;
    let id = id["id"].as_str().expect("checkpoint id").to_owned();
    // The killed run's session, as the server still sees it.
    let lingering = db.client().await;
    let held: bool = lingering
        .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&streamer::sink::lock::CHECKPOINT, &id])
        .await?
        .get(0);
    assert!(held);
    let more = generate(&dir.path().join("more"), generator::Settings { seed: 6, ..generator::Settings::default() }, 1);
    let moved = data.join("later.csv");
    std::fs::rename(&more[0], &moved)?;
    let run = tokio::task::spawn_blocking({
        let (data, cp, url) = (data.clone(), cp.clone(), db.url.clone());
        move || once(&data, &cp, &url, &["--session-timeout", "20"])
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(lingering); // the server notices: the session ends, the lock goes
    let (ok, stderr) = run.await?;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("a session of this checkpoint is still open"), "{stderr}");
    let mut all = files.clone();
    all.push(moved);
    assert_eq!(table(&db.client().await).await, oracle(&all).0, "every file loaded after the wait");
    Ok(())
}

/// Changing the metrics window width while another streamer runs on the
/// database is refused with a message (exit 2); the same width is fine.
#[tokio::test]
async fn a_window_width_other_streamers_do_not_share_is_refused() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut first = streamer_bin(&data, &cp, &db.url, &[], &[]).stderr(std::process::Stdio::null()).spawn()?;
    wait_for_schema(&db.client().await).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = dir.path().join("cp2");
    let out = streamer_bin(&data, &other, &db.url, &["--once", "--metrics-window", "30"], &[]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("METRICS_WINDOW_SECS=30 while other streamers run on it"), "{stderr}");
    let (ok, stderr) = once(&data, &other, &db.url, &["--metrics-window", "60"]);
    assert!(ok, "{stderr}");
    first.kill()?;
    first.wait()?;
    Ok(())
}

/// A statement that times out on every try (a trigger here sleeps past
/// `--statement-timeout`): the batch is split down to the file, retried,
/// and then the streamer stops with a message naming the setting — it does
/// not retry for ever, and nothing of the batch is committed.
#[tokio::test]
async fn a_statement_that_times_out_every_time_stops_with_a_message_naming_the_setting() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let (ok, stderr) = once(&data, &cp, &db.url, &[]);
    assert!(ok, "{stderr}");
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$; \
             CREATE TRIGGER slow AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION slow()",
        )
        .await?;
    clean_file(&data, "a.csv", 1, 20);
    clean_file(&data, "b.csv", 100, 20);
    let started = std::time::Instant::now();
    // One loader: two would each claim one of the files (SKIP LOCKED), and
    // there would be no batch of two to split.
    let (ok, stderr) = once(&data, &cp, &db.url, &["--statement-timeout", "1", "--loaders", "1"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("timed out 3 times with one file") && stderr.contains("STATEMENT_TIMEOUT_SECS"),
        "{stderr}"
    );
    assert!(stderr.contains("runs again with its first file alone"), "split first: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(120), "bounded");
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 0);
    Ok(())
}

/// A second streamer on the folder (its own checkpoint) run with `--once`
/// while the first holds the registrar role: it returns once the folder's
/// files are settled, without waiting to become the registrar itself (it
/// used to wait until the first streamer stopped).
#[tokio::test]
async fn a_second_streamer_with_once_returns_while_the_first_registers() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let files = vec![clean_file(&data, "a.csv", 1, 30), clean_file(&data, "b.csv", 100, 30)];
    let mut first = streamer_bin(&data, &cp, &db.url, &[], &[]).stderr(std::process::Stdio::null()).spawn()?;
    let client = db.client().await;
    wait_for_schema(&client).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&client, "SELECT count(*) FROM load_history").await < 2 {
        assert!(std::time::Instant::now() < deadline, "the first streamer did not load the files");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut second = streamer_bin(&data, &dir.path().join("cp2"), &db.url, &["--once"], &[])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait()? {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if status.is_none() {
        second.kill()?;
        second.wait()?;
    }
    first.kill()?;
    first.wait()?;
    assert!(status.is_some_and(|s| s.success()), "the second streamer's --once did not return: {status:?}");
    assert_eq!(table(&client).await, oracle(&files).0);
    Ok(())
}

/// Two streamers with `--once` on one folder, sharing its files: each
/// returns once every file is loaded, whoever committed the last batch.
/// A streamer learns of its own commits at once; of the other's, only by
/// looking again, which it does soon while files are pending (with the
/// rescan at an hour here, it used to wait for the rescan).
#[tokio::test]
async fn two_streamers_with_once_both_return_when_the_other_loaded_the_last_files() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let files: Vec<_> = (0..12).map(|k| clean_file(&data, &format!("f{k:02}.csv"), 1 + k * 5000, 5000)).collect();
    let flags = ["--once", "--rescan-interval", "3600000", "--loaders", "1", "--max-files-per-batch", "2"];
    let mut runs = Vec::new();
    for k in 0..2 {
        let cp = dir.path().join(format!("cp{k}"));
        runs.push(streamer_bin(&data, &cp, &db.url, &flags, &[]).stderr(std::process::Stdio::null()).spawn()?);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut statuses = vec![None, None];
    while statuses.iter().any(Option::is_none) && std::time::Instant::now() < deadline {
        for (run, status) in runs.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = run.try_wait()?;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (run, status) in runs.iter_mut().zip(&statuses) {
        if status.is_none() {
            run.kill()?;
            run.wait()?;
        }
    }
    assert!(statuses.iter().all(|s| s.is_some_and(|s| s.success())), "each --once returns, successfully: {statuses:?}");
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, 12);
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 12, "each file loaded once");
    assert_eq!(table(&client).await, oracle(&files).0);
    Ok(())
}

/// A streamer starting while another holds the schema lock past the
/// statement timeout (a long migration, the Citus layout copying a loaded
/// table) waits for it instead of stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_another_streamers_long_migration() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, generator::Settings { seed: 7, ..generator::Settings::default() }, 2);
    let mut holder = db.client().await;
    let tx = holder.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&streamer::sink::lock::SCHEMA]).await?;
    let run = tokio::task::spawn_blocking({
        let (data, cp, url) = (data.clone(), cp.clone(), db.url.clone());
        move || once(&data, &cp, &url, &["--statement-timeout", "1"])
    });
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!run.is_finished(), "it waits for the lock");
    tx.commit().await?;
    let (ok, stderr) = run.await?;
    assert!(ok, "{stderr}");
    assert_eq!(table(&db.client().await).await, oracle(&files).0);
    Ok(())
}
