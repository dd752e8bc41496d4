//! Start-up cost after a long history: a source with 100 000 loaded files
//! (all still in the data folder, the worst case: none can be forgotten),
//! then what a restart does before its first claim — open the checkpoint
//! (a log kept at its newest entries), list the folder, and look the present
//! files up in the database's file registry.
//!
//! Run: `DATABASE_URL=postgres://… cargo bench -p streamer --bench restart`
//! (FILES=N to change the count). Prints figures; asserts nothing but that
//! every file is found registered.

use std::time::{Duration, Instant};

use chrono::Utc;
use streamer::checkpoint::{Checkpoint, Commit, CommittedFile, FileStatus, PlannedFile, FORMAT_VERSION};
use streamer::watch::{file_id, Discovery};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: usize = std::env::var("FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let admin = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a PostgreSQL server")?;
    let per_batch = 100;
    let dir = tempfile::tempdir()?;
    let (data, cp_dir) = (dir.path().join("data"), dir.path().join("checkpoints"));
    std::fs::create_dir_all(&data)?;

    let db = format!("bench_restart_{}", uuid::Uuid::new_v4().simple());
    let admin_client = streamer::pg::connect(&streamer::pg::Target::parse(&admin)?, "bench").await?;
    admin_client.batch_execute(&format!("CREATE DATABASE {db}")).await?;
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => admin.clone(),
    };
    let result = run(files, per_batch, &data, &cp_dir, &url).await;
    admin_client.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await?;
    result
}

async fn run(
    files: usize,
    per_batch: usize,
    data: &std::path::Path,
    cp_dir: &std::path::Path,
    url: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let making = Instant::now();
    let mut ids = Vec::with_capacity(files);
    for i in 0..files {
        let name = format!("events_{i:08}.csv");
        std::fs::write(data.join(&name), b"")?;
        ids.push(file_id(&name, &std::fs::metadata(data.join(&name))?));
    }
    let mut client = streamer::pg::connect(&streamer::pg::Target::parse(url)?, "bench").await?;
    streamer::sink::schema::migrate(&mut client).await?;
    let source = data.canonicalize()?.display().to_string();
    streamer::registry::seed_loaded(&mut client, &source, &ids).await?;
    let mut cp = Checkpoint::open(cp_dir)?;
    for (n, chunk) in ids.chunks(per_batch).enumerate() {
        let planned =
            chunk.iter().enumerate().map(|(i, id)| PlannedFile { file_id: (n * per_batch + i) as i32, id: id.clone() });
        let plan = cp.plan(planned.collect())?;
        let files = plan
            .files
            .iter()
            .map(|f| CommittedFile { file: f.id.clone(), status: FileStatus::Loaded, reason: None })
            .collect();
        cp.commit(&Commit {
            version: FORMAT_VERSION,
            batch_id: plan.batch_id,
            committed_at: Utc::now(),
            abandoned: false,
            files,
        })?;
        if plan.batch_id % 100 == 0 {
            cp.compact()?;
        }
    }
    cp.compact()?;
    drop(cp);
    println!(
        "setup: {files} files registered as loaded, {} batches of {per_batch} in the checkpoint, {:.1} s",
        files / per_batch,
        making.elapsed().as_secs_f64()
    );

    let (mut opens, mut lists, mut lookups, mut totals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = Instant::now();
        let cp = Checkpoint::open(cp_dir)?;
        let t1 = Instant::now();
        let discovery = Discovery::start(data, streamer::select::Selection::default(), Duration::ZERO, None)?;
        let listing = discovery.list()?;
        let t2 = Instant::now();
        let known = streamer::registry::known(&client, &source, &listing.present).await?;
        let todo = listing.ready.iter().filter(|c| !known.contains(&c.id)).count();
        let t3 = Instant::now();
        assert_eq!(todo, 0, "every file is registered");
        drop(cp);
        opens.push(t1 - t0);
        lists.push(t2 - t1);
        lookups.push(t3 - t2);
        totals.push(t3 - t0);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!("open checkpoint (median of 5): {:.1} ms", ms(median(opens)));
    println!("list the folder (median of 5): {:.1} ms", ms(median(lists)));
    println!("look {files} files up in the registry (median of 5): {:.1} ms", ms(median(lookups)));
    println!("restart to first claim (median of 5): {:.1} ms", ms(median(totals)));
    Ok(())
}
