//! Reading a batch: its files in order, each checked against the event
//! contract row by row ([`file`]), gathered into Polars frames of the
//! contract's explicit schema and deduplicated on `(user_id, event_time)`,
//! the last row winning in (file order, line order) ([`frame`]). A batch is
//! handed on in [`Chunk`]s of about `chunk_bytes` of input each (rejected
//! rows counted at what they hold), each with its contribution to the
//! derived tables ([`aggregate`]), so memory is bounded by the chunk size,
//! not by the batch or the file. No tokio and no SQL here.
//!
//! A file whose staged rows must not commit stops the read
//! ([`BatchRead::excluded`]): one written to while it was read (its identity
//! at the end differs from the one planned), or one with more rejected rows
//! than the cap, or a gzip or zstd archive found damaged part way
//! ([`decode`]). The caller then runs the batch again with that file's
//! outcome forced ([`ReadPlan::forced`]): it is settled without being read.

pub mod aggregate;
pub mod decode;
pub mod file;
pub mod frame;

use std::io::Read;
use std::time::{Duration, Instant};

use polars::prelude::*;
use tokio::sync::oneshot;

pub use aggregate::Deltas;
pub use file::{open_source, read_whole, ContractReader, Part, Rejected, SourceFile, MAX_RAW_LINE};
pub use frame::{dedup, empty_frame, schema, EventView, FILE_COLUMN, LINE_COLUMN, RESCUED_COLUMN};

use crate::checkpoint::FileId;

/// How one file of a batch ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Read to its end; `duplicates` counts its rows that lost to a later
    /// row of the same chunk (later chunks are compared in SQL).
    Rows { rows_read: u64, rejected: u64, duplicates: u64 },
    /// Not loadable: moved to the quarantine folder with the reason.
    Quarantine { reason: String },
    /// Gone when it was to be read.
    Missing,
    /// Not the file that was registered, or written to while it was read:
    /// its new contents are a new file, registered once they settle.
    Changed { reason: String },
}

impl FileOutcome {
    /// The state text of the registry and the load history.
    pub fn status(&self) -> &'static str {
        match self {
            FileOutcome::Rows { .. } => "loaded",
            FileOutcome::Quarantine { .. } => "quarantined",
            FileOutcome::Missing => "missing",
            FileOutcome::Changed { .. } => "changed",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            FileOutcome::Rows { .. } => None,
            FileOutcome::Quarantine { reason } | FileOutcome::Changed { reason } => Some(reason),
            FileOutcome::Missing => Some("the file was gone when its batch read it"),
        }
    }
}

/// One file of a batch as read: its identity taken again as it was opened.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub id: FileId,
    pub outcome: FileOutcome,
}

/// A part of a batch: rows of one or more files, deduplicated within
/// itself and sorted by key, the rejected rows read with them, and what the
/// rows add to the derived tables.
#[derive(Debug)]
pub struct Chunk {
    pub frame: DataFrame,
    pub rejected: Vec<Rejected>,
    /// The rows' deltas: the reader computes them once it has handed the
    /// chunk on, so that its group-bys overlap the staging and merge of the
    /// rows (a group-by's error comes this way too, and the reader stops).
    pub deltas: oneshot::Receiver<PolarsResult<Deltas>>,
}

/// What reading a batch gave.
#[derive(Debug)]
pub struct BatchRead {
    pub files: Vec<FileSummary>,
    /// A file whose staged rows must not commit (index in the batch, and its
    /// outcome): reading stopped there.
    pub excluded: Option<(usize, FileOutcome)>,
    /// Chunks handed on that held rows.
    pub chunks: u32,
    /// Reading and validating, without the time spent deduplicating and
    /// waiting for the loader to take a chunk.
    pub read: Duration,
    pub dedup: Duration,
    /// Time `emit` took: waiting for the loader to take a chunk.
    pub handoff: Duration,
}

/// What to read and how.
#[derive(Debug, Clone, Copy)]
pub struct ReadPlan<'a> {
    pub sources: &'a [SourceFile],
    /// Per source: an outcome decided before (the file is not read).
    pub forced: &'a [Option<FileOutcome>],
    pub chunk_bytes: u64,
    /// More rejected rows than this in one file quarantine it (0: no cap).
    pub max_rejects: u64,
    /// The metrics window width, in microseconds.
    pub window_micros: i64,
}

/// Reads the files of a batch in order and hands on chunks of at most about
/// `chunk_bytes` of input each. `emit` returns false when the receiver is
/// gone; reading then stops and `None` is returned.
pub fn read_batch(plan: ReadPlan<'_>, mut emit: impl FnMut(Chunk) -> bool) -> PolarsResult<Option<BatchRead>> {
    let n = plan.sources.len();
    let mut out = BatchRead {
        files: Vec::with_capacity(n),
        excluded: None,
        chunks: 0,
        read: Duration::ZERO,
        dedup: Duration::ZERO,
        handoff: Duration::ZERO,
    };
    let mut frames: Vec<DataFrame> = Vec::new();
    let mut rejected: Vec<Rejected> = Vec::new();
    let mut pending_bytes = 0u64;
    let started = Instant::now();

    // Deduplicates and hands on what has been gathered, then aggregates it
    // while the loader stages it (the frame's clone shares its buffers).
    let mut flush = |frames: &mut Vec<DataFrame>, rejected: &mut Vec<Rejected>, out: &mut BatchRead| {
        let deduping = Instant::now();
        let deduped = dedup(std::mem::take(frames), n)?;
        out.dedup += deduping.elapsed();
        for (file, d) in out.files.iter_mut().zip(&deduped.duplicates) {
            if let FileOutcome::Rows { duplicates, .. } = &mut file.outcome {
                *duplicates += d;
            }
        }
        if deduped.frame.height() > 0 {
            out.chunks += 1;
        }
        let frame = deduped.frame;
        let (deltas_tx, deltas) = oneshot::channel();
        let handing = Instant::now();
        let go_on = emit(Chunk { frame: frame.clone(), rejected: std::mem::take(rejected), deltas });
        out.handoff += handing.elapsed();
        if !go_on {
            return PolarsResult::Ok(false);
        }
        let aggregating = Instant::now();
        let deltas = aggregate::aggregate(&frame, plan.window_micros);
        out.dedup += aggregating.elapsed();
        // A failed group-by is the batch's error, which the loader gets
        // here; a loader that is gone no longer needs them.
        let failed = deltas.is_err();
        let _ = deltas_tx.send(deltas);
        PolarsResult::Ok(!failed)
    };

    for (index, source) in plan.sources.iter().enumerate() {
        if let Some(outcome) = plan.forced.get(index).cloned().flatten() {
            out.files.push(FileSummary { id: source.id.clone(), outcome });
            continue;
        }
        let (mut reader, probe, id) = match open_reader(source, index) {
            Ok(opened) => opened,
            Err(summary) => {
                out.files.push(summary);
                continue;
            }
        };
        out.files.push(FileSummary { id, outcome: FileOutcome::Rows { rows_read: 0, rejected: 0, duplicates: 0 } });
        let mut first_reject: Option<(u64, String)> = None;
        while let Some(part) = reader.next_part(plan.chunk_bytes.saturating_sub(pending_bytes)) {
            if let Some(outcome) = excluded_by(&mut out, &part, reader.corrupt(), &mut first_reject, plan.max_rejects) {
                out.excluded = Some((index, outcome));
                return finish(out, started);
            }
            pending_bytes += part.bytes + part.rejected.iter().map(Rejected::size).sum::<u64>();
            frames.push(part.frame);
            rejected.extend(part.rejected);
            if pending_bytes >= plan.chunk_bytes {
                if !flush(&mut frames, &mut rejected, &mut out)? {
                    return Ok(None);
                }
                pending_bytes = 0;
            }
        }
        if let Some(outcome) = changed_while_read(probe, source) {
            out.excluded = Some((index, outcome));
            return finish(out, started);
        }
    }
    if (!frames.is_empty() || !rejected.is_empty()) && !flush(&mut frames, &mut rejected, &mut out)? {
        return Ok(None);
    }
    finish(out, started)
}

/// Counts a part of the last file read; the outcome that takes the file
/// out of the batch, if any: a damaged archive, or more rejected rows than
/// `max_rejects` (0: no cap).
fn excluded_by(
    out: &mut BatchRead,
    part: &Part,
    corrupt: Option<&str>,
    first_reject: &mut Option<(u64, String)>,
    max_rejects: u64,
) -> Option<FileOutcome> {
    let mut file_rejects = 0;
    if let Some(FileSummary { outcome: FileOutcome::Rows { rows_read, rejected: bad, .. }, .. }) = out.files.last_mut()
    {
        *rows_read += part.rows_read;
        *bad += part.rejected.len() as u64;
        file_rejects = *bad;
    }
    if let Some(reason) = corrupt {
        return Some(FileOutcome::Quarantine { reason: reason.to_owned() });
    }
    if first_reject.is_none() {
        *first_reject = part.rejected.first().map(|r| (r.line, r.reason.clone()));
    }
    if max_rejects > 0 && file_rejects > max_rejects {
        let (line, why) = first_reject.clone().unwrap_or_default();
        let reason = format!(
            "more than {max_rejects} rows break the contract (MAX_REJECTS_PER_FILE); the first, line {line}: {why}"
        );
        return Some(FileOutcome::Quarantine { reason });
    }
    None
}

/// The file of `source` opened, checked to be the one registered, and
/// decoded: its reader, a second descriptor to look at it once read, and
/// its identity; or the summary of a file that cannot be read.
#[allow(clippy::type_complexity)]
fn open_reader(
    source: &SourceFile,
    index: usize,
) -> Result<(ContractReader<Box<dyn Read + Send>>, std::io::Result<std::fs::File>, FileId), FileSummary> {
    let opened = open_source(source).map_err(|(id, outcome)| FileSummary { id, outcome })?;
    if (opened.id.size, opened.id.mtime_ns) != (source.id.size, source.id.mtime_ns) {
        let reason = format!(
            "not the file that was registered: {} bytes modified at {} ns then, {} bytes at {} ns now",
            source.id.size, source.id.mtime_ns, opened.id.size, opened.id.mtime_ns
        );
        return Err(FileSummary { id: source.id.clone(), outcome: FileOutcome::Changed { reason } });
    }
    let probe = opened.file.try_clone();
    let quarantine = |id: FileId, reason: String| FileSummary { id, outcome: FileOutcome::Quarantine { reason } };
    let reader = match decode::decoded(opened.file, 256 * 1024) {
        Ok((_, reader)) => reader,
        Err(e) => return Err(quarantine(opened.id, format!("unreadable: {e}"))),
    };
    match ContractReader::open(reader, index as u32) {
        Ok(reader) => Ok((reader, probe, opened.id)),
        Err(reason) => Err(quarantine(opened.id, reason)),
    }
}

/// Read to its end: is it still the file that was planned? `None` when it
/// is, else what became of it.
fn changed_while_read(probe: std::io::Result<std::fs::File>, source: &SourceFile) -> Option<FileOutcome> {
    match probe.and_then(|f| f.metadata()).map(|m| crate::watch::file_id(&source.id.name, &m)) {
        Ok(now) if (now.size, now.mtime_ns) == (source.id.size, source.id.mtime_ns) => None,
        Ok(now) => Some(FileOutcome::Changed {
            reason: format!(
                "written to while it was read: {} bytes when planned, {} bytes once read",
                source.id.size, now.size
            ),
        }),
        Err(e) => Some(FileOutcome::Quarantine { reason: format!("unreadable once read: {e}") }),
    }
}

fn finish(mut out: BatchRead, started: Instant) -> PolarsResult<Option<BatchRead>> {
    out.read = started.elapsed().saturating_sub(out.dedup + out.handoff);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const H: &str =
        "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time\n";

    fn write_files(dir: &Path, contents: &[String]) -> Vec<SourceFile> {
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = format!("f{i}.csv");
                let path = dir.join(&name);
                std::fs::write(&path, c).expect("write");
                let meta = std::fs::metadata(&path).expect("stat");
                SourceFile { id: crate::watch::file_id(&name, &meta), path }
            })
            .collect()
    }

    #[test]
    fn a_batch_is_read_in_chunks_each_unique_and_every_file_counted() -> PolarsResult<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let row = |u: i32, s: i32, p: &str| format!("{u},A,a,view,1,P,C,{p},2026-01-01T00:00:{s:02}Z\n");
        let a: String = (0..50).map(|i| row(i % 5 + 1, i / 5, "1.00")).collect(); // 50 unique keys
        let b: String = (0..50).map(|i| row(i % 5 + 1, i / 5, "2.00")).chain([row(1, 0, "3.00")]).collect();
        let sources = write_files(dir.path(), &[format!("{H}{a}"), format!("{H}{b}"), "nonsense".into()]);
        let mut chunks = Vec::new();
        let forced = vec![None; sources.len()];
        let plan = ReadPlan {
            sources: &sources,
            forced: &forced,
            chunk_bytes: 1_000,
            max_rejects: 0,
            window_micros: 60_000_000,
        };
        let read = read_batch(plan, |c| {
            chunks.push(c);
            true
        })?
        .expect("not stopped");
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        assert_eq!(read.chunks as usize, chunks.len());
        for c in &chunks {
            let keys = c.frame.select(["user_id", "event_time"])?;
            assert_eq!(keys.is_unique()?.sum(), Some(c.frame.height() as u32), "a chunk holds unique keys");
        }
        let total: usize = chunks.iter().map(|c| c.frame.height()).sum();
        let dups: u64 = read
            .files
            .iter()
            .map(|f| match f.outcome {
                FileOutcome::Rows { duplicates, .. } => duplicates,
                _ => 0,
            })
            .sum();
        assert_eq!(total as u64 + dups, 101, "every row is kept in a chunk or counted as a duplicate");
        assert!(matches!(read.files[0].outcome, FileOutcome::Rows { rows_read: 50, rejected: 0, .. }));
        assert!(matches!(read.files[1].outcome, FileOutcome::Rows { rows_read: 51, rejected: 0, .. }));
        assert!(
            matches!(&read.files[2].outcome, FileOutcome::Quarantine { reason } if reason.contains("wrong header"))
        );

        // The receiver going away stops the reader.
        assert!(read_batch(plan, |_| false)?.is_none());
        Ok(())
    }

    #[test]
    fn a_compressed_file_is_chunked_by_its_decompressed_bytes() -> PolarsResult<()> {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        // 20 000 rows (about 1 MB) that compress to a few kilobytes.
        let rows: String =
            (0..20_000).map(|i| format!("{},A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n", i + 1)).collect();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(format!("{H}{rows}").as_bytes()).expect("gzip");
        let gz = e.finish().expect("gzip");
        assert!(gz.len() < 100_000, "{} bytes compressed", gz.len());
        let path = dir.path().join("big.csv.gz");
        std::fs::write(&path, &gz).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        let sources = [SourceFile { id: crate::watch::file_id("big.csv.gz", &meta), path }];
        let forced = vec![None];
        let plan = ReadPlan {
            sources: &sources,
            forced: &forced,
            chunk_bytes: 100_000,
            max_rejects: 0,
            window_micros: 60_000_000,
        };
        let mut heights = Vec::new();
        let read = read_batch(plan, |c| {
            heights.push(c.frame.height());
            true
        })?
        .expect("not stopped");
        assert!(heights.len() >= 10, "about 1 MB in chunks of 100 kB: {heights:?}");
        assert!(heights.iter().all(|h| *h < 3_000), "{heights:?}");
        assert!(matches!(read.files[0].outcome, FileOutcome::Rows { rows_read: 20_000, rejected: 0, .. }));
        Ok(())
    }

    #[test]
    fn a_file_with_too_many_rejects_stops_the_read_and_is_to_be_quarantined() -> PolarsResult<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = format!("{H}1,A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n");
        let bad = format!("{H}{}", "x\n".repeat(50));
        let sources = write_files(dir.path(), &[good, bad]);
        let forced = vec![None, None];
        let plan = ReadPlan {
            sources: &sources,
            forced: &forced,
            chunk_bytes: 1 << 20,
            max_rejects: 10,
            window_micros: 60_000_000,
        };
        let read = read_batch(plan, |_| true)?.expect("not stopped");
        match &read.excluded {
            Some((1, FileOutcome::Quarantine { reason })) => {
                assert!(reason.starts_with("more than 10 rows break the contract"), "{reason}");
                assert!(reason.contains("line 2: expected 9 fields, found 1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Forced, the file is settled unread.
        let forced = vec![None, read.excluded.map(|(_, o)| o)];
        let read = read_batch(ReadPlan { forced: &forced, ..plan }, |_| true)?.expect("not stopped");
        assert!(read.excluded.is_none());
        assert!(matches!(read.files[0].outcome, FileOutcome::Rows { rows_read: 1, .. }));
        assert!(matches!(&read.files[1].outcome, FileOutcome::Quarantine { .. }));
        Ok(())
    }

    /// A writer appends while the batch reads the file (here, between two
    /// chunks): its identity once read differs from the one planned, so its
    /// staged rows must not commit — a cut last record could have parsed
    /// as a valid row with the wrong key.
    #[test]
    fn a_file_written_to_while_it_is_read_is_excluded() -> PolarsResult<()> {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let rows: String = (1..=200).map(|i| format!("{i},A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n")).collect();
        let sources = write_files(dir.path(), &[format!("{H}{rows}")]);
        let path = sources[0].path.clone();
        let forced = vec![None];
        let plan = ReadPlan {
            sources: &sources,
            forced: &forced,
            chunk_bytes: 1_000,
            max_rejects: 0,
            window_micros: 60_000_000,
        };
        let mut appended = false;
        let read = read_batch(plan, |_| {
            if !appended {
                let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
                f.write_all(b"201,A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n").expect("append");
                appended = true;
            }
            true
        })?
        .expect("not stopped");
        assert!(
            matches!(&read.excluded, Some((0, FileOutcome::Changed { reason })) if reason.contains("written to while it was read")),
            "{:?}",
            read.excluded
        );
        Ok(())
    }

    #[test]
    fn a_file_other_than_the_one_registered_is_changed_and_never_read() -> PolarsResult<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sources = write_files(dir.path(), &[format!("{H}1,A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n")]);
        sources[0].id.size += 1;
        let forced = vec![None];
        let plan = ReadPlan {
            sources: &sources,
            forced: &forced,
            chunk_bytes: 1 << 20,
            max_rejects: 0,
            window_micros: 60_000_000,
        };
        let mut chunks = 0;
        let read = read_batch(plan, |_| {
            chunks += 1;
            true
        })?
        .expect("not stopped");
        assert!(
            matches!(&read.files[0].outcome, FileOutcome::Changed { reason } if reason.contains("not the file that was registered"))
        );
        assert_eq!(chunks, 0);
        Ok(())
    }

    #[test]
    fn dedup_keeps_the_last_row_in_file_then_line_order() -> PolarsResult<()> {
        let a = format!("{H}1,A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n1,A,a,view,2,P,C,2.00,2026-01-01T00:00:00Z\n2,B,b,view,1,P,C,1.00,2026-01-01T00:00:00Z\n");
        let b = format!("{H}1,A,a,purchase,3,P,C,3.00,2026-01-01T00:00:00Z\n");
        let fa = read_whole(a.as_bytes(), 0).map_err(|e| PolarsError::ComputeError(e.into()))?.frame;
        let fb = read_whole(b.as_bytes(), 1).map_err(|e| PolarsError::ComputeError(e.into()))?.frame;
        let d = dedup(vec![fa, fb], 2)?;
        assert_eq!(d.duplicates, vec![2, 0]);
        let view = EventView::new(&d.frame)?;
        let got: Vec<(i32, i32, i64)> = (0..view.len())
            .filter_map(|i| view.row(i))
            .map(|(_, _, r)| (r.user_id, r.product_id, r.price_cents))
            .collect();
        assert_eq!(got, vec![(1, 3, 300), (2, 1, 100)], "sorted by key");
        Ok(())
    }

    /// A row the dedup keeps: its key (user, second) and its place (file, line).
    type Kept = (i32, i64, u32, u64);

    /// What the dedup must equal: for each key the last row in (file, line)
    /// order, by key; and per file the rows that lost to a later one.
    fn dedup_oracle(files: &[Vec<(i32, i64)>]) -> (Vec<Kept>, Vec<u64>) {
        let mut last = std::collections::BTreeMap::new();
        for (f, rows) in files.iter().enumerate() {
            for (line, key) in rows.iter().enumerate() {
                last.insert(*key, (f as u32, line as u64));
            }
        }
        let mut kept = vec![0u64; files.len()];
        let rows: Vec<_> = last
            .into_iter()
            .map(|((u, t), (f, line))| {
                kept[f as usize] += 1;
                (u, t, f, line)
            })
            .collect();
        let lost = files.iter().zip(&kept).map(|(rows, k)| rows.len() as u64 - k).collect();
        (rows, lost)
    }

    proptest::proptest! {
        /// Any files, keys repeated within and across them, in any number
        /// of parts: the dedup keeps exactly the oracle's rows, in key order.
        #[test]
        fn dedup_equals_the_last_row_wins_oracle(
            files in proptest::collection::vec(
                proptest::collection::vec((1i32..6, 0i64..6), 0..60), 1..5),
            split in 1usize..4,
        ) {
            let frames: Vec<DataFrame> = files
                .iter()
                .enumerate()
                .flat_map(|(f, rows)| {
                    // A file's rows come in one or more parts, as the reader makes them.
                    let per = rows.len().div_ceil(split).max(1);
                    rows.chunks(per)
                        .enumerate()
                        .map(|(p, part)| {
                            let mut columns = frame::Columns::new();
                            for (k, &(user_id, t)) in part.iter().enumerate() {
                                let event = contract::Event {
                                    user_id,
                                    user_name: "u",
                                    user_email: "e",
                                    event_type: contract::EventType::View,
                                    product_id: 1,
                                    product_name: "p",
                                    product_category: "c",
                                    price_cents: 1,
                                    event_time_micros: t * 1_000_000,
                                };
                                columns.push(f as u32, (p * per + k) as u64, &event, None);
                            }
                            columns.finish()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let d = dedup(frames, files.len()).expect("dedup");
            let view = EventView::new(&d.frame).expect("view");
            let got: Vec<Kept> = (0..view.len())
                .filter_map(|i| view.row(i))
                .map(|(f, line, r)| (r.user_id, r.event_time_micros / 1_000_000, f, line))
                .collect();
            let (want, lost) = dedup_oracle(&files);
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(d.duplicates, lost);
        }
    }
}
