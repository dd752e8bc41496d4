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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Datelike as _, NaiveDateTime, Timelike as _, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::contract::{push_field, COLUMNS, HEADER, MAX_CATEGORY_CHARS, MAX_TEXT_CHARS};
use crate::record::{user_profile, IdMap};
use crate::records::Records;
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
    profiles: Profiles,
    shift_micros: Option<i64>,
    shift_to: Option<i64>,
    text: String,
    time_text: (i64, String),
}

/// Recent users' `user_name,user_email,` (CSV, with the comma after), as
/// [`user_profile`] derives them.
///
/// Direct-mapped: a user's slot is fixed by its id, and a newcomer replaces
/// whoever held it. A slot is one cache line holding the text, so a hit
/// costs one memory access. The users of the sessions open at one moment
/// (about 5 000 in the public dataset) mostly keep their slots; a larger
/// hash map with separately allocated text cost more in cache misses than
/// deriving profiles again saves.
#[derive(Debug)]
struct Profiles {
    slots: Vec<ProfileSlot>,
}

const PROFILE_SLOTS_LOG2: u32 = 16;
/// Marks a profile too long for a slot: derived again at every use (about
/// 3 % of users).
const PROFILE_TOO_LONG: u8 = u8::MAX;

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct ProfileSlot {
    /// 0 for an empty slot (user ids are > 0).
    user_id: u32,
    len: u8,
    text: [u8; 59],
}

impl Profiles {
    fn new() -> Profiles {
        let empty = ProfileSlot { user_id: 0, len: 0, text: [0; 59] };
        Profiles { slots: vec![empty; 1 << PROFILE_SLOTS_LOG2] }
    }

    /// Fibonacci hashing: the top bits of the product spread nearby ids.
    fn slot_of(user_id: u32) -> usize {
        (user_id.wrapping_mul(0x9E37_79B9) >> (32 - PROFILE_SLOTS_LOG2)) as usize
    }

    /// Appends `user_id,user_name,user_email,` to `out`; `user_id` is > 0.
    fn push(&mut self, user_id: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(user_id).as_bytes());
        out.push(b',');
        let slot = &mut self.slots[Profiles::slot_of(user_id)];
        if slot.user_id == user_id && slot.len != PROFILE_TOO_LONG {
            out.extend_from_slice(&slot.text[..usize::from(slot.len)]);
            return;
        }
        let start = out.len();
        let profile = user_profile(user_id);
        for field in [profile.name, profile.email] {
            push_field(out, field.as_bytes());
            out.push(b',');
        }
        let text = &out[start..];
        slot.user_id = user_id;
        match slot.text.get_mut(..text.len()) {
            Some(room) => {
                room.copy_from_slice(text);
                slot.len = text.len() as u8;
            }
            None => slot.len = PROFILE_TOO_LONG,
        }
    }
}

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
            profiles: Profiles::new(),
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

    /// Maps one record, appending its contract row to `out`; a record that
    /// is not mapped into a row leaves `out` as it was.
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
            self.time_text.0 = second;
            self.time_text.1.clear();
            if (0..=9999).contains(&t.year()) {
                // What `%Y-%m-%dT%H:%M:%S` gives, without parsing the format.
                let text = &mut self.time_text.1;
                for (n, width, sep) in [
                    (t.year() as u32, 4, '-'),
                    (t.month(), 2, '-'),
                    (t.day(), 2, 'T'),
                    (t.hour(), 2, ':'),
                    (t.minute(), 2, ':'),
                    (t.second(), 2, ' '),
                ] {
                    for k in (0..width).rev() {
                        text.push(char::from(b'0' + (n / 10u32.pow(k) % 10) as u8));
                    }
                    if sep != ' ' {
                        text.push(sep);
                    }
                }
            } else {
                let _ = write!(self.time_text.1, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
            }
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
        let mut fields: [&[u8]; DATASET_COLUMNS.len()] = [&[]; DATASET_COLUMNS.len()];
        for (slot, f) in fields.iter_mut().zip(record.iter()) {
            *slot = f;
        }
        let field =
            |i: usize| std::str::from_utf8(fields[i]).map_err(|_| format!("{} is not UTF-8", DATASET_COLUMNS[i]));
        let result = (|| -> Result<Option<(i64, bool)>, String> {
            let event_type = match fields[1] {
                b"view" => "view",
                b"purchase" => "purchase",
                b"cart" | b"remove_from_cart" => return Ok(None),
                other => return Err(format!("unknown event_type {:?}", String::from_utf8_lossy(other))),
            };
            let second = if fields[0] == &self.last_time.0[..] {
                self.last_time.1
            } else {
                let second = parse_dataset_time(field(0)?).ok_or("event_time is not `YYYY-MM-DD HH:MM:SS UTC`")?;
                self.last_time.0.clear();
                self.last_time.0.extend_from_slice(fields[0]);
                self.last_time.1 = second;
                second
            };
            let product = parse_id(fields[2]).ok_or("product_id is not an id > 0")?;
            let user_id = parse_id(fields[7]).ok_or("user_id is not an id > 0")?;
            let price = fields[6];
            if !is_price(price) {
                return Err(format!(
                    "price {:?} is not a decimal with at most two decimals",
                    String::from_utf8_lossy(price)
                ));
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
            // The row as its field lengths, then its fields' bytes.
            let mut lengths = [0u8; 4 * DATASET_COLUMNS.len()];
            for (length, f) in lengths.chunks_exact_mut(4).zip(fields) {
                length.copy_from_slice(&(f.len() as u32).to_le_bytes());
            }
            self.encoded.clear();
            self.encoded.extend_from_slice(&lengths);
            self.encoded.extend_from_slice(record.as_slice());
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

            let (category, last) = match code.as_bytes().iter().position(|&b| b == b'.') {
                // Byte positions of an ASCII dot are char boundaries.
                Some(first_dot) => {
                    let last_dot = code.as_bytes().iter().rposition(|&b| b == b'.').unwrap_or(first_dot);
                    (&code[..first_dot], &code[last_dot + 1..])
                }
                None => (code, code),
            };
            let mut digits = itoa::Buffer::new();
            let product = digits.format(product);
            self.text.clear();
            match (brand.is_empty(), last.is_empty()) {
                (false, false) => {
                    self.text.push_str(brand);
                    self.text.push(' ');
                    self.text.push_str(last);
                }
                (brand_empty, _) => {
                    self.text.push_str(if !brand_empty {
                        brand
                    } else if !last.is_empty() {
                        last
                    } else {
                        "product"
                    });
                    self.text.push_str(" #");
                    self.text.push_str(product);
                }
            }
            let name = truncate(&self.text, MAX_TEXT_CHARS);
            let category = if category.is_empty() { "unknown" } else { truncate(category, MAX_CATEGORY_CHARS) };

            self.profiles.push(user_id, out);
            out.extend_from_slice(event_type.as_bytes());
            out.push(b',');
            out.extend_from_slice(product.as_bytes());
            out.push(b',');
            push_field(out, name.as_bytes());
            out.push(b',');
            push_field(out, category.as_bytes());
            out.push(b',');
            // Checked above: digits and at most one dot.
            out.extend_from_slice(price);
            out.push(b',');
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

/// A decimal id in 1..=i32::MAX, as `u32::from_str` reads it (an optional
/// `+`, leading zeros allowed).
fn parse_id(s: &[u8]) -> Option<u32> {
    let digits = s.strip_prefix(b"+").unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    let mut value = 0u64;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
        if value > i32::MAX as u64 {
            return None;
        }
    }
    u32::try_from(value).ok().filter(|v| *v > 0)
}

fn is_price(s: &[u8]) -> bool {
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => (&s[..dot], &s[dot + 1..]),
        None => (s, &b"0"[..]),
    };
    let digits = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    digits(int) && int.len() <= 8 && digits(frac) && frac.len() <= 2
}

/// `YYYY-MM-DD HH:MM:SS UTC` (or without ` UTC`), in whole seconds since the
/// epoch.
pub fn parse_dataset_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix(" UTC").unwrap_or(s);
    // The dataset's own layout, read without parsing a format; anything else
    // goes through chrono.
    let b = s.as_bytes();
    let number = |range: std::ops::Range<usize>| {
        b[range].iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    if b.len() == 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b' ' && b[13] == b':' && b[16] == b':' {
        if let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) =
            (number(0..4), number(5..7), number(8..10), number(11..13), number(14..16), number(17..19))
        {
            if let Some(t) =
                chrono::NaiveDate::from_ymd_opt(y as i32, mo, d).and_then(|date| date.and_hms_opt(h, mi, sec))
            {
                return Some(t.and_utc().timestamp());
            }
        }
    }
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
/// blocking thread. `spare` gives back the buffers of published slices for
/// reuse; `progress` is told the bytes read so far.
fn read_slices(
    settings: &ReplaySettings,
    mut emit: impl FnMut(Slice) -> bool,
    mut spare: impl FnMut() -> Option<Vec<u8>>,
    progress: impl Fn(u64, &ReplaySummary),
) -> anyhow::Result<ReplaySummary> {
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
        let outcome = mapper.map(&record, &mut contents);
        let micros = match outcome {
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
                    move || spare_rx.try_recv().ok(),
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
        let (published, contents) =
            tokio::task::spawn_blocking(move || (writer::publish(&dir, &n, &contents), contents))
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

    #[test]
    fn cached_profiles_are_what_user_profile_derives() {
        let expected = |id: u32| {
            let p = user_profile(id);
            let mut row = format!("{id},").into_bytes();
            for field in [p.name, p.email] {
                push_field(&mut row, field.as_bytes());
                row.push(b',');
            }
            row
        };
        // Two users sharing a slot, and one whose profile is too long for a slot.
        let a = 541_312_140;
        let b = (1..).find(|&id| id != a && Profiles::slot_of(id) == Profiles::slot_of(a)).unwrap_or_default();
        let long = (1..).find(|&id| expected(id).len() > 10 + 59).unwrap_or_default();
        let mut profiles = Profiles::new();
        for id in [a, a, b, a, b, b, long, long, a, 1, i32::MAX as u32] {
            let mut out = b"x".to_vec();
            profiles.push(id, &mut out);
            assert_eq!(String::from_utf8_lossy(&out[1..]), String::from_utf8_lossy(&expected(id)), "user {id}");
        }
    }

    #[test]
    fn times_are_read_and_written_as_chrono_does() {
        for text in [
            "2019-10-01 00:00:00 UTC",
            "2019-10-31 23:59:59",
            "2020-02-29 12:30:45 UTC",
            "2019-02-29 12:30:45 UTC",
            "2019-10-01 23:59:60 UTC",
            "2019-10-1 00:00:00 UTC",
            "2019-10-01 24:00:00 UTC",
            "0000-01-01 00:00:00 UTC",
            "2019-10-01T00:00:00 UTC",
            "2019-1a-01 00:00:00 UTC",
        ] {
            let chrono = NaiveDateTime::parse_from_str(text.trim_end_matches(" UTC"), "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc().timestamp());
            assert_eq!(parse_dataset_time(text), chrono, "{text}");
        }
        let mut mapper = Mapper::new(InputFormat::Dataset, None);
        for second in
            [0, 1_569_888_000, 1_569_974_399, 253_402_300_799, 253_402_300_800, -1, -62_167_219_200, -62_167_219_201]
        {
            let mut out = Vec::new();
            mapper.push_time(&mut out, second * 1_000_000 + 42);
            let t = DateTime::from_timestamp(second, 0).unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&out), format!("{}.000042Z", t.format("%Y-%m-%dT%H:%M:%S")), "{second}");
        }
    }

    #[test]
    fn ids_are_read_as_u32_from_str_does_within_1_to_i32_max() {
        for text in ["1", "+7", "0007", "0", "", "+", "-1", "1a", " 1", "2147483647", "2147483648", "99999999999"] {
            let std = text.parse::<u32>().ok().filter(|v| (1..=i32::MAX as u32).contains(v));
            assert_eq!(parse_id(text.as_bytes()), std, "{text:?}");
        }
    }

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

        let (outcomes, rows) = map_lines(InputFormat::Dataset, &lines.iter().map(String::as_str).collect::<Vec<_>>());
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
