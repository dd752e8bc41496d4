//! Upgrading from the release before versioned migrations (2026-11-22,
//! commit 6ab7308): `tests/fixtures/release-2026-11-22/` holds what its own
//! binaries left after loading three generated files — the database
//! (`pg_dump --inserts` of schema and data), the v1 checkpoint folder, the
//! files and their modification times. (`make.sh` there made it.) The new
//! streamer brings that database up to date, loads nothing twice, loads a
//! new file, and keeps every derived table equal to its GROUP BY; a database
//! of a newer version, and a migration changed after it was applied, are
//! refused with a message.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::common::*;
use generator::Settings;
use streamer::sink::schema::MIGRATIONS;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-2026-11-22")
}

/// Restores the released database into `db` and its folders into `dir`;
/// returns the data folder, the checkpoint folder and the released files.
async fn restore(db: &TestDb, dir: &Path) -> TestResult<(PathBuf, PathBuf, Vec<PathBuf>)> {
    let dump = std::fs::read_to_string(fixture().join("database.sql"))?;
    // psql's meta-commands (`\restrict`) are not SQL.
    let sql: String = dump.lines().filter(|l| !l.starts_with('\\')).collect::<Vec<_>>().join("\n");
    let client = db.client().await;
    client.batch_execute(&sql).await?;
    client.batch_execute("SELECT pg_catalog.set_config('search_path', 'public', false)").await?;
    let (data, cp) = (dir.join("data"), dir.join("checkpoints"));
    copy_tree(&fixture().join("checkpoints"), &cp);
    std::fs::create_dir_all(&data)?;
    let mut files = Vec::new();
    for line in std::fs::read_to_string(fixture().join("mtimes.txt"))?.lines() {
        let (name, ns) = line.split_once(' ').ok_or("name and mtime")?;
        let path = data.join(name);
        std::fs::copy(fixture().join("data").join(name), &path)?;
        let mtime = UNIX_EPOCH + Duration::from_nanos(ns.parse()?);
        std::fs::File::options().write(true).open(&path)?.set_modified(mtime)?;
        files.push(path);
    }
    Ok((data, cp, files))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("folder");
    for entry in std::fs::read_dir(from).expect("fixture folder").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copied");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_and_checkpoint_of_the_last_release_are_upgraded_in_place() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp, mut files) = restore(&db, dir.path()).await?;
    let client = db.client().await;
    let before = count(&client, "SELECT count(*) FROM events").await;
    let loads = count(&client, "SELECT count(*) FROM load_history").await;
    assert!(
        before > 0 && loads == files.len() as i64,
        "the fixture holds the released load: {before} rows, {loads} loads"
    );
    assert_eq!(table(&client).await, oracle(&files).0, "the released streamer's own table");

    // One more file, then the new streamer on the old database and checkpoint.
    let mut g =
        generator::Generator::new(Settings { seed: 991, min_events: 50, max_events: 120, ..Settings::default() }, "up");
    files.push(publish_file(&data, &mut g, 100));
    let out = streamer_bin(&data, &cp, &db.url, &["--once"], &[]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>(), "every migration recorded once");
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, loads + 1, "only the new file was loaded");
    assert_eq!(count(&client, "SELECT count(*) - count(DISTINCT file_name) FROM load_history").await, 0);
    assert_eq!(table(&client).await, oracle(&files).0);
    assert_eq!(count(&client, "SELECT count(*) FROM source_files WHERE state = 'loaded'").await, files.len() as i64);
    assert_analytics_exact(&client).await;

    // A second start changes nothing.
    let out = streamer_bin(&data, &cp, &db.url, &["--once"], &[]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, loads + 1);
    Ok(())
}

#[tokio::test]
async fn a_newer_database_or_an_edited_migration_is_refused_with_a_message() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    generate(&data, Settings { seed: 992, min_events: 20, max_events: 40, ..Settings::default() }, 1);
    let run = || streamer_bin(&data, &cp, &db.url, &["--once"], &[]).output();
    assert!(run()?.status.success());
    let client = db.client().await;

    client
        .execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (99, '099_future.sql', 'x')", &[])
        .await?;
    let out = run()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("migrated by a newer streamer (schema version 99)"), "{stderr}");
    client.execute("DELETE FROM schema_migrations WHERE version = 99", &[]).await?;

    client.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 5", &[]).await?;
    let out = run()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("migration 005_registry.sql has changed since it was applied"), "{stderr}");
    Ok(())
}
