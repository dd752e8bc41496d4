//! Reading a batch: its files in order, each checked against the event
//! contract row by row ([`file`]), gathered into Polars frames of the
//! contract's explicit schema and deduplicated on `(user_id, event_time)`,
//! the last row winning in (file order, line order) ([`frame`]). A batch is
//! handed on in [`Chunk`]s of about `chunk_bytes` of input each, so memory is
//! bounded by the chunk size, not by the batch or the file. No tokio and no
//! SQL here.

pub mod file;
pub mod frame;

use std::time::{Duration, Instant};

use polars::prelude::*;

pub use file::{open_source, read_whole, ContractReader, Part, Rejected, SourceFile, MAX_RAW_LINE};
pub use frame::{dedup, empty_frame, schema, EventView, FILE_COLUMN, LINE_COLUMN};

use crate::checkpoint::FileId;

/// How one file of a batch was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Read to its end; `duplicates` counts its rows that lost to a later
    /// row of the same chunk (later chunks are compared in SQL).
    Rows {
        rows_read: u64,
        rejected: u64,
        duplicates: u64,
    },
    Quarantine {
        reason: String,
    },
    Missing,
}

/// One file of a batch as read: its identity taken again as it was opened.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub id: FileId,
    pub outcome: FileOutcome,
}

/// A part of a batch: rows of one or more files, deduplicated within
/// itself, and the rejected rows read with them.
#[derive(Debug)]
pub struct Chunk {
    pub frame: DataFrame,
    pub rejected: Vec<Rejected>,
}

/// What reading a whole batch gave, once every chunk was handed on.
#[derive(Debug)]
pub struct BatchRead {
    pub files: Vec<FileSummary>,
    /// Chunks handed on that held rows.
    pub chunks: u32,
    pub read: Duration,
    pub dedup: Duration,
}

/// Reads the files of a batch in order and hands on chunks of at most about
/// `chunk_bytes` of input each, deduplicated within themselves (last row in
/// file then line order wins). `emit` returns false when the receiver is
/// gone; reading then stops and `None` is returned.
pub fn read_batch(
    sources: &[SourceFile],
    chunk_bytes: u64,
    mut emit: impl FnMut(Chunk) -> bool,
) -> PolarsResult<Option<BatchRead>> {
    let n = sources.len();
    let mut out = BatchRead { files: Vec::with_capacity(n), chunks: 0, read: Duration::ZERO, dedup: Duration::ZERO };
    let mut frames: Vec<DataFrame> = Vec::new();
    let mut rejected: Vec<Rejected> = Vec::new();
    let mut pending_bytes = 0u64;
    let started = Instant::now();

    // Deduplicates and hands on what has been gathered.
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
        PolarsResult::Ok(emit(Chunk { frame: deduped.frame, rejected: std::mem::take(rejected) }))
    };

    for (index, source) in sources.iter().enumerate() {
        let (id, file) = match open_source(source) {
            Ok(opened) => opened,
            Err((id, outcome)) => {
                out.files.push(FileSummary { id, outcome });
                continue;
            }
        };
        let mut reader = match ContractReader::open(std::io::BufReader::with_capacity(256 * 1024, file), index as u32) {
            Ok(reader) => reader,
            Err(reason) => {
                out.files.push(FileSummary { id, outcome: FileOutcome::Quarantine { reason } });
                continue;
            }
        };
        out.files.push(FileSummary { id, outcome: FileOutcome::Rows { rows_read: 0, rejected: 0, duplicates: 0 } });
        while let Some(part) = reader.next_part(chunk_bytes.saturating_sub(pending_bytes)) {
            if let Some(FileSummary { outcome: FileOutcome::Rows { rows_read, rejected: bad, .. }, .. }) =
                out.files.last_mut()
            {
                *rows_read += part.rows_read;
                *bad += part.rejected.len() as u64;
            }
            pending_bytes += part.bytes;
            frames.push(part.frame);
            rejected.extend(part.rejected);
            if pending_bytes >= chunk_bytes {
                if !flush(&mut frames, &mut rejected, &mut out)? {
                    return Ok(None);
                }
                pending_bytes = 0;
            }
        }
    }
    if (!frames.is_empty() || !rejected.is_empty()) && !flush(&mut frames, &mut rejected, &mut out)? {
        return Ok(None);
    }
    out.read = started.elapsed().saturating_sub(out.dedup);
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
        let read = read_batch(&sources, 1_000, |c| {
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
        assert!(read_batch(&sources, 1_000, |_| false)?.is_none());
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
            .map(|(_, r)| (r.user_id, r.product_id, r.price_cents))
            .collect();
        assert_eq!(got, vec![(2, 1, 100), (1, 3, 300)]);
        Ok(())
    }
}
