//! `generator replay`: publishes a historical event CSV into the data folder
//! as it happened, `speed` data-seconds per real second, one file per slice
//! of data time.
//!
//! Two input formats (detected from the header, or chosen):
//! - **contract**: our own files (replaying an earlier run); rows are written
//!   as they are (with `--shift-to-now`, only `event_time` changes);
//! - **dataset**: the public "eCommerce behavior data from multi-category
//!   store" format, `event_time,event_type,product_id,category_id,
//!   category_code,brand,price,user_id,user_session`, mapped as
//!   [`map_dataset`] documents.
//!
//! The dataset's times have one-second resolution; one user often has several
//! events in one second, which deduplication on `(user_id, event_time)`
//! would drop. Each distinct row of a user in a second gets its rank in that
//! second (0, 1, 2, … in input order) added in microseconds; a row identical
//! in every column to an earlier one of the same user and second gets the
//! same rank, so it stays a duplicate for the streamer to drop.
//!
//! Memory is bounded: the input is streamed, and at most a few slices are
//! held (a reader thread maps rows; the async side paces and publishes).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::contract::{push_field, COLUMNS, MAX_CATEGORY_CHARS, MAX_TEXT_CHARS};
use crate::record::{user_profile, IdMap};
use crate::writer;

/// The dataset's columns, in order.
pub const DATASET_COLUMNS: [&str; 9] = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
];

/// The format of a replay's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Detect it from the header.
    Auto,
    /// This project's event contract.
    Contract,
    /// The public multi-category store dataset.
    Dataset,
}

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

/// How one input row ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A contract row (CSV line, with its newline) at this data time.
    Row {
        micros: i64,
        identical: bool,
    },
    Cart,
    OutOfOrder,
    Malformed(String),
}

/// Turns input records into contract rows.
#[derive(Debug)]
pub struct Mapper {
    format: InputFormat,
    /// The second of the newest dataset row, and the distinct rows seen in
    /// it: per user the newest entry, each entry linking to the user's
    /// previous one, the rows' fields (length-prefixed) kept in `arena`.
    second: i64,
    latest: IdMap<usize>,
    entries: Vec<(usize, usize, usize)>,
    arena: Vec<u8>,
    encoded: Vec<u8>,
    /// The text of the last `event_time` and its second.
    last_time: (Vec<u8>, i64),
    /// Per user `name\nemail`, as [`user_profile`] makes them.
    profiles: IdMap<Box<str>>,
    shift_micros: Option<i64>,
    shift_to: Option<i64>,
    text: String,
    time_text: (i64, String),
}

/// Users whose profile is kept (about 35 MB); the cache is emptied when full.
const PROFILE_CACHE: usize = 300_000;

impl Mapper {
    pub fn new(format: InputFormat, shift_to: Option<DateTime<Utc>>) -> Mapper {
        Mapper {
            format,
            second: i64::MIN,
            latest: IdMap::default(),
            entries: Vec::new(),
            arena: Vec::new(),
            encoded: Vec::new(),
            last_time: (Vec::new(), i64::MIN),
            profiles: IdMap::default(),
            shift_micros: None,
            shift_to: shift_to.map(|t| t.timestamp_micros()),
            text: String::new(),
            time_text: (i64::MIN, String::new()),
        }
    }

    /// Detects the format of a header record.
    pub fn detect(header: &csv::ByteRecord) -> Option<InputFormat> {
        let fields: Vec<&[u8]> = header.iter().map(|f| f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f)).collect();
        if fields.iter().copied().eq(COLUMNS.iter().map(|c| c.as_bytes())) {
            Some(InputFormat::Contract)
        } else if fields.iter().copied().eq(DATASET_COLUMNS.iter().map(|c| c.as_bytes())) {
            Some(InputFormat::Dataset)
        } else {
            None
        }
    }

    /// Maps one record, appending its contract row to `out`.
    pub fn map(&mut self, record: &csv::ByteRecord, out: &mut Vec<u8>) -> Mapped {
        match self.format {
            InputFormat::Dataset => self.map_dataset(record, out),
            _ => self.map_contract(record, out),
        }
    }

    /// Writes an instant as RFC 3339 UTC with microseconds; the text of the
    /// second is formatted once per second.
    fn push_time(&mut self, out: &mut Vec<u8>, micros: i64) {
        let (second, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
        if self.time_text.0 != second {
            let t = DateTime::from_timestamp(second, 0).unwrap_or_default();
            self.time_text = (second, t.format("%Y-%m-%dT%H:%M:%S").to_string());
        }
        out.extend_from_slice(self.time_text.1.as_bytes());
        let mut digits = *b".000000Z";
        let mut f = fraction;
        for d in digits[1..7].iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        out.extend_from_slice(&digits);
    }

    fn shifted(&mut self, micros: i64) -> i64 {
        match self.shift_to {
            Some(to) => micros + *self.shift_micros.get_or_insert(to - micros),
            None => micros,
        }
    }

    fn map_contract(&mut self, record: &csv::ByteRecord, out: &mut Vec<u8>) -> Mapped {
        if record.len() != COLUMNS.len() {
            return Mapped::Malformed(format!("expected {} fields, found {}", COLUMNS.len(), record.len()));
        }
        let Some(micros) = std::str::from_utf8(&record[8]).ok().and_then(parse_contract_time) else {
            return Mapped::Malformed("event_time is not a timestamp".into());
        };
        let micros = self.shifted(micros);
        for (i, field) in record.iter().enumerate().take(8) {
            if i > 0 {
                out.push(b',');
            }
            push_field(out, field);
        }
        out.push(b',');
        self.push_time(out, micros);
        out.push(b'\n');
        Mapped::Row { micros, identical: false }
    }

    /// The dataset's mapping into the contract:
    /// - `view` and `purchase` kept; `cart` and `remove_from_cart` skipped
    ///   and counted; any other type is malformed;
    /// - `user_name`, `user_email`: derived from `user_id` exactly as the
    ///   synthetic generator does;
    /// - `product_name`: `brand` and the last part of `category_code`
    ///   (`samsung smartphone`); either one with the product id when the
    ///   other is empty (`samsung #1002544`, `smartphone #1002544`); else
    ///   `product #ID`; at most 100 characters;
    /// - `product_category`: the first part of `category_code`
    ///   (`electronics`), `unknown` when empty; at most 50 characters;
    /// - `product_price`: as given (a plain decimal with at most two
    ///   decimals; anything else is malformed);
    /// - `event_time`: `YYYY-MM-DD HH:MM:SS UTC`, plus the row's rank among
    ///   the distinct rows of its user in that second, in microseconds;
    /// - `category_id` and `user_session` are not carried.
    fn map_dataset(&mut self, record: &csv::ByteRecord, out: &mut Vec<u8>) -> Mapped {
        if record.len() != DATASET_COLUMNS.len() {
            return Mapped::Malformed(format!("expected {} fields, found {}", DATASET_COLUMNS.len(), record.len()));
        }
        let field =
            |i: usize| std::str::from_utf8(&record[i]).map_err(|_| format!("{} is not UTF-8", DATASET_COLUMNS[i]));
        let result = (|| -> Result<Option<(i64, bool)>, String> {
            let event_type = match &record[1] {
                b"view" => "view",
                b"purchase" => "purchase",
                b"cart" | b"remove_from_cart" => return Ok(None),
                other => return Err(format!("unknown event_type {:?}", String::from_utf8_lossy(other))),
            };
            let second = if record[0] == self.last_time.0[..] {
                self.last_time.1
            } else {
                let second = parse_dataset_time(field(0)?).ok_or("event_time is not `YYYY-MM-DD HH:MM:SS UTC`")?;
                self.last_time = (record[0].to_vec(), second);
                second
            };
            let product = field(2)?;
            parse_id(product).ok_or("product_id is not an id > 0")?;
            let user = field(7)?;
            let user_id = parse_id(user).ok_or("user_id is not an id > 0")?;
            let price = field(6)?;
            if !is_price(price) {
                return Err(format!("price {price:?} is not a decimal with at most two decimals"));
            }
            let code = field(4)?;
            let brand = field(5)?;

            // The row's rank among its user's distinct rows of this second.
            if second < self.second {
                return Err(String::new());
            }
            if second > self.second {
                self.second = second;
                self.latest.clear();
                self.entries.clear();
                self.arena.clear();
            }
            self.encoded.clear();
            for f in record.iter() {
                self.encoded.extend_from_slice(&(f.len() as u32).to_le_bytes());
                self.encoded.extend_from_slice(f);
            }
            // Walk the user's rows of this second, newest first: `count` of
            // them, the identical one (if any) `count - 1 - position` old.
            let (mut count, mut identical, mut next) = (0usize, None, self.latest.get(&user_id).copied());
            while let Some(i) = next {
                let (start, end, previous) = self.entries[i];
                if identical.is_none() && self.arena[start..end] == self.encoded[..] {
                    identical = Some(count);
                }
                count += 1;
                next = (previous != usize::MAX).then_some(previous);
            }
            let rank = match identical {
                Some(position) => count - 1 - position,
                None => {
                    let start = self.arena.len();
                    self.arena.extend_from_slice(&self.encoded);
                    let previous = self.latest.get(&user_id).copied().unwrap_or(usize::MAX);
                    self.entries.push((start, self.arena.len(), previous));
                    self.latest.insert(user_id, self.entries.len() - 1);
                    count
                }
            };
            let micros = self.shifted(second * 1_000_000 + rank as i64);

            if self.profiles.len() >= PROFILE_CACHE {
                self.profiles.clear();
            }
            let profile = self.profiles.entry(user_id).or_insert_with(|| {
                let p = user_profile(user_id);
                let mut both = p.name;
                both.push('\n');
                both.push_str(&p.email);
                both.into_boxed_str()
            });
            let (user_name, user_email) = profile.split_once('\n').unwrap_or_default();
            let last = code.rsplit('.').next().unwrap_or_default();
            self.text.clear();
            let id_text = |t: &mut String, prefix: &str| {
                t.push_str(prefix);
                t.push('#');
                t.push_str(product.trim_start_matches(['+', '0']));
            };
            match (brand.is_empty(), last.is_empty()) {
                (false, false) => {
                    self.text.push_str(brand);
                    self.text.push(' ');
                    self.text.push_str(last);
                }
                (false, true) => id_text(&mut self.text, &format!("{brand} ")),
                (true, false) => id_text(&mut self.text, &format!("{last} ")),
                (true, true) => id_text(&mut self.text, "product "),
            }
            let name: &str = truncate(&self.text, MAX_TEXT_CHARS);
            let category = match code.split('.').next() {
                Some(c) if !c.is_empty() => truncate(c, MAX_CATEGORY_CHARS),
                _ => "unknown",
            };
            let fields = [
                user.trim_start_matches(['+', '0']),
                user_name,
                user_email,
                event_type,
                product.trim_start_matches(['+', '0']),
                name,
                category,
                price,
            ];
            for field in fields {
                push_field(out, field.as_bytes());
                out.push(b',');
            }
            self.push_time(out, micros);
            out.push(b'\n');
            Ok(Some((micros, identical.is_some())))
        })();
        match result {
            Ok(Some((micros, identical))) => Mapped::Row { micros, identical },
            Ok(None) => Mapped::Cart,
            Err(e) if e.is_empty() => Mapped::OutOfOrder,
            Err(e) => Mapped::Malformed(e),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

fn parse_id(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|v| *v > 0 && *v <= i32::MAX as u32)
}

fn is_price(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && int.len() <= 8 && digits(frac) && frac.len() <= 2
}

/// `YYYY-MM-DD HH:MM:SS UTC` (or without ` UTC`), in whole seconds since the
/// epoch.
pub fn parse_dataset_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix(" UTC").unwrap_or(s);
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc().timestamp())
}

fn parse_contract_time(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// The name of the file of the slice that starts at `start_micros`.
fn slice_name(start_micros: i64, index: u64) -> String {
    let t = DateTime::from_timestamp_micros(start_micros).unwrap_or_default();
    format!("replay_{}_{index:06}.csv", t.format("%Y%m%dT%H%M%S"))
}

/// Lines logged one by one before the log only counts them.
const LOGGED_MALFORMED: u64 = 100;

/// Reads and maps the input, handing on each non-empty slice; runs on a
/// blocking thread. `progress` is told the bytes read so far.
fn read_slices(
    settings: &ReplaySettings,
    mut emit: impl FnMut(Slice) -> bool,
    progress: impl Fn(u64, &ReplaySummary),
) -> anyhow::Result<ReplaySummary> {
    let file = std::fs::File::open(&settings.input)
        .with_context(|| format!("cannot open the replay input {}", settings.input.display()))?;
    let counted = CountingReader { inner: std::io::BufReader::with_capacity(1 << 20, file), bytes: 0 };
    let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(counted);
    let mut record = csv::ByteRecord::new();
    if !csv.read_byte_record(&mut record).context("cannot read the replay input's header")? {
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
    info!(input = %settings.input.display(), ?format, "replay started");
    let mut mapper = Mapper::new(format, settings.shift_to);
    let slice_micros = (settings.slice.as_micros() as i64).max(1);
    let mut summary = ReplaySummary::default();
    let mut current: Option<Slice> = None;
    let mut origin: Option<i64> = None;
    let mut row = Vec::with_capacity(256);
    let mut last_size = 64 * 1024;
    loop {
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // The csv crate fails only on I/O here: stop, keeping what was read.
                anyhow::bail!("cannot read the replay input at line {}: {e}", csv.position().line());
            }
        }
        summary.lines += 1;
        row.clear();
        let line = record.position().map_or(0, |p| p.line());
        let micros = match mapper.map(&record, &mut row) {
            Mapped::Row { micros, identical } => {
                summary.identical += u64::from(identical);
                micros
            }
            Mapped::Cart => {
                summary.skipped_cart += 1;
                continue;
            }
            Mapped::OutOfOrder => {
                summary.out_of_order += 1;
                if summary.out_of_order <= LOGGED_MALFORMED {
                    warn!(line, "row older than the rows before it; skipped (the dataset replays in time order)");
                }
                continue;
            }
            Mapped::Malformed(reason) => {
                summary.malformed += 1;
                if summary.malformed <= LOGGED_MALFORMED {
                    warn!(line, reason, "malformed input line skipped");
                }
                continue;
            }
        };
        let t = DateTime::from_timestamp_micros(micros);
        summary.first_event = summary.first_event.or(t);
        summary.last_event = summary.last_event.max(t);
        let origin = *origin.get_or_insert(micros);
        // A row earlier than the current slice (contract input is only
        // roughly ordered) joins the current slice.
        let index = ((micros - origin).max(0) / slice_micros) as u64;
        if current.as_ref().is_some_and(|c| index > c.index) {
            if let Some(done) = current.take() {
                last_size = done.contents.len() + done.contents.len() / 8;
                if !emit(done) {
                    return Ok(summary);
                }
                progress(csv.get_ref().bytes, &summary);
            }
        }
        let slice = current.get_or_insert_with(|| {
            // Sized like the last slice: no regrowing on the way.
            let mut contents = Vec::with_capacity(last_size);
            contents.extend_from_slice(COLUMNS.join(",").as_bytes());
            contents.push(b'\n');
            Slice { index, start_micros: origin + index as i64 * slice_micros, contents, events: 0 }
        });
        slice.contents.extend_from_slice(&row);
        slice.events += 1;
        summary.events += 1;
    }
    if let Some(done) = current.take() {
        emit(done);
    }
    progress(csv.get_ref().bytes, &summary);
    if summary.malformed > LOGGED_MALFORMED {
        warn!(malformed = summary.malformed, "more malformed lines than were logged");
    }
    Ok(summary)
}

#[derive(Debug)]
struct CountingReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
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
    // A plain thread, not spawn_blocking: a blocked blocking task would
    // stop tokio's paused clock from advancing in tests.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let settings = settings.clone();
        let bar = bar.clone();
        std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn(move || {
                let summary = read_slices(
                    &settings,
                    move |s| tx.blocking_send(s).is_ok(),
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
    }

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
        let published = tokio::task::spawn_blocking(move || writer::publish(&dir, &n, &contents))
            .await
            .context("the file writer panicked")?;
        published.with_context(|| format!("publishing {name} into {}", settings.data_dir.display()))?;
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

    fn map_lines(format: InputFormat, lines: &[&str]) -> (Vec<Mapped>, String) {
        let text = lines.join("\n");
        let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
        let mut mapper = Mapper::new(format, None);
        let (mut outcomes, mut out) = (Vec::new(), Vec::new());
        let mut record = csv::ByteRecord::new();
        while csv.read_byte_record(&mut record).unwrap_or(false) {
            outcomes.push(mapper.map(&record, &mut out));
        }
        (outcomes, String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn formats_are_detected_from_the_header() {
        let record = |s: &str| csv::ByteRecord::from(s.trim_end().split(',').collect::<Vec<_>>());
        assert_eq!(Mapper::detect(&record(DATASET_HEADER)), Some(InputFormat::Dataset));
        assert_eq!(Mapper::detect(&record(&COLUMNS.join(","))), Some(InputFormat::Contract));
        assert_eq!(Mapper::detect(&record("a,b,c")), None);
    }

    #[test]
    fn dataset_rows_map_into_the_contract_as_documented() {
        let p = user_profile(541312140);
        let (outcomes, out) = map_lines(
            InputFormat::Dataset,
            &[
                "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde",
                "2019-10-01 00:00:00 UTC,purchase,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,541312140,9333dfbd",
                "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde",
                "2019-10-01 00:00:00 UTC,cart,3900821,2053013552326770905,,aqua,33.20,541312140,9333dfbd",
                "2019-10-01 00:00:00 UTC,view,1,2,,,1,541312140,x",
                "2019-10-01 00:00:01 UTC,view,1,2,,,1,541312140,x",
                "2019-10-01 00:00:00 UTC,view,1,2,,,1,7,x",
                "2019-10-01 00:00:02 UTC,click,1,2,,,1,7,x",
                "2019-10-01 00:00:02 UTC,view,1,2,,,1.005,7,x",
                "not a time,view,1,2,,,1,7,x",
                "2019-10-01 00:00:02 UTC,view,1,2,,,1",
            ],
        );
        use Mapped::*;
        let t0 = 1_569_888_000_000_000;
        assert_eq!(
            outcomes,
            vec![
                Row { micros: t0, identical: false },
                Row { micros: t0 + 1, identical: false },
                Row { micros: t0, identical: true },
                Cart,
                Row { micros: t0 + 2, identical: false },
                Row { micros: t0 + 1_000_000, identical: false },
                OutOfOrder,
                Malformed("unknown event_type \"click\"".into()),
                Malformed("price \"1.005\" is not a decimal with at most two decimals".into()),
                Malformed("event_time is not `YYYY-MM-DD HH:MM:SS UTC`".into()),
                Malformed("expected 9 fields, found 7".into()),
            ]
        );
        let who = format!("541312140,{},{}", p.name, p.email);
        assert_eq!(
            out,
            format!(
                "{who},view,44600062,shiseido #44600062,unknown,35.79,2019-10-01T00:00:00.000000Z\n\
                 {who},purchase,3900821,aqua water_heater,appliances,33.20,2019-10-01T00:00:00.000001Z\n\
                 {who},view,44600062,shiseido #44600062,unknown,35.79,2019-10-01T00:00:00.000000Z\n\
                 {who},view,1,product #1,unknown,1,2019-10-01T00:00:00.000002Z\n\
                 {who},view,1,product #1,unknown,1,2019-10-01T00:00:01.000000Z\n"
            )
        );
    }

    #[test]
    fn contract_rows_are_written_as_they_are() {
        let row = "5,\"Lee, Ann\",a@x,view,2,Mug,Home,3.50,2026-01-01T00:00:00.5+01:00";
        let (outcomes, out) = map_lines(InputFormat::Contract, &[row, "5,x"]);
        assert_eq!(outcomes[0], Mapped::Row { micros: 1_767_222_000_500_000, identical: false });
        assert!(matches!(outcomes[1], Mapped::Malformed(_)));
        assert_eq!(out, "5,\"Lee, Ann\",a@x,view,2,Mug,Home,3.50,2025-12-31T23:00:00.500000Z\n");
    }

    #[test]
    fn shift_to_now_moves_the_first_event_to_now_and_keeps_the_gaps() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut mapper = Mapper::new(InputFormat::Dataset, Some(now));
        let mut out = Vec::new();
        let rec = |t: &str| csv::ByteRecord::from(vec![t, "view", "1", "2", "", "", "1.00", "9", "s"]);
        let a = mapper.map(&rec("2019-10-01 00:00:00 UTC"), &mut out);
        let b = mapper.map(&rec("2019-10-01 00:01:00 UTC"), &mut out);
        assert_eq!(a, Mapped::Row { micros: now.timestamp_micros(), identical: false });
        assert_eq!(b, Mapped::Row { micros: now.timestamp_micros() + 60_000_000, identical: false });
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
