//! The generator's behaviour through its library and its binary: the CSV
//! files it writes are a contract the streamer's tests rely on. (One
//! integration-test binary for the crate.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use contract::HEADER;
use generator::{Generator, Settings};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Why a record breaks the contract (the contract's own validator), or `None`.
fn contract_violation(record: &csv::StringRecord) -> Option<String> {
    if let Err(reason) = contract::validate::field_count(record.len()) {
        return Some(reason);
    }
    let fields: [&str; 9] = std::array::from_fn(|i| &record[i]);
    contract::validate(fields).err()
}

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).expect("test instants are valid")
}

/// Rows of one file, checking the header.
fn rows_of(contents: &[u8]) -> Vec<csv::StringRecord> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(contents);
    let header = reader.headers().expect("a header row").clone();
    assert_eq!(header.iter().collect::<Vec<_>>().join(","), HEADER);
    reader.records().map(|r| r.expect("well-formed CSV")).collect()
}

fn key(record: &csv::StringRecord) -> (String, String) {
    (record[0].to_owned(), record[8].to_owned())
}

fn settings(seed: u64) -> Settings {
    Settings { seed, ..Settings::default() }
}

#[test]
fn same_seed_and_instants_give_byte_identical_files() {
    let make = || {
        let mut g = Generator::new(settings(7), "a");
        let t = instant("2026-01-01T00:00:00Z");
        (0..20).map(|k| g.next_file(t + chrono::TimeDelta::seconds(k)).contents).collect::<Vec<_>>()
    };
    assert_eq!(make(), make());
    let mut other = Generator::new(settings(8), "a");
    assert_ne!(make()[0], other.next_file(instant("2026-01-01T00:00:00Z")).contents);
}

#[test]
fn every_generated_row_is_valid_and_rows_are_in_bounds() {
    let mut g = Generator::new(settings(1), "a");
    let t = instant("2026-03-01T12:00:00Z");
    for k in 0..50 {
        let file = g.next_file(t + chrono::TimeDelta::milliseconds(k * 100));
        let rows = rows_of(&file.contents);
        assert_eq!(rows.len(), file.rows);
        assert!((100..=1500).contains(&file.rows), "{} rows", file.rows);
        for row in &rows {
            assert_eq!(contract_violation(row), None, "{row:?}");
        }
    }
}

#[test]
fn users_keep_one_name_and_email_across_runs_and_seeds() {
    let mut seen = std::collections::HashMap::new();
    for seed in [1, 2, 3] {
        let mut g = Generator::new(settings(seed), "a");
        let file = g.next_file(instant("2026-01-01T00:00:00Z"));
        for row in rows_of(&file.contents) {
            let profile = (row[1].to_owned(), row[2].to_owned());
            let before = seen.entry(row[0].to_owned()).or_insert_with(|| profile.clone());
            assert_eq!(*before, profile);
        }
    }
}

#[test]
fn without_duplicates_no_two_rows_share_a_key() {
    let mut g = Generator::new(
        Settings { duplicate_rate: 0.0, rows: Some(20_000), jitter_micros: 2_000_000, ..settings(3) },
        "a",
    );
    let t = instant("2026-01-01T00:00:00Z");
    let mut keys = HashSet::new();
    // The clock stands still: every file lands in the same jitter window.
    for _ in 0..10 {
        for row in rows_of(&g.next_file(t).contents) {
            assert!(keys.insert(key(&row)), "repeated key {:?}", key(&row));
        }
    }
}

#[test]
fn duplicate_share_is_within_tolerance_inside_and_across_files() {
    let rate = 0.1;
    let mut g = Generator::new(Settings { duplicate_rate: rate, rows: Some(10_000), ..settings(4) }, "a");
    let t = instant("2026-01-01T00:00:00Z");
    let (mut keys, mut repeated, mut total, mut across, mut changed) = (HashSet::new(), 0, 0, 0, 0);
    let mut first_file_of = std::collections::HashMap::new();
    let mut row_of = std::collections::HashMap::new();
    for k in 0..10 {
        let file = g.next_file(t + chrono::TimeDelta::seconds(k));
        let rows = rows_of(&file.contents);
        let mut here = 0;
        for row in rows {
            total += 1;
            if !keys.insert(key(&row)) {
                repeated += 1;
                here += 1;
                if first_file_of.get(&key(&row)) != Some(&k) {
                    across += 1;
                }
                if row_of.get(&key(&row)) != Some(&row) {
                    changed += 1;
                }
            } else {
                first_file_of.insert(key(&row), k);
                row_of.insert(key(&row), row.clone());
            }
        }
        assert_eq!(here, file.duplicates, "the file's own count of duplicates");
    }
    let share = f64::from(repeated) / f64::from(total);
    assert!((share - rate).abs() < 0.01, "duplicate share {share}");
    assert!(across > 0, "some duplicates repeat a key of an earlier file");
    assert!(changed > 0 && changed < repeated, "some, not all, duplicates change the other fields");
}

#[test]
fn bad_rows_come_in_every_kind_at_the_asked_share() {
    let rate = 0.05;
    let mut g =
        Generator::new(Settings { bad_row_rate: rate, duplicate_rate: 0.0, rows: Some(20_000), ..settings(5) }, "a");
    let file = g.next_file(instant("2026-01-01T00:00:00Z"));
    let rows = rows_of(&file.contents);
    let reasons: Vec<String> = rows.iter().filter_map(contract_violation).collect();
    assert_eq!(reasons.len(), file.bad_rows);
    let share = reasons.len() as f64 / rows.len() as f64;
    assert!((share - rate).abs() < 0.01, "bad-row share {share}");
    let kinds: HashSet<&str> = reasons.iter().map(|r| r.split(':').next().unwrap_or("")).collect();
    for kind in [
        "expected 9 fields, found 8",
        "expected 9 fields, found 10",
        "user_id",
        "product_id",
        "event_type",
        "product_price",
        "event_time",
        "user_name",
    ] {
        assert!(kinds.contains(kind), "no bad row of kind {kind}: {kinds:?}");
    }
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_generator"));
    // Keep the developer's own .env and environment out of the way.
    for var in ["DATA_DIR", "SLEEP_INTERVAL", "MIN_EVENTS", "MAX_EVENTS", "DUPLICATE_RATE", "BAD_ROW_RATE", "N_USERS"] {
        cmd.env_remove(var);
    }
    cmd.current_dir(std::env::temp_dir());
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the generator binary runs")
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    files
}

#[test]
fn one_shot_run_writes_exactly_the_asked_files_and_is_reproducible() -> TestResult {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    for dir in [&a, &b] {
        let dir = dir.path().to_str().ok_or("utf-8 path")?;
        let out = run(&[
            "--data-dir",
            dir,
            "--files",
            "3",
            "--rows",
            "1000",
            "--seed",
            "7",
            "--start-time",
            "2026-01-01T00:00:00Z",
            "--interval",
            "0",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr).matches("file published").count(), 3);
    }
    let (fa, fb) = (csv_files(a.path()), csv_files(b.path()));
    assert_eq!(fa.len(), 3);
    for (x, y) in fa.iter().zip(&fb) {
        let contents = std::fs::read(x)?;
        assert_eq!(contents, std::fs::read(y)?, "byte-identical across runs");
        let rows = rows_of(&contents);
        assert_eq!(rows.len(), 1000);
        assert!(rows.iter().all(|r| contract_violation(r).is_none()));
    }
    Ok(())
}

#[test]
fn bad_settings_are_named_in_the_first_line_and_exit_2() -> TestResult {
    let file = tempfile::NamedTempFile::new()?;
    let under_a_file = file.path().join("sub");
    let input = file.path().to_str().ok_or("utf-8 path")?;
    let under = under_a_file.to_str().ok_or("utf-8 path")?;
    let cases: [(&[&str], &str); 11] = [
        (&["replay", "--input", "/nonexistent/2019-Oct.csv"], "--input"),
        (&["replay", "--input", input, "--speed", "0"], "--speed"),
        (&["replay", "--input", input, "--files-per-second", "0"], "--files-per-second"),
        (&["replay", "--input", input, "--format", "parquet"], "--format"),
        (&["replay", "--input", input, "--data-dir", under], "--data-dir"),
        (&["--min-events", "10", "--max-events", "5"], "--min-events"),
        (&["--duplicate-rate", "1.5"], "--duplicate-rate"),
        (&["--bad-row-rate", "-1"], "--bad-row-rate"),
        (&["--rows", "many"], "--rows"),
        (&["--interval", "-2"], "--interval"),
        (&["--data-dir", under], "--data-dir"),
    ];
    for (args, setting) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:") && first.contains(setting), "{args:?}: {stderr}");
        assert!(!stderr.contains('\x1b'), "no colour off a terminal: {stderr}");
    }
    // A misspelt flag: clap's whole message, its tip included.
    let out = Command::new(env!("CARGO_BIN_EXE_generator")).args(["--min-event", "3"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tip:") && stderr.contains("--min-events"), "{stderr}");
    // An input that is neither format: a clear error, exit 1.
    std::fs::write(file.path(), "a,b,c\n1,2,3\n")?;
    let dir = tempfile::tempdir()?;
    let out = run(&["replay", "--input", input, "--data-dir", dir.path().to_str().ok_or("utf-8 path")?]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("neither the contract's") && stderr.contains("--format"), "{stderr}");
    Ok(())
}

#[test]
fn help_documents_every_setting() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--interval",
        "--min-events",
        "--max-events",
        "--files",
        "--rows",
        "--seed",
        "--start-time",
        "--duplicate-rate",
        "--bad-row-rate",
        "--users",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn a_reader_polling_the_folder_never_sees_a_partial_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_str().ok_or("utf-8 path")?.to_owned();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (dir, done) = (dir.path().to_owned(), done.clone());
        std::thread::spawn(move || {
            let mut checked = HashSet::new();
            let mut looks = 0;
            while !done.load(Ordering::Acquire) || looks == 0 {
                for file in csv_files(&dir) {
                    if checked.contains(&file) {
                        continue;
                    }
                    let contents = std::fs::read(&file).expect("a listed file is readable");
                    let rows = rows_of(&contents);
                    assert_eq!(rows.len(), 20_000, "{} is partial", file.display());
                    checked.insert(file);
                }
                looks += 1;
            }
            checked.len()
        })
    };
    let out = run(&["--data-dir", &path, "--files", "40", "--rows", "20000", "--interval", "0"]);
    done.store(true, Ordering::Release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = reader.join().map_err(|_| "the reader saw a partial file")?;
    assert!(seen > 0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    Ok(())
}

#[test]
fn sigterm_stops_it_cleanly_with_exit_0() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = bin()
        .args(["--data-dir", dir.path().to_str().ok_or("utf-8 path")?, "--interval", "0.05"])
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while csv_files(dir.path()).len() < 3 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
    assert!(csv_files(dir.path()).len() >= 3);
    Ok(())
}
