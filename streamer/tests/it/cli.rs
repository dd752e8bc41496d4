//! The `streamer` binary as people run it: `--once`, SIGTERM, bad settings,
//! and credentials kept out of its output.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use generator::Settings;

fn streamer(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamer"));
    for var in ["DATABASE_URL", "DATA_DIR", "CHECKPOINT_DIR", "ONCE", "CLEAN_SOURCE", "LOG_FORMAT", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    // No .env of the developer's is picked up; tests in parallel share no port.
    cmd.current_dir(dir).env("HTTP_ADDR", "off");
    cmd
}

fn settings(seed: u64) -> Settings {
    Settings { seed, min_events: 50, max_events: 300, duplicate_rate: 0.05, ..Settings::default() }
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "kill -TERM {pid}");
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn once_loads_a_folder_and_exits_0() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(21), 4);
    let out = streamer(dir.path())
        .args(["--data-dir", &data.display().to_string(), "--checkpoint-dir", &cp.display().to_string()])
        .args(["--database-url", &db.url, "--once", "--file-settle", "0"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("batch committed"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colour codes in a piped log: {stderr}");
    assert_eq!(table(&db.client().await).await, oracle(&files).0);
    Ok(())
}

#[test]
fn the_log_is_coloured_on_a_terminal_unless_no_color_is_set() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Nothing to connect to: the first lines are enough.
    let line = format!("{} --data-dir data --checkpoint-dir cp --max-backoff 100", env!("CARGO_BIN_EXE_streamer"));
    let on_terminal = |no_color: Option<&str>| -> std::io::Result<String> {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &format!("timeout -s TERM 2 {line}"), "/dev/null"])
            .current_dir(dir.path())
            .env("HTTP_ADDR", "off")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        Ok(String::from_utf8_lossy(&cmd.output()?.stdout).into_owned())
    };
    let screen = on_terminal(None)?;
    assert!(screen.contains("streamer starting") && screen.contains("\x1b["), "colour on a terminal: {screen}");
    let screen = on_terminal(Some("1"))?;
    assert!(screen.contains("streamer starting") && !screen.contains("\x1b["), "NO_COLOR: {screen}");
    Ok(())
}

#[tokio::test]
async fn progress_draws_a_bar_on_a_terminal_and_nothing_but_the_log_elsewhere() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(23), 6);
    let flags = |cp: &std::path::Path| {
        format!(
            "--data-dir {} --checkpoint-dir {} --database-url {} --once --file-settle 0 --max-files-per-batch 2 --progress",
            data.display(),
            cp.display(),
            db.url
        )
    };
    // Off a terminal: the log as usual, no bar.
    let out = streamer(dir.path()).args(flags(&cp).split(' ')).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("batch committed").count(), 3, "{stderr}");
    assert!(!stderr.contains("files ·") && !stderr.contains('\r'), "no bar off a terminal: {stderr}");
    assert_eq!(table(&db.client().await).await, oracle(&files).0);

    // On a terminal (util-linux `script` gives it one): the bar, files done
    // of those listed (a second database: the first has the files already).
    let db = TestDb::new().await;
    let flags = |cp: &std::path::Path| {
        format!(
            "--data-dir {} --checkpoint-dir {} --database-url {} --once --file-settle 0 --max-files-per-batch 2 --progress",
            data.display(),
            cp.display(),
            db.url
        )
    };
    let bin = env!("CARGO_BIN_EXE_streamer");
    let line = format!("{bin} {}", flags(&dir.path().join("cp2")));
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(dir.path())
        .env("HTTP_ADDR", "off")
        .output()?;
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("/6 files"), "a bar over the 6 files: {screen}");
    assert!(screen.contains("batch committed"), "the log still shows: {screen}");
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_the_stream_with_exit_0_and_nothing_lost() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(22), 30);
    let path = |p: &std::path::Path| p.display().to_string();
    let mut child = streamer(dir.path())
        .args(["--data-dir", &path(&data), "--checkpoint-dir", &path(&cp), "--database-url", &db.url])
        .args(["--file-settle", "0", "--max-files-per-batch", "1", "--trigger-interval", "100"])
        .stderr(Stdio::null())
        .spawn()?;
    let client = db.client().await;
    wait_for_loads(&client, 2, Duration::from_secs(30)).await;
    sigterm(child.id());
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let loaded = count(&client, "SELECT count(*) FROM load_history").await;
    assert!(loaded < 30, "stopped before the end ({loaded} files loaded)");

    // The rest is loaded by the next run; every file exactly once.
    let out = streamer(dir.path())
        .args([
            "--data-dir",
            &path(&data),
            "--checkpoint-dir",
            &path(&cp),
            "--database-url",
            &db.url,
            "--once",
            "--file-settle",
            "0",
        ])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 30);
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, 30);
    assert_eq!(table(&client).await, oracle(&files).0);
    Ok(())
}

/// The streamer run from `dir` with `--data-dir given` (relative to `dir`)
/// and a settle time of ten minutes takes three files renamed into `data`
/// at once: their renames are the hints. The watcher names files by
/// absolute paths; matched against the folder as given, no hint was found
/// and every file waited the settle time out.
async fn renamed_files_are_taken_at_once(dir: &std::path::Path, given: &str, data: &std::path::Path) -> TestResult {
    let db = TestDb::new().await;
    let mut child = streamer(dir)
        .args(["--data-dir", given, "--checkpoint-dir", "cp", "--database-url", &db.url])
        .args(["--file-settle", "600000"])
        .stderr(Stdio::null())
        .spawn()?;
    let client = db.client().await;
    wait_for_schema(&client).await;
    let mut g = generator::Generator::new(settings(23), "relative");
    let files: Vec<_> = (0..3).map(|k| publish_file(data, &mut g, k)).collect();
    wait_for_loads(&client, 3, Duration::from_secs(30)).await;
    sigterm(child.id());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)).code(), Some(0));
    assert_eq!(table(&client).await, oracle(&files).0);
    Ok(())
}

/// The environment of a live process.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| b.split(|&c| c == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect())
        .unwrap_or_default()
}

/// On Linux with glibc the streamer runs with malloc's mmap threshold fixed
/// (it starts itself again, once, same process, with the variable set),
/// unless the operator set it; either way it streams.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn the_streamer_runs_with_mallocs_mmap_threshold_fixed_unless_it_is_set() -> TestResult {
    for (given, expected) in [(None, "MALLOC_MMAP_THRESHOLD_=131072"), (Some("65536"), "MALLOC_MMAP_THRESHOLD_=65536")]
    {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let db = TestDb::new().await;
        let mut cmd = streamer(dir.path());
        cmd.env_remove("MALLOC_MMAP_THRESHOLD_");
        if let Some(value) = given {
            cmd.env("MALLOC_MMAP_THRESHOLD_", value);
        }
        let child = cmd
            .args(["--data-dir", "data", "--checkpoint-dir", "cp", "--database-url", &db.url, "--file-settle", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Killed if an assertion fails first.
        let mut child = Killed(child);
        let child = &mut child.0;
        let client = db.client().await;
        wait_for_schema(&client).await;
        let env = environ(child.id());
        assert_eq!(env.iter().filter(|v| v.starts_with("MALLOC_MMAP_THRESHOLD_=")).collect::<Vec<_>>(), [expected]);
        let mut g = generator::Generator::new(settings(29), "threshold");
        let files = vec![publish_file(&data, &mut g, 0)];
        wait_for_loads(&client, 1, Duration::from_secs(30)).await;
        sigterm(child.id());
        assert_eq!(wait_exit(child, Duration::from_secs(20)).code(), Some(0), "the same process ends well");
        assert_eq!(table(&client).await, oracle(&files).0);
    }
    Ok(())
}

#[tokio::test]
async fn a_relative_data_folder_takes_a_renamed_file_at_once() -> TestResult {
    // `streamer --data-dir data`, as people run it from their project's folder.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    renamed_files_are_taken_at_once(dir.path(), "data", &data).await
}

#[tokio::test]
async fn a_data_folder_behind_a_symbolic_link_takes_a_renamed_file_at_once() -> TestResult {
    // The folder is given through a link (a mounted volume, a shared folder):
    // the watch and the hints both use the resolved folder.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::os::unix::fs::symlink(&data, dir.path().join("link"))?;
    renamed_files_are_taken_at_once(dir.path(), "link", &data).await
}

#[test]
fn bad_settings_are_named_in_the_first_line_and_exit_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cases: [(&[&str], &str); 4] = [
        (&["--once"], "--database-url/DATABASE_URL"),
        (&["--database-url", "postgres://h/db", "--max-files-per-batch", "0"], "--max-files-per-batch"),
        (&["--database-url", "postgres://h/db", "--clean-source", "shred"], "--clean-source"),
        (&["--database-url", "postgres://h:port/db"], "--database-url"),
    ];
    for (args, setting) in cases {
        let out = streamer(dir.path()).args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:") && first.contains(setting), "{args:?}: {stderr}");
        assert!(!stderr.contains('\x1b'), "no colour off a terminal: {stderr}");
    }
    // A misspelt flag: clap's whole message, its tip included.
    let out = streamer(dir.path()).args(["--max-file-per-batch", "3"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tip:") && stderr.contains("--max-files-per-batch"), "{stderr}");
    Ok(())
}

#[test]
fn credentials_never_appear_in_logs_or_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let secret = "s3cr3t-Passw0rd";
    // Nothing listens on port 1: the streamer waits and says why.
    let url = format!("postgres://postgres:{secret}@127.0.0.1:1/events");
    let child = streamer(dir.path())
        .args(["--data-dir", &dir.path().join("data").display().to_string()])
        .args(["--checkpoint-dir", &dir.path().join("cp").display().to_string(), "--max-backoff", "200"])
        .env("DATABASE_URL", &url)
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1_500));
    sigterm(child.id());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("PostgreSQL is not reachable"), "{stderr}");
    assert!(stderr.contains("postgres:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
    Ok(())
}

#[test]
fn help_documents_every_setting() -> TestResult {
    let out = streamer(std::path::Path::new("/")).arg("--help").output()?;
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--checkpoint-dir",
        "--database-url",
        "--once",
        "--trigger-interval",
        "--max-files-per-batch",
        "--max-bytes-per-batch",
        "--poll",
        "--clean-source",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    Ok(())
}
