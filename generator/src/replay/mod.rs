//! `generator replay`: publishes a historical event CSV into the data folder
//! as it happened, `speed` data-seconds per real second, one file per slice
//! of data time.
//!
//! - [`dataset`]: the mapping of input rows (our contract, or the public
//!   multi-category store dataset) into contract rows;
//! - [`reader`]: the CSV record reader the replay reads its input with;
//! - this module: slicing by data time, pacing and publishing.
//!
//! Memory is bounded: the input is streamed, and at most a few slices are
//! held (a reader thread maps rows; the async side paces and publishes).

pub mod dataset;
pub mod reader;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use contract::{COLUMNS, HEADER};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use dataset::{InputFormat, Mapped, Mapper, DATASET_COLUMNS};
use reader::Records;

/// Data-seconds per real second, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    Factor(f64),
    Max,
}

impl std::str::FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Speed, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(format!("{s:?} is neither a number > 0 nor `max`")),
        }
    }
}

/// What a replay does.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub input: PathBuf,
    pub data_dir: PathBuf,
    pub format: InputFormat,
    pub speed: Speed,
    /// Data time per file.
    pub slice: Duration,
    /// Rebase data time so that the first event lands at this instant.
    pub shift_to: Option<DateTime<Utc>>,
    /// A progress bar on stderr instead of a log line per file.
    pub progress_bar: bool,
}

/// What a replay read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub lines: u64,
    pub files: u64,
    pub events: u64,
    /// Rows identical to an earlier row of the same user and second, kept as
    /// duplicates for the streamer to drop.
    pub identical: u64,
    /// `cart` and `remove_from_cart` rows, skipped.
    pub skipped_cart: u64,
    /// Lines that could not be read, skipped (each logged with its number).
    pub malformed: u64,
    /// Dataset rows older than a row before them, skipped.
    pub out_of_order: u64,
    pub first_event: Option<DateTime<Utc>>,
    pub last_event: Option<DateTime<Utc>>,
}

/// Where a published file lies in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub name: String,
    pub events: u64,
    /// Slice index from the first event's slice.
    pub slice: u64,
    /// Time since the replay started when the file was published.
    pub at: Duration,
}

/// One slice, ready to publish.
#[derive(Debug)]
struct Slice {
    index: u64,
    start_micros: i64,
    contents: Vec<u8>,
    events: u64,
}

/// The name of the file of the slice that starts at `start_micros`.
fn slice_name(start_micros: i64, index: u64) -> String {
    let t = DateTime::from_timestamp_micros(start_micros).unwrap_or_default();
    format!("replay_{}_{index:06}.csv", t.format("%Y%m%dT%H%M%S"))
}

/// Lines logged one by one before the log only counts them.
const LOGGED_MALFORMED: u64 = 100;

/// Opens the replay input and reads its header: the records, the record
/// buffer, and the input's format (chosen, or detected from the header).
fn open_input(settings: &ReplaySettings) -> anyhow::Result<(Records<DropBehind>, csv::ByteRecord, InputFormat)> {
    let file = std::fs::File::open(&settings.input)
        .with_context(|| format!("cannot open the replay input {}", settings.input.display()))?;
    let mut records = Records::new(DropBehind { file, read: 0, dropped: 0 });
    let mut record = csv::ByteRecord::new();
    if records.read(&mut record).context("cannot read the replay input's header")?.is_none() {
        anyhow::bail!("the replay input {} is empty", settings.input.display());
    }
    let detected = Mapper::detect(&record);
    let format = match (settings.format, detected) {
        (InputFormat::Auto, Some(f)) => f,
        (InputFormat::Auto, None) => anyhow::bail!(
            "the replay input's header is neither the contract's ({}) nor the dataset's ({}); choose one with --format",
            COLUMNS.join(","),
            DATASET_COLUMNS.join(",")
        ),
        (chosen, _) => chosen,
    };
    Ok((records, record, format))
}

/// Counts a mapped line in `summary`: the event time of a row, `None` for a
/// line skipped (a cart event, out of order, malformed; the first few of
/// the last two logged).
fn counted(summary: &mut ReplaySummary, outcome: Mapped, line: u64) -> Option<i64> {
    match outcome {
        Mapped::Row { micros, identical } => {
            summary.identical += u64::from(identical);
            Some(micros)
        }
        Mapped::Cart => {
            summary.skipped_cart += 1;
            None
        }
        Mapped::OutOfOrder => {
            summary.out_of_order += 1;
            if summary.out_of_order <= LOGGED_MALFORMED {
                warn!(line, "row older than the rows before it; skipped (the dataset replays in time order)");
            }
            None
        }
        Mapped::Malformed(reason) => {
            summary.malformed += 1;
            if summary.malformed <= LOGGED_MALFORMED {
                warn!(line, reason, "malformed input line skipped");
            }
            None
        }
    }
}

/// Reads and maps the input, handing on each non-empty slice; runs on a
/// blocking thread. `spare` gives back the buffers of published slices for
/// reuse; `progress` is told the bytes read so far.
fn read_slices(
    settings: &ReplaySettings,
    mut emit: impl FnMut(Slice) -> bool,
    mut spare: impl FnMut() -> Option<Vec<u8>>,
    progress: impl Fn(u64, &ReplaySummary),
) -> anyhow::Result<ReplaySummary> {
    let (mut records, mut record, format) = open_input(settings)?;
    info!(input = %settings.input.display(), ?format, "replay started");
    let mut mapper = Mapper::new(format, settings.shift_to);
    let slice_micros = (settings.slice.as_micros() as i64).max(1);
    let mut summary = ReplaySummary::default();
    // Rows are mapped straight into the open slice's buffer; a row that
    // opens the next slice moves over with it.
    let new_buffer = |spare: Option<Vec<u8>>, size: usize| {
        let mut contents = spare.unwrap_or_else(|| Vec::with_capacity(size));
        contents.clear();
        contents.extend_from_slice(HEADER.as_bytes());
        contents.push(b'\n');
        contents
    };
    let mut contents = new_buffer(None, 64 * 1024);
    // The open slice: its index and events.
    let mut open: Option<(u64, u64)> = None;
    let (mut origin, mut first, mut last) = (None::<i64>, None::<i64>, None::<i64>);
    let note_times = |summary: &mut ReplaySummary, first: Option<i64>, last: Option<i64>| {
        summary.first_event = first.and_then(DateTime::from_timestamp_micros);
        summary.last_event = last.and_then(DateTime::from_timestamp_micros);
    };
    loop {
        let line = match records.read(&mut record) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            // Only I/O fails here: stop, keeping what was published.
            Err(e) => anyhow::bail!("cannot read the replay input at line {}: {e}", records.line()),
        };
        summary.lines += 1;
        let before = contents.len();
        let Some(micros) = counted(&mut summary, mapper.map(&record, &mut contents), line) else { continue };
        first = first.or(Some(micros));
        last = last.max(Some(micros));
        let origin = *origin.get_or_insert(micros);
        // A row earlier than the open slice (contract input is only roughly
        // ordered) joins the open slice.
        let index = ((micros - origin).max(0) / slice_micros) as u64;
        match open {
            Some((open_index, events)) if index > open_index => {
                // Sized like the last slice: no regrowing on the way.
                let mut next = new_buffer(spare(), contents.len() + contents.len() / 8);
                next.extend_from_slice(&contents[before..]);
                contents.truncate(before);
                let done = Slice {
                    index: open_index,
                    start_micros: origin + open_index as i64 * slice_micros,
                    contents: std::mem::replace(&mut contents, next),
                    events,
                };
                note_times(&mut summary, first, last);
                if !emit(done) {
                    return Ok(summary);
                }
                progress(records.bytes_read(), &summary);
                open = Some((index, 1));
            }
            Some((open_index, events)) => open = Some((open_index, events + 1)),
            None => open = Some((index, 1)),
        }
        summary.events += 1;
    }
    note_times(&mut summary, first, last);
    if let (Some((index, events)), Some(origin)) = (open, origin) {
        emit(Slice { index, start_micros: origin + index as i64 * slice_micros, contents, events });
    }
    progress(records.bytes_read(), &summary);
    if summary.malformed > LOGGED_MALFORMED {
        warn!(malformed = summary.malformed, "more malformed lines than were logged");
    }
    Ok(summary)
}

/// Reads a file and, every [`DROP_BEHIND`] bytes, tells the kernel that what
/// was read will not be read again: a replay of a 5 GB file does not push
/// PostgreSQL's pages (or the files it publishes) out of the page cache, and
/// the pages it frees are reused for the files it writes.
#[derive(Debug)]
struct DropBehind {
    file: std::fs::File,
    read: u64,
    dropped: u64,
}

const DROP_BEHIND: u64 = 32 << 20;

impl std::io::Read for DropBehind {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if self.read - self.dropped >= DROP_BEHIND {
            // Advice only: an error changes nothing about what was read.
            let _ = rustix::fs::fadvise(
                &self.file,
                self.dropped,
                std::num::NonZeroU64::new(self.read - self.dropped),
                rustix::fs::Advice::DontNeed,
            );
            self.dropped = self.read;
        }
        Ok(n)
    }
}

/// Replays `settings.input` into the data folder until its end or
/// `shutdown`; `on_file` sees each file as it is published.
pub async fn replay(
    settings: ReplaySettings,
    shutdown: CancellationToken,
    mut on_file: impl FnMut(&Published),
) -> anyhow::Result<ReplaySummary> {
    crate::prepare_data_dir(&settings.data_dir)?;
    let total = std::fs::metadata(&settings.input)
        .with_context(|| format!("cannot open the replay input {}", settings.input.display()))?
        .len();
    let bar = settings.progress_bar.then(|| progress_bar(total));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Slice>(2);
    // Published slices' buffers go back to the reader: no fresh pages to
    // fault in for every file.
    let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let done_rx = spawn_reader(&settings, bar.clone(), tx, spare_rx)?;

    let started = Instant::now();
    let mut files = 0u64;
    while let Some(slice) = tokio::select! {
        s = rx.recv() => s,
        _ = shutdown.cancelled() => None,
    } {
        if let Speed::Factor(speed) = settings.speed {
            // Slice k is published once its data time has passed: (k + 1)
            // slices of data time, divided by the speed.
            let due = started + settings.slice.mul_f64((slice.index + 1) as f64 / speed);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let name = slice_name(slice.start_micros, slice.index);
        let dir = settings.data_dir.clone();
        let contents = slice.contents;
        let n = name.clone();
        let (published, contents) =
            tokio::task::spawn_blocking(move || (runtime::publish::publish(&dir, &n, &contents), contents))
                .await
                .context("the file writer panicked")?;
        published.with_context(|| format!("publishing {name} into {}", settings.data_dir.display()))?;
        // The reader may have finished; then the buffer is simply dropped.
        let _ = spare_tx.send(contents);
        files += 1;
        let p = Published { name, events: slice.events, slice: slice.index, at: started.elapsed() };
        if bar.is_none() {
            info!(file = %p.name, events = p.events, slice = p.slice, "file published");
        }
        on_file(&p);
    }
    drop(rx);
    let mut summary = done_rx.await.context("the replay reader panicked")??;
    summary.files = files;
    if let Some(bar) = bar {
        bar.finish();
    }
    info!(
        files = summary.files,
        events = summary.events,
        identical = summary.identical,
        skipped_cart = summary.skipped_cart,
        malformed = summary.malformed,
        out_of_order = summary.out_of_order,
        "replay finished"
    );
    Ok(summary)
}

/// Starts the thread that reads the input into slices, sends them on `tx`
/// and takes the published slices' buffers back from `spare`; its summary
/// arrives on the returned channel. A plain thread, not spawn_blocking: a
/// blocked blocking task would stop tokio's paused clock from advancing in
/// tests.
fn spawn_reader(
    settings: &ReplaySettings,
    bar: Option<indicatif::ProgressBar>,
    tx: tokio::sync::mpsc::Sender<Slice>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<ReplaySummary>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("replay-reader".into())
        .spawn(move || {
            let summary = read_slices(
                &settings,
                move |s| tx.blocking_send(s).is_ok(),
                move || spare.try_recv().ok(),
                move |bytes, s| {
                    if let Some(bar) = &bar {
                        bar.set_position(bytes);
                        let reached =
                            s.last_event.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
                        bar.set_message(format!(
                            "data time {reached} · {} events · {} skipped",
                            s.events,
                            s.skipped_cart + s.malformed + s.out_of_order
                        ));
                    }
                },
            );
            let _ = done_tx.send(summary);
        })
        .context("cannot start the replay reader")?;
    Ok(done_rx)
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Replays `input` as fast as possible into `dir` (tests and benchmarks).
pub async fn replay_max(input: &Path, dir: &Path, slice: Duration) -> anyhow::Result<ReplaySummary> {
    let settings = ReplaySettings {
        input: input.to_owned(),
        data_dir: dir.to_owned(),
        format: InputFormat::Auto,
        speed: Speed::Max,
        slice,
        shift_to: None,
        progress_bar: false,
    };
    replay(settings, CancellationToken::new(), |_| {}).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATASET_HEADER: &str =
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n";

    /// Many short slices: each file holds exactly the rows of its slice, in
    /// input order (the row that opens a slice moves with it, and a reused
    /// buffer carries nothing over).
    #[tokio::test]
    async fn every_slice_holds_exactly_its_rows() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lines: Vec<String> = (0..600u32)
            .map(|i| {
                let s = i / 2 + i / 50 * 7;
                let kind = if i % 11 == 0 { "cart" } else { "view" };
                format!("2019-10-01 00:{:02}:{:02} UTC,{kind},{},2,a.b,c,1.00,{},x", s / 60, s % 60, i + 1, i % 7 + 1)
            })
            .collect();
        let input = write_input(dir.path(), &(lines.join("\n") + "\n"));
        let data = dir.path().join("data");
        let summary = replay_max(&input, &data, Duration::from_secs(3)).await?;

        let (outcomes, rows) =
            dataset::tests::map_lines(InputFormat::Dataset, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let first = 1_569_888_000_000_000;
        let mut expected: Vec<(u64, String)> = Vec::new();
        for (outcome, row) in outcomes.iter().filter(|o| matches!(o, Mapped::Row { .. })).zip(rows.lines()) {
            if let Mapped::Row { micros, .. } = outcome {
                let index = ((micros - first) / 3_000_000) as u64;
                match expected.last_mut() {
                    Some((i, text)) if *i == index => text.push_str(&format!("{row}\n")),
                    _ => expected.push((index, format!("{HEADER}\n{row}\n"))),
                }
            }
        }
        let mut files: Vec<_> = std::fs::read_dir(&data)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        files.sort();
        let got: Vec<(u64, String)> = files
            .iter()
            .map(|f| {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let index = name.trim_end_matches(".csv").rsplit('_').next().and_then(|i| i.parse().ok());
                Ok((index.unwrap_or(u64::MAX), std::fs::read_to_string(f)?))
            })
            .collect::<std::io::Result<_>>()?;
        assert!(expected.len() > 50, "{} slices", expected.len());
        assert_eq!(got, expected);
        assert_eq!(summary.files, expected.len() as u64);
        Ok(())
    }

    #[test]
    fn dropping_read_pages_behind_changes_nothing_read() -> anyhow::Result<()> {
        use std::io::Read as _;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big");
        let bytes: Vec<u8> = (0..(DROP_BEHIND * 5 / 2) as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes)?;
        let mut reader = DropBehind { file: std::fs::File::open(&path)?, read: 0, dropped: 0 };
        let mut read = Vec::new();
        reader.read_to_end(&mut read)?;
        assert!(read == bytes, "the bytes read differ from the file");
        assert!(reader.dropped >= 2 * DROP_BEHIND && reader.dropped <= reader.read, "dropped {}", reader.dropped);
        Ok(())
    }

    fn write_input(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("input.csv");
        std::fs::write(&path, format!("{DATASET_HEADER}{body}")).expect("write input");
        path
    }

    /// The speed factor, under tokio's paused clock: slice k (of 10 data
    /// seconds at speed 5, so 2 real seconds) is published at 2 × (k + 1) s;
    /// an empty slice publishes nothing but keeps the schedule.
    #[tokio::test(start_paused = true)]
    async fn files_are_published_on_the_speed_factors_schedule() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let body: String = [0, 3, 9, 10, 19, 35, 41]
            .iter()
            .map(|s| format!("2019-10-01 00:00:{s:02} UTC,view,1,2,,,1.00,{},x\n", s + 1))
            .collect();
        let input = write_input(dir.path(), &body);
        let settings = ReplaySettings {
            input,
            data_dir: dir.path().join("data"),
            format: InputFormat::Auto,
            speed: Speed::Factor(5.0),
            slice: Duration::from_secs(10),
            shift_to: None,
            progress_bar: false,
        };
        let mut published = Vec::new();
        let summary = replay(settings, CancellationToken::new(), |p| published.push(p.clone())).await?;
        let got: Vec<(u64, u64, Duration)> = published.iter().map(|p| (p.slice, p.events, p.at)).collect();
        let s = Duration::from_secs;
        assert_eq!(got, vec![(0, 3, s(2)), (1, 2, s(4)), (3, 1, s(8)), (4, 1, s(10))]);
        assert_eq!(published[0].name, "replay_20191001T000000_000000.csv");
        assert_eq!(published[2].name, "replay_20191001T000030_000003.csv");
        assert_eq!((summary.files, summary.events), (4, 7));
        Ok(())
    }
}
