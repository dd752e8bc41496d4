//! Start-up cost after a long history: a checkpoint that has processed
//! 100 000 files (all still in the data folder, the worst case: none can be
//! forgotten), then the two things a restart does before its first batch —
//! open the checkpoint, and list the folder and filter what is processed.
//!
//! Run: `cargo bench -p streamer --bench restart` (FILES=N to change the count).
//! Prints figures; asserts nothing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use streamer::checkpoint::{Checkpoint, Commit, CommittedFile, Disposition, FORMAT_VERSION};
use streamer::watch::{file_id, Discovery};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: usize = std::env::var("FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let per_batch = 100;
    let dir = tempfile::tempdir()?;
    let (data, cp_dir) = (dir.path().join("data"), dir.path().join("checkpoints"));
    std::fs::create_dir_all(&data)?;

    let making = Instant::now();
    let mut names = Vec::with_capacity(files);
    for i in 0..files {
        let name = format!("events_{i:08}.csv");
        std::fs::write(data.join(&name), b"")?;
        names.push(name);
    }
    let present: HashSet<String> = names.iter().cloned().collect();
    let mut cp = Checkpoint::open(&cp_dir)?;
    for chunk in names.chunks(per_batch) {
        let ids = chunk
            .iter()
            .map(|n| std::fs::metadata(data.join(n)).map(|m| file_id(n, &m)))
            .collect::<Result<Vec<_>, _>>()?;
        let plan = cp.plan(ids)?;
        let files =
            plan.files.iter().map(|f| CommittedFile { file: f.clone(), disposition: Disposition::Keep }).collect();
        cp.commit(Commit { version: FORMAT_VERSION, batch_id: plan.batch_id, committed_at: Utc::now(), files })?;
        if cp.wants_compaction() {
            cp.compact(&present)?;
        }
    }
    drop(cp);
    println!(
        "setup: {files} files in {} batches of {per_batch}, {:.1} s",
        files / per_batch,
        making.elapsed().as_secs_f64()
    );

    let (mut opens, mut lists, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut tracked = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let cp = Checkpoint::open(&cp_dir)?;
        let t1 = Instant::now();
        let discovery = Discovery::start(&data, Duration::ZERO, None)?;
        let listing = discovery.list()?;
        let todo = listing.ready.iter().filter(|c| !cp.is_processed(&c.id)).count();
        let t2 = Instant::now();
        assert_eq!(todo, 0, "every file is processed");
        tracked = cp.tracked_files();
        opens.push(t1 - t0);
        lists.push(t2 - t1);
        totals.push(t2 - t0);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!("tracked files after restart: {tracked}");
    println!("open checkpoint (median of 5): {:.1} ms", ms(median(opens)));
    println!("list + filter folder (median of 5): {:.1} ms", ms(median(lists)));
    println!("restart to first plan (median of 5): {:.1} ms", ms(median(totals)));
    Ok(())
}
