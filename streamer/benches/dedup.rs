//! The streamer's own work on a chunk before the server gets it: the CSV
//! read into a Polars frame, and the dedup on `(user_id, event_time)` that
//! keeps the last row in (file, line) order and sorts the rows by key, then
//! the Polars group-by that makes the chunk's analytics deltas. A batch's
//! first chunk is read and deduplicated while its loader's PostgreSQL
//! backend waits, so those two are on every batch's critical path; the
//! group-by runs while the loader copies the chunk.
//!
//! Run: `cargo bench -p streamer --bench dedup` (ROWS=N rows per file,
//! FILES=N files per chunk, ROUNDS=N timed rounds). Prints figures; asserts
//! nothing but that the dedup dropped the generator's repeated keys.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, TimeZone, Utc};
use generator::{Generator, Settings};
use streamer::batch::{aggregate::aggregate, dedup, read_whole};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The scale-out data set's batch: four files of 15 000 rows, 2 % repeated keys.
    let (rows, files, rounds) = (env("ROWS", 15_000), env("FILES", 4), env("ROUNDS", 30));
    let settings = Settings {
        users: 100_000,
        products: 1_000,
        rows: Some(rows),
        duplicate_rate: 0.02,
        jitter_micros: 86_400_000_000,
        seed: 7,
        ..Settings::default()
    };
    let mut g = Generator::new(settings, "bench");
    let t = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).single().ok_or("a valid instant")?;
    let contents: Vec<Vec<u8>> = (0..files).map(|k| g.next_file(t + TimeDelta::seconds(k as i64)).contents).collect();
    let bytes: usize = contents.iter().map(Vec::len).sum();

    let (mut read, mut deduped, mut aggregated) = (Vec::new(), Vec::new(), Vec::new());
    let mut kept = 0;
    for round in 0..rounds + 3 {
        let started = Instant::now();
        let frames = contents
            .iter()
            .enumerate()
            .map(|(i, c)| read_whole(c, i as u32).map(|p| p.frame))
            .collect::<Result<Vec<_>, _>>()?;
        let reading = started.elapsed();
        let started = Instant::now();
        let d = dedup(frames, files)?;
        let deduping = started.elapsed();
        kept = d.frame.height();
        let started = Instant::now();
        let deltas = aggregate(&d.frame, 60_000_000)?;
        let aggregating = started.elapsed();
        assert!(!deltas.is_empty());
        if round >= 3 {
            read.push(reading);
            deduped.push(deduping);
            aggregated.push(aggregating);
        }
    }
    let total = rows * files;
    assert!(kept < total && kept > total * 9 / 10, "the dedup kept {kept} of {total} rows");
    let (read, deduped, aggregated) = (median(read), median(deduped), median(aggregated));
    println!("chunk: {files} files × {rows} rows, {:.1} MB, {kept} rows after the dedup", bytes as f64 / 1e6);
    println!("read  (median of {rounds}): {:7.2} ms  {:6.2} µs a row", ms(read), ms(read) * 1e3 / total as f64);
    println!("dedup (median of {rounds}): {:7.2} ms  {:6.2} µs a row", ms(deduped), ms(deduped) * 1e3 / total as f64);
    println!(
        "aggregate (one-minute windows, median of {rounds}): {:7.2} ms  {:6.2} µs a row",
        ms(aggregated),
        ms(aggregated) * 1e3 / kept as f64
    );
    Ok(())
}
