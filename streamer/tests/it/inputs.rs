//! Inputs as people have them: gzip and zstd files (and a damaged archive),
//! include and exclude globs, date-partitioned subfolders (walked, watched
//! and archived), and the cut-off for files too old when first seen — each
//! through the real binary or the library against a real PostgreSQL, with
//! a clean file beside it that always loads.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::*;
use generator::Settings;

fn settings(seed: u64) -> Settings {
    Settings { seed, min_events: 100, max_events: 200, duplicate_rate: 0.05, ..Settings::default() }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// Writes `bytes` to `dir/name` by rename, creating the folders on the
/// way. Each file is a second newer than the last (files written within one
/// clock tick of the kernel share a modification time, and then the file
/// order goes by name).
fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    put_at(dir, name, bytes, SystemTime::now() - Duration::from_secs(3_600) + Duration::from_secs(k))
}

async fn states(client: &tokio_postgres::Client) -> Vec<(String, String, Option<String>)> {
    client
        .query("SELECT file_name, state, reason FROM source_files ORDER BY file_name", &[])
        .await
        .expect("registry")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn gzip_and_zstd_files_load_like_plain_ones_and_a_damaged_archive_is_quarantined() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (plain, data, cp) = (dir.path().join("plain"), dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&plain, settings(81), 4);
    let read = |i: usize| std::fs::read(&files[i]).expect("generated");
    put(&data, "a.csv.gz", &gzip(&read(0)));
    put(&data, "b.csv.zst", &zstd::encode_all(&read(1)[..], 3)?);
    // Told by its first bytes, not its name.
    put(&data, "c.csv", &gzip(&read(2)));
    put(&data, "d.csv", &read(3));
    let whole = gzip(&read(0));
    put(&data, "damaged.csv.gz", &whole[..whole.len() * 2 / 3]);
    let mut bad_zstd = zstd::encode_all(&read(1)[..], 3)?;
    bad_zstd.truncate(bad_zstd.len() - 8);
    put(&data, "damaged.csv.zst", &bad_zstd);

    streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    let client = db.client().await;
    assert_eq!(table(&client).await, oracle(&files).0, "every row of the four good files, nothing of the damaged");
    let states = states(&client).await;
    for (name, state, reason) in &states {
        if name.starts_with("damaged") {
            let encoding = if name.ends_with(".gz") { "gzip" } else { "zstd" };
            assert_eq!(state, "quarantined", "{name}");
            let reason = reason.as_deref().unwrap_or_default();
            assert!(reason.contains(&format!("corrupt {encoding} archive")), "{name}: {reason}");
            assert!(data.join("_rejected").join(name).exists(), "{name} moved to quarantine");
        } else {
            assert_eq!(state, "loaded", "{name}: {reason:?}");
        }
    }
    assert_eq!(states.len(), 6);
    Ok(())
}

#[tokio::test]
async fn globs_and_subfolders_choose_the_files_and_links_are_never_followed() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (plain, data, cp) = (dir.path().join("plain"), dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&plain, settings(82), 5);
    let read = |i: usize| std::fs::read(&files[i]).expect("generated");
    put(&data, "top.csv", &read(0));
    put(&data, "2026/12/01/part-0.csv", &read(1));
    put(&data, "2026/12/02/part-0.csv.gz", &gzip(&read(2)));
    put(&data, "skip_me.csv", &read(3));
    put(&data, "notes.txt", b"not events");
    put(&data, "_archive/old.csv", &read(3));
    put(&data, ".staging/next.csv", &read(3));
    let outside = dir.path().join("outside");
    put(&outside, "secret.csv", &read(4));
    std::os::unix::fs::symlink(&outside, data.join("2026/linked"))?;

    let out = streamer_bin(
        &data,
        &cp,
        &db.url,
        &["--once", "--recursive", "--exclude", "skip_*", "--clean-source", "archive"],
        &[],
    )
    .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let client = db.client().await;
    let (got, want) = (table(&client).await, oracle(&files[..3]).0);
    let differ: Vec<_> = got.iter().filter(|(k, v)| want.get(k) != Some(v)).map(|(k, _)| *k).collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
    assert!(
        differ.is_empty() && missing.is_empty(),
        "top.csv and both partitions; nothing else: {differ:?} {missing:?}"
    );
    let names: Vec<String> = states(&client).await.into_iter().map(|(n, s, _)| format!("{n}:{s}")).collect();
    assert_eq!(names, ["2026/12/01/part-0.csv:loaded", "2026/12/02/part-0.csv.gz:loaded", "top.csv:loaded"]);
    // Each file passed over is named once, with why.
    for (name, why) in
        [("notes.txt", "matches no --include glob"), ("skip_me.csv", "--exclude"), ("2026/linked", "symbolic link")]
    {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("never read") && l.contains(name)).collect();
        assert_eq!(lines.len(), 1, "{name} named once: {stderr}");
        assert!(lines[0].contains(why), "{name}: {}", lines[0]);
    }
    assert!(
        !stderr.contains("old.csv") && !stderr.contains("next.csv"),
        "the pipeline's own names are passed over in silence"
    );
    // Archived by their own names; the partitions' folders stay.
    assert!(!data.join("2026/12/01/part-0.csv").exists() && data.join("_archive/part-0.csv").exists());
    assert!(data.join("_archive/part-0.csv.gz").exists() && data.join("_archive/top.csv").exists());
    assert!(data.join("skip_me.csv").exists() && outside.join("secret.csv").exists());

    // Without --recursive, the subfolders are not the stream's.
    let db2 = TestDb::new().await;
    let data2 = dir.path().join("data2");
    put(&data2, "top.csv", &read(0));
    put(&data2, "2026/12/01/part-0.csv", &read(1));
    streamer::run(args(&data2, &dir.path().join("cp2"), &db2.url, &["--once"]), Default::default()).await?;
    assert_eq!(table(&db2.client().await).await, oracle(&files[..1]).0);
    Ok(())
}

#[tokio::test]
async fn a_file_in_a_new_subfolder_is_seen_by_the_watcher() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (plain, data, cp) = (dir.path().join("plain"), dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let files = generate(&plain, settings(83), 2);
    // Listings and settling too slow to matter: only the watcher's hint can make the file ready.
    let mut child = streamer_bin(
        &data,
        &cp,
        &db.url,
        &["--recursive", "--rescan-interval", "600000", "--file-settle", "600000"],
        &[],
    )
    .stderr(std::process::Stdio::null())
    .spawn()?;
    let client = db.client().await;
    wait_for_schema(&client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    put(&data, "2026/12/03/late.csv", &std::fs::read(&files[0])?);
    put(&data, "2026/12/03/deeper/later.csv", &std::fs::read(&files[1])?);
    wait_for_loads(&client, 2, Duration::from_secs(20)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(table(&client).await, oracle(&files).0);
    Ok(())
}

#[tokio::test]
async fn files_older_than_the_cut_off_are_skipped_named_and_never_loaded() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, settings(84), 3);
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    std::fs::File::options().write(true).open(&files[0])?.set_modified(two_days_ago)?;

    let out = streamer_bin(&data, &cp, &db.url, &["--once", "--max-file-age", "86400"], &[]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let old = files[0].file_name().and_then(|n| n.to_str()).ok_or("name")?;
    assert_eq!(stderr.lines().filter(|l| l.contains("file skipped") && l.contains(old)).count(), 1, "{stderr}");
    let client = db.client().await;
    assert_eq!(table(&client).await, oracle(&files[1..]).0);
    let skipped = states(&client).await.into_iter().find(|(n, _, _)| n == old).ok_or("registered")?;
    assert_eq!(skipped.1, "skipped");
    assert!(skipped.2.as_deref().unwrap_or_default().contains("--max-file-age"), "{skipped:?}");

    // Skipped for good: a later start does not load it, nor name it again.
    let out = streamer_bin(&data, &cp, &db.url, &["--once", "--max-file-age", "86400"], &[]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("file skipped"), "{stderr}");
    assert_eq!(table(&client).await, oracle(&files[1..]).0);
    Ok(())
}
