//! The end-to-end fuzzer: mutated and random files go through the real
//! `streamer` binary into a real PostgreSQL, each round beside clean files
//! whose keys no hostile file shares. The invariant, every round:
//! - the process exits 0;
//! - every clean file loads exactly (its rows equal their oracle);
//! - every file is settled once (loaded, quarantined or changed);
//! - every counted row is somewhere: a loaded file's counts add up, its
//!   rejected rows are all in `rejected_rows`, and the rows of `events`
//!   from a file are at most the rows it wrote;
//! - the derived tables equal their GROUP BY;
//! - the last resort never fired: no file was isolated for a value the
//!   database refused (validation catches every value first).
//!
//! `FUZZ_CASES` hostile files in all (default 60, in rounds of 20; a long
//! run: `FUZZ_CASES=5000`), `FUZZ_SEED` repeats a run (printed).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::*;
use contract::HEADER;

/// Users of the clean files: no generated or mutated file reaches them.
const CLEAN_USERS: i32 = 50_000_000;

const NASTY: [&[u8]; 24] = [
    b"\0",
    b"\"",
    b"\"\"",
    b",",
    b"\n",
    b"\r",
    b"\r\n",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\xe9",
    b"\xc3",
    b"-5000-01-01 00:00:00",
    b"+99999-01-01T00:00:00Z",
    b"0001-01-01T00:00:00Z",
    b"9999-12-31T23:59:59.999999Z",
    b"2147483648",
    b"-1",
    b"0",
    b"99999999.99",
    b"100000000.00",
    b"1e308",
    b"NaN",
    b"purchase",
    b"\xf0\x9f\x92\xa5",
];

/// One hostile file from `rng`.
fn hostile(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    match rng.random_range(0..10) {
        // Random bytes, with or without the header.
        0 => {
            let n = rng.random_range(0..4096);
            let random: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            out = if rng.random_bool(0.5) { [HEADER.as_bytes(), b"\n", &random].concat() } else { random };
        }
        // Tiny files.
        1 => out = [&b""[..], b"\n", HEADER.as_bytes(), b"x", b"\"", b"\0"][rng.random_range(0..6)].to_vec(),
        // A huge record (quoted or not), then the rest.
        2 => {
            let at = rng.random_range(HEADER.len()..out.len().max(HEADER.len() + 1));
            let quote = if rng.random_bool(0.5) { &b"\""[..] } else { b"" };
            let field = vec![b'y'; rng.random_range(100_000..3_000_000)];
            let insert =
                [b"\n1,".as_slice(), quote, &field, quote, b",b@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n"].concat();
            out.splice(at.min(out.len())..at.min(out.len()), insert);
        }
        // The header mutated.
        3 => {
            let h = HEADER.len().min(out.len());
            let nasty = NASTY[rng.random_range(0..NASTY.len())];
            let at = rng.random_range(0..=h);
            out.splice(at..at, nasty.iter().copied());
        }
        // Fields swapped for nasty values, or bytes spliced in, many times.
        _ => {
            for _ in 0..rng.random_range(1..40) {
                let at = rng.random_range(0..=out.len());
                if rng.random_bool(0.3) {
                    let b: u8 = rng.random();
                    if at < out.len() {
                        out[at] = b;
                    }
                } else {
                    let nasty = NASTY[rng.random_range(0..NASTY.len())];
                    out.splice(at..at, nasty.iter().copied());
                }
            }
        }
    }
    out
}

fn clean(dir: &Path, index: usize, rows: i32) -> std::path::PathBuf {
    let first = CLEAN_USERS + index as i32 * 1_000;
    let mut text = format!("{HEADER}\n");
    for u in first..first + rows {
        text.push_str(&format!("{u},Clean,c@x,purchase,{},Mug,Home,2.25,2026-01-01T00:0{}:00Z\n", u % 9 + 1, u % 10));
    }
    let path = dir.join(format!("clean_{index:05}.csv"));
    std::fs::write(&path, text).expect("clean file");
    path
}

async fn round(rng: &mut StdRng, cases: usize, round: usize) -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let settings = generator::Settings { seed: rng.random(), min_events: 5, max_events: 60, ..Default::default() };
    let mut g = generator::Generator::new(settings, "fuzz");
    let mut cleans = Vec::new();
    for i in 0..cases {
        let base = g.next_file(chrono::Utc::now()).contents;
        std::fs::write(data.join(format!("hostile_{round:03}_{i:03}.csv")), hostile(rng, &base))?;
        cleans.push(clean(&data, round * cases + i, rng.random_range(1..30)));
    }
    let flags = ["--once", "--max-files-per-batch", "7", "--chunk-bytes", "65536", "--max-rejects-per-file", "500"];
    let out = streamer_bin(&data, &cp, &db.url, &flags, &[("NO_COLOR", "1")]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "round {round}: the streamer failed: {stderr}");
    assert!(!stderr.contains("panicked"), "round {round}: {stderr}");
    assert!(!stderr.contains("the database refused"), "round {round}: a value reached PostgreSQL unchecked: {stderr}");

    let client = db.client().await;
    let got: Table = table(&client).await.into_iter().filter(|((u, _), _)| *u >= CLEAN_USERS).collect();
    assert!(got == oracle(&cleans).0, "round {round}: a clean file did not load exactly");
    let files = (cases * 2) as i64;
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, files, "round {round}: each file once");
    assert_eq!(count(&client, "SELECT count(*) FROM source_files WHERE state = 'pending'").await, 0);
    let lost = count(
        &client,
        "SELECT count(*) FROM load_history h WHERE h.status = 'loaded' AND h.rows_rejected <> \
         (SELECT count(*) FROM rejected_rows r WHERE r.file_name = h.file_name)",
    )
    .await;
    assert_eq!(lost, 0, "round {round}: a file's rejected rows are all recorded");
    let overfull = count(
        &client,
        "SELECT count(*) FROM source_files f JOIN load_history h ON h.file_name = f.file_name \
         WHERE (SELECT count(*) FROM events e WHERE e.src_file = f.file_id) > h.rows_inserted + h.rows_updated + h.rows_unchanged",
    )
    .await;
    assert_eq!(overfull, 0, "round {round}: events holds no row a file did not write");
    assert_analytics_exact(&client).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_files_never_stop_the_stream_nor_lose_a_counted_row() -> TestResult {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    let cases: usize = std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    println!("fuzz seed {seed} (FUZZ_SEED={seed} repeats it), {cases} hostile files");
    let mut rng = StdRng::seed_from_u64(seed);
    let per_round = 20;
    let started = std::time::Instant::now();
    for r in 0..cases.div_ceil(per_round) {
        round(&mut rng, per_round.min(cases - r * per_round), r).await?;
    }
    println!(
        "fuzz: {cases} hostile files and {cases} clean ones, crashes: 0, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
