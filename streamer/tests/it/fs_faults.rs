//! Filesystem faults under the checkpoint folder: full (ENOSPC) and
//! read-only (EROFS), made real with a small tmpfs mounted over it. While the
//! fault lasts no batch is planned (so none touches the database) and the
//! error is logged; when it goes away the stream carries on by itself.
//!
//! Mounting needs root (as in CI here); elsewhere the test says it is
//! skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use generator::{Generator, Settings};
use streamer::checkpoint::Checkpoint;
use tokio_util::sync::CancellationToken;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    path
}

#[tokio::test]
async fn a_full_or_read_only_checkpoint_folder_holds_batches_back_until_it_is_fixed() -> TestResult {
    init_logs();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let Some(tmpfs) = Tmpfs::mount(&cp, "1m") else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    let shutdown = CancellationToken::new();
    let stream = tokio::spawn(streamer::run(args(&data, &cp, &db.url, &[]), shutdown.clone()));
    let client = db.client().await;
    wait_for_schema(&client).await;
    let mut g = Generator::new(Settings { seed: 41, min_events: 50, max_events: 200, ..Settings::default() }, "fs");
    let mut files = Vec::new();
    let mut publish = |n: usize, files: &mut Vec<_>| publish_more(&data, &mut g, n, files);
    publish(2, &mut files);
    wait_for_loads(&client, 2, Duration::from_secs(20)).await;

    // Full.
    let filler = fill(&cp);
    publish(3, &mut files);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM load_history").await,
        2,
        "nothing loaded while the checkpoint is full"
    );
    std::fs::remove_file(filler)?;
    wait_for_loads(&client, 5, Duration::from_secs(20)).await;

    // Read-only.
    tmpfs.remount("ro");
    publish(3, &mut files);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM load_history").await,
        5,
        "nothing loaded while the checkpoint is read-only"
    );
    tmpfs.remount("rw");
    wait_for_loads(&client, 8, Duration::from_secs(20)).await;

    shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(15), stream).await???;
    assert_eq!(summary.totals.files, 8);
    assert_eq!(table(&client).await, oracle(&files).0);
    assert_eq!(count(&client, "SELECT count(DISTINCT file_name) FROM load_history").await, 8);
    assert!(Checkpoint::open(&cp)?.pending().next().is_none());
    Ok(())
}
