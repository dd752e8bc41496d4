//! Reading a batch: each file is read, checked against the event contract row
//! by row, and turned into a Polars `DataFrame` of the contract's explicit
//! [`schema`] (no inference anywhere); then the batch is deduplicated on
//! `(user_id, event_time)`, the last row winning in (file order, line order).
//! No tokio and no SQL here.
//!
//! Records are tokenised by the `csv` crate rather than Polars' CSV reader:
//! the contract asks for every bad row to be rejected with its file, physical
//! line, raw text and reason while the good rows go on, and Polars' reader
//! fails a whole file on one row with too many fields, pads short rows with
//! nulls without saying so, and reports no line numbers
//! (pola-rs/polars#10585, #10660). Polars holds and deduplicates the batch.
//!
//! Decisions the contract leaves open, applied here:
//! - a UTF-8 BOM and CRLF line ends are accepted; the header must be exact;
//! - `event_type` is matched case-insensitively and stored lower-case;
//! - `product_price` is a plain decimal with at most two significant
//!   decimals (`12`, `12.5`, `12.50`, `12.500`); exponents and signs are
//!   refused; prices go through as integer cents, never through `f64`;
//! - `event_time` is RFC 3339 (`T` or space, any offset) or a naive
//!   `YYYY-MM-DD HH:MM:SS[.ffffff]`, which is UTC; more than microsecond
//!   precision is refused rather than rounded;
//! - text fields may be empty; a NUL character is refused (PostgreSQL text
//!   cannot hold it).

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Timelike};
use generator::contract::{push_field, COLUMNS, MAX_CATEGORY_CHARS, MAX_PRICE_CENTS, MAX_TEXT_CHARS};
use polars::prelude::*;

use crate::checkpoint::FileId;

/// The longest raw line kept with a rejected row; longer ones are cut.
pub const MAX_RAW_LINE: usize = 4_096;

/// Column names of a batch frame beyond the contract's: the file's index in
/// its batch and the row's physical line.
pub const FILE_COLUMN: &str = "file_index";
pub const LINE_COLUMN: &str = "line";

/// The explicit schema of a batch frame.
pub fn schema() -> Schema {
    let mut fields =
        vec![Field::new(FILE_COLUMN.into(), DataType::UInt32), Field::new(LINE_COLUMN.into(), DataType::UInt64)];
    for name in COLUMNS {
        let dtype = match name {
            "user_id" | "product_id" => DataType::Int32,
            "product_price" => DataType::Int64,                               // cents
            "event_time" => DataType::Datetime(TimeUnit::Microseconds, None), // UTC
            _ => DataType::String,
        };
        fields.push(Field::new(name.into(), dtype));
    }
    Schema::from_iter(fields)
}

/// A file of a batch, where to find it and which identity was planned.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub id: FileId,
    pub path: PathBuf,
}

/// A row that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub file_index: u32,
    /// Physical line where the record starts (the header is line 1).
    pub line: u64,
    /// The record as it stands in the file, cut at [`MAX_RAW_LINE`] bytes.
    pub raw: String,
    pub reason: String,
}

/// What reading one whole file gave (see [`parse`]).
#[derive(Debug)]
pub enum FileRead {
    /// The file follows the contract; some rows may be rejected.
    Rows { frame: DataFrame, rows_read: u64, rejected: Vec<Rejected> },
    /// The file cannot be read as the contract at all.
    Quarantine { reason: String },
    /// The file was gone when it was to be read.
    Missing,
}

/// The longest record read: past it the rest of the file is rejected, so a
/// file with no line ends is never held whole in memory.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// A `Read` that fails once more than `limit` bytes have been pulled since
/// the CSV reader last finished a record (the count is reset by the reader's
/// owner after each record; the CSV buffer makes it exact to within 8 KiB).
#[derive(Debug)]
struct Bounded<R> {
    inner: R,
    since_record: Arc<AtomicU64>,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.load(Ordering::Relaxed) > self.limit {
            return Err(std::io::Error::other(format!("a record is longer than {} bytes", self.limit)));
        }
        let n = self.inner.read(buf)?;
        self.since_record.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The rows of a part of one file.
#[derive(Debug)]
pub struct Piece {
    pub frame: DataFrame,
    pub rows_read: u64,
    pub rejected: Vec<Rejected>,
    /// Bytes of the file this piece covers.
    pub bytes: u64,
}

/// One file read piece by piece: memory is bounded by the piece size, not by
/// the file.
#[derive(Debug)]
pub struct FileReader<R> {
    csv: csv::Reader<Bounded<R>>,
    since_record: Arc<AtomicU64>,
    file_index: u32,
    record: csv::ByteRecord,
    finished: bool,
}

/// What opening a file as the contract gave.
#[derive(Debug)]
pub enum Opened<R> {
    Rows(FileReader<R>),
    Quarantine { reason: String },
}

impl<R: Read> FileReader<R> {
    /// Reads and checks the header of `inner`, file `file_index` of its batch.
    pub fn open(inner: R, file_index: u32) -> Opened<R> {
        Self::open_with_limit(inner, file_index, MAX_RECORD_BYTES)
    }

    fn open_with_limit(inner: R, file_index: u32, limit: u64) -> Opened<R> {
        let since_record = Arc::new(AtomicU64::new(0));
        let bounded = Bounded { inner, since_record: since_record.clone(), limit };
        let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bounded);
        let mut record = csv::ByteRecord::new();
        let quarantine = |reason: String| Opened::Quarantine { reason };
        match csv.read_byte_record(&mut record) {
            Ok(true) => {
                let mut fields: Vec<&[u8]> = record.iter().collect();
                if let Some(first) = fields.first_mut() {
                    *first = first.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first);
                }
                if fields.iter().any(|f| std::str::from_utf8(f).is_err()) {
                    return quarantine("not UTF-8: the header has an invalid byte".into());
                }
                if fields.iter().copied().ne(COLUMNS.iter().map(|c| c.as_bytes())) {
                    let found = String::from_utf8_lossy(&fields.join(&b","[..])).chars().take(200).collect::<String>();
                    return quarantine(format!("wrong header: expected `{}`, found `{found}`", COLUMNS.join(",")));
                }
            }
            Ok(false) if csv.position().byte() == 0 => return quarantine("empty file: no header".into()),
            Ok(false) => return quarantine("no header row".into()),
            Err(e) => return quarantine(format!("unreadable CSV header: {e}")),
        }
        Opened::Rows(FileReader { csv, since_record, file_index, record, finished: false })
    }

    /// Reads rows until at least `max_bytes` of the file are consumed or the
    /// file ends; `None` once it has ended.
    pub fn next_piece(&mut self, max_bytes: u64) -> Option<Piece> {
        if self.finished {
            return None;
        }
        let start = self.csv.position().byte();
        let mut columns = Columns::new();
        let mut rejected = Vec::new();
        let mut rows_read = 0u64;
        while self.csv.position().byte() - start < max_bytes.max(1) {
            self.since_record.store(0, Ordering::Relaxed);
            let line = self.csv.position().line();
            match self.csv.read_byte_record(&mut self.record) {
                Ok(false) => {
                    self.finished = true;
                    break;
                }
                Ok(true) => {
                    rows_read += 1;
                    let line = self.record.position().map_or(line, |p| p.line());
                    let reject =
                        |raw: String, reason: String| Rejected { file_index: self.file_index, line, raw, reason };
                    match csv::StringRecord::from_byte_record(std::mem::take(&mut self.record)) {
                        Ok(record) => {
                            match validate(&record) {
                                Ok(row) => columns.push(self.file_index, line, &row),
                                Err(reason) => rejected.push(reject(raw_text(record.as_byte_record()), reason)),
                            }
                            self.record = record.into_byte_record();
                        }
                        Err(e) => {
                            let bad = e.utf8_error();
                            let column = COLUMNS.get(bad.field()).copied().unwrap_or("an extra field");
                            let reason =
                                format!("not UTF-8: {column} has an invalid byte at offset {}", bad.valid_up_to());
                            self.record = e.into_byte_record();
                            rejected.push(reject(raw_text(&self.record), reason));
                        }
                    }
                }
                Err(e) => {
                    // An I/O error or an over-long record: keep the rows
                    // read so far and reject the rest of the file.
                    let reason = format!("unreadable CSV from here on: {e}");
                    rejected.push(Rejected { file_index: self.file_index, line, raw: String::new(), reason });
                    self.finished = true;
                    break;
                }
            }
        }
        let bytes = self.csv.position().byte() - start;
        Some(Piece { frame: columns.finish(), rows_read, rejected, bytes })
    }
}

/// Parses the whole contents of one file in one piece.
pub fn parse(bytes: &[u8], file_index: u32) -> FileRead {
    let mut reader = match FileReader::open(bytes, file_index) {
        Opened::Rows(reader) => reader,
        Opened::Quarantine { reason } => return FileRead::Quarantine { reason },
    };
    let mut out = FileRead::Rows { frame: empty_frame(), rows_read: 0, rejected: Vec::new() };
    while let Some(piece) = reader.next_piece(u64::MAX) {
        if let FileRead::Rows { frame, rows_read, rejected } = &mut out {
            // Same schema on both sides: vstack cannot fail.
            let _ = frame.vstack_mut(&piece.frame);
            *rows_read += piece.rows_read;
            rejected.extend(piece.rejected);
        }
    }
    out
}

/// A record as text for the rejected-rows table: fields joined by commas,
/// quoted where needed, cut at [`MAX_RAW_LINE`] bytes, NULs spelled `\0`.
fn raw_text(record: &csv::ByteRecord) -> String {
    let mut out = Vec::new();
    for (i, field) in record.iter().enumerate() {
        if out.len() > MAX_RAW_LINE {
            break;
        }
        if i > 0 {
            out.push(b',');
        }
        // A 10 MB field is cut before it is copied.
        push_field(&mut out, &field[..field.len().min(MAX_RAW_LINE + 1)]);
    }
    out.truncate(MAX_RAW_LINE);
    String::from_utf8_lossy(&out).replace('\0', "\\0")
}

/// One valid row, borrowed from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    pub user_id: i32,
    pub user_name: &'a str,
    pub user_email: &'a str,
    pub event_type: &'static str,
    pub product_id: i32,
    pub product_name: &'a str,
    pub product_category: &'a str,
    pub price_cents: i64,
    pub event_time_micros: i64,
}

/// Checks one record against the contract; the reason names the column.
pub fn validate(record: &csv::StringRecord) -> Result<Row<'_>, String> {
    if record.len() != COLUMNS.len() {
        return Err(format!("expected {} fields, found {}", COLUMNS.len(), record.len()));
    }
    let f = |i: usize| &record[i];
    Ok(Row {
        user_id: parse_id("user_id", f(0))?,
        user_name: parse_text("user_name", f(1), MAX_TEXT_CHARS)?,
        user_email: parse_text("user_email", f(2), MAX_TEXT_CHARS)?,
        event_type: parse_event_type(f(3))?,
        product_id: parse_id("product_id", f(4))?,
        product_name: parse_text("product_name", f(5), MAX_TEXT_CHARS)?,
        product_category: parse_text("product_category", f(6), MAX_CATEGORY_CHARS)?,
        price_cents: parse_price(f(7))?,
        event_time_micros: parse_time(f(8))?,
    })
}

fn parse_id(column: &str, s: &str) -> Result<i32, String> {
    if s.is_empty() {
        return Err(format!("{column}: missing"));
    }
    let v: i64 = s.parse().map_err(|_| {
        if !s.is_empty() && s.bytes().skip(usize::from(s.starts_with(['-', '+']))).all(|b| b.is_ascii_digit()) {
            format!("{column}: {} is out of range", shorten(s))
        } else {
            format!("{column}: {} is not an integer", shorten(s))
        }
    })?;
    if v <= 0 {
        return Err(format!("{column}: {v} is not > 0"));
    }
    i32::try_from(v).map_err(|_| format!("{column}: {v} is larger than {}", i32::MAX))
}

fn parse_text<'a>(column: &str, s: &'a str, max: usize) -> Result<&'a str, String> {
    if s.contains('\0') {
        return Err(format!("{column}: contains a NUL character"));
    }
    // Counting stops just past the limit: a 10 MB field costs nothing more.
    let n = s.chars().take(max + 1).count();
    if n > max {
        return Err(format!("{column}: longer than {max} characters"));
    }
    Ok(s)
}

fn parse_event_type(s: &str) -> Result<&'static str, String> {
    if s.eq_ignore_ascii_case("view") {
        Ok("view")
    } else if s.eq_ignore_ascii_case("purchase") {
        Ok("purchase")
    } else if s.is_empty() {
        Err("event_type: missing".into())
    } else {
        Err(format!("event_type: {} is not view or purchase", shorten(s)))
    }
}

/// A price in cents: digits, optionally `.` and decimals; decimals past the
/// second must be zeros.
pub fn parse_price(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Err("product_price: missing".into());
    }
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (unsigned, negative) = match s.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if !digits(int) || (unsigned.contains('.') && !digits(frac)) {
        return Err(format!("product_price: {} is not a decimal number", shorten(s)));
    }
    if negative {
        return Err(format!("product_price: {} is negative", shorten(s)));
    }
    if frac.len() > 2 && frac[2..].bytes().any(|b| b != b'0') {
        return Err(format!("product_price: {} has more than 2 decimal places", shorten(s)));
    }
    let int = int.trim_start_matches('0');
    if int.len() > 8 {
        return Err(format!("product_price: {} is larger than 99999999.99", shorten(s)));
    }
    let whole: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| format!("product_price: {} is not a decimal number", shorten(s)))?
    };
    let cents = match frac.as_bytes() {
        [] => 0,
        [a] => i64::from(a - b'0') * 10,
        [a, b, ..] => i64::from(a - b'0') * 10 + i64::from(b - b'0'),
    };
    let total = whole * 100 + cents;
    debug_assert!(total <= MAX_PRICE_CENTS);
    Ok(total)
}

/// An instant in microseconds since the Unix epoch, UTC.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Err("event_time: missing".into());
    }
    let parsed = DateTime::parse_from_rfc3339(s).map(|t| t.naive_utc()).or_else(|_| {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
    });
    let t = parsed.map_err(|_| format!("event_time: {} is not a timestamp", shorten(s)))?;
    if t.nanosecond() % 1_000 != 0 {
        return Err(format!("event_time: {} is more precise than microseconds", shorten(s)));
    }
    Ok(t.and_utc().timestamp_micros())
}

fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("'{cut}…'")
    } else {
        format!("'{cut}'")
    }
}

/// Column builders of one file's frame: text goes straight into Polars'
/// buffers, one copy per field and no allocation per row.
struct Columns {
    file: Vec<u32>,
    line: Vec<u64>,
    user_id: Vec<i32>,
    user_name: StringChunkedBuilder,
    user_email: StringChunkedBuilder,
    event_type: Vec<&'static str>,
    product_id: Vec<i32>,
    product_name: StringChunkedBuilder,
    product_category: StringChunkedBuilder,
    price: Vec<i64>,
    time: Vec<i64>,
}

impl Columns {
    fn new() -> Self {
        let text = |name: &str| StringChunkedBuilder::new(name.into(), 0);
        Columns {
            file: Vec::new(),
            line: Vec::new(),
            user_id: Vec::new(),
            user_name: text("user_name"),
            user_email: text("user_email"),
            event_type: Vec::new(),
            product_id: Vec::new(),
            product_name: text("product_name"),
            product_category: text("product_category"),
            price: Vec::new(),
            time: Vec::new(),
        }
    }

    fn push(&mut self, file: u32, line: u64, row: &Row<'_>) {
        self.file.push(file);
        self.line.push(line);
        self.user_id.push(row.user_id);
        self.user_name.append_value(row.user_name);
        self.user_email.append_value(row.user_email);
        self.event_type.push(row.event_type);
        self.product_id.push(row.product_id);
        self.product_name.append_value(row.product_name);
        self.product_category.append_value(row.product_category);
        self.price.push(row.price_cents);
        self.time.push(row.event_time_micros);
    }

    fn finish(self) -> DataFrame {
        let height = self.file.len();
        let columns = vec![
            Column::new(FILE_COLUMN.into(), self.file),
            Column::new(LINE_COLUMN.into(), self.line),
            Column::new("user_id".into(), self.user_id),
            self.user_name.finish().into_column(),
            self.user_email.finish().into_column(),
            Column::new("event_type".into(), self.event_type),
            Column::new("product_id".into(), self.product_id),
            self.product_name.finish().into_column(),
            self.product_category.finish().into_column(),
            Column::new("product_price".into(), self.price),
            Int64Chunked::from_vec("event_time".into(), self.time)
                .into_datetime(TimeUnit::Microseconds, None)
                .into_column(),
        ];
        DataFrame::new(height, columns).expect("the columns are built with equal lengths")
    }
}

/// An empty frame of the batch schema.
pub fn empty_frame() -> DataFrame {
    Columns::new().finish()
}

/// The rows of a batch after deduplication, and how many rows of each file
/// lost to a later row with the same key.
#[derive(Debug)]
pub struct Deduped {
    pub frame: DataFrame,
    pub duplicates: Vec<u64>,
}

/// Concatenates the files' frames in file order and keeps, for each
/// `(user_id, event_time)`, the last row in (file order, line order).
pub fn dedup(frames: Vec<DataFrame>, files: usize) -> PolarsResult<Deduped> {
    let mut all = empty_frame();
    for frame in &frames {
        all.vstack_mut(frame)?;
    }
    let before = rows_per_file(&all, files)?;
    let subset = ["user_id".to_owned(), "event_time".to_owned()];
    let mut frame = all.unique_stable(Some(&subset), UniqueKeepStrategy::Last, None)?;
    frame.rechunk_mut();
    let after = rows_per_file(&frame, files)?;
    let duplicates = before.iter().zip(&after).map(|(b, a)| b - a).collect();
    Ok(Deduped { frame, duplicates })
}

fn rows_per_file(frame: &DataFrame, files: usize) -> PolarsResult<Vec<u64>> {
    let mut counts = vec![0u64; files];
    for i in frame.column(FILE_COLUMN)?.u32()?.into_no_null_iter() {
        if let Some(c) = counts.get_mut(i as usize) {
            *c += 1;
        }
    }
    Ok(counts)
}

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

/// Opens a planned file without following a symbolic link and without
/// blocking on a FIFO; only a regular file is read.
pub fn open_source(f: &SourceFile) -> Result<(FileId, std::fs::File), (FileId, FileOutcome)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let quarantine = |reason: String| (f.id.clone(), FileOutcome::Quarantine { reason });
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&f.path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err((f.id.clone(), FileOutcome::Missing)),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(quarantine("not a regular file: a symbolic link, never followed".into()))
        }
        Err(e) => return Err(quarantine(format!("unreadable: {e}"))),
    };
    match file.metadata() {
        Ok(meta) if meta.file_type().is_file() => Ok((crate::watch::file_id(&f.id.name, &meta), file)),
        Ok(_) => Err(quarantine("not a regular file".into())),
        Err(e) => Err(quarantine(format!("unreadable: {e}"))),
    }
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
        let mut reader = match FileReader::open(std::io::BufReader::with_capacity(256 * 1024, file), index as u32) {
            Opened::Rows(reader) => reader,
            Opened::Quarantine { reason } => {
                out.files.push(FileSummary { id, outcome: FileOutcome::Quarantine { reason } });
                continue;
            }
        };
        out.files.push(FileSummary { id, outcome: FileOutcome::Rows { rows_read: 0, rejected: 0, duplicates: 0 } });
        while let Some(piece) = reader.next_piece(chunk_bytes.saturating_sub(pending_bytes)) {
            if let Some(FileSummary { outcome: FileOutcome::Rows { rows_read, rejected: bad, .. }, .. }) =
                out.files.last_mut()
            {
                *rows_read += piece.rows_read;
                *bad += piece.rejected.len() as u64;
            }
            pending_bytes += piece.bytes;
            frames.push(piece.frame);
            rejected.extend(piece.rejected);
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

/// Typed access to the rows of a deduplicated frame, for the sink.
#[derive(Debug)]
pub struct EventView<'a> {
    file: &'a UInt32Chunked,
    user_id: &'a Int32Chunked,
    user_name: &'a StringChunked,
    user_email: &'a StringChunked,
    event_type: &'a StringChunked,
    product_id: &'a Int32Chunked,
    product_name: &'a StringChunked,
    product_category: &'a StringChunked,
    price: &'a Int64Chunked,
    time: &'a Int64Chunked,
}

/// One row of an [`EventView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow<'a> {
    pub file_index: u32,
    pub user_id: i32,
    pub user_name: &'a str,
    pub user_email: &'a str,
    pub event_type: &'a str,
    pub product_id: i32,
    pub product_name: &'a str,
    pub product_category: &'a str,
    pub price_cents: i64,
    pub event_time_micros: i64,
}

impl<'a> EventView<'a> {
    pub fn new(frame: &'a DataFrame) -> PolarsResult<Self> {
        Ok(EventView {
            file: frame.column(FILE_COLUMN)?.u32()?,
            user_id: frame.column("user_id")?.i32()?,
            user_name: frame.column("user_name")?.str()?,
            user_email: frame.column("user_email")?.str()?,
            event_type: frame.column("event_type")?.str()?,
            product_id: frame.column("product_id")?.i32()?,
            product_name: frame.column("product_name")?.str()?,
            product_category: frame.column("product_category")?.str()?,
            price: frame.column("product_price")?.i64()?,
            time: frame.column("event_time")?.datetime()?.physical(),
        })
    }

    pub fn len(&self) -> usize {
        self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Row `i`; `None` past the end (the frame has no nulls).
    pub fn row(&self, i: usize) -> Option<EventRow<'a>> {
        Some(EventRow {
            file_index: self.file.get(i)?,
            user_id: self.user_id.get(i)?,
            user_name: self.user_name.get(i)?,
            user_email: self.user_email.get(i)?,
            event_type: self.event_type.get(i)?,
            product_id: self.product_id.get(i)?,
            product_name: self.product_name.get(i)?,
            product_category: self.product_category.get(i)?,
            price_cents: self.price.get(i)?,
            event_time_micros: self.time.get(i)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const H: &str =
        "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time\n";

    fn rows(read: FileRead) -> (DataFrame, u64, Vec<Rejected>) {
        match read {
            FileRead::Rows { frame, rows_read, rejected } => (frame, rows_read, rejected),
            other => panic!("expected rows, got {other:?}"),
        }
    }

    fn quarantined(read: FileRead) -> String {
        match read {
            FileRead::Quarantine { reason } => reason,
            other => panic!("expected quarantine, got {other:?}"),
        }
    }

    #[test]
    fn frames_have_exactly_the_explicit_schema() {
        let csv = format!("{H}1,Ann,a@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00.000001Z\n");
        let (frame, n, rejected) = rows(parse(csv.as_bytes(), 0));
        assert_eq!((n, rejected.len(), frame.height()), (1, 0, 1));
        assert_eq!(*frame.schema().as_ref(), schema());
        assert_eq!(*empty_frame().schema().as_ref(), schema());
    }

    #[test]
    fn bad_rows_are_rejected_with_line_raw_text_and_reason_and_good_rows_go_on() {
        let csv = format!(
            "{H}1,Ann,a@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z\n\
             x,Bob,b@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z\n\
             3,\"Multi\nLine\",c@x.com,purchase,2,Mug,Home,3.5,2026-01-01 00:00:01\n\
             4,Dan,d@x.com,click,2,Mug,Home,3.50,2026-01-01T00:00:00Z\n\
             5,Eve,e@x.com,view,2,Mug,Home\n"
        );
        let (frame, n, rejected) = rows(parse(csv.as_bytes(), 3));
        assert_eq!(n, 5);
        assert_eq!(frame.height(), 2);
        let got: Vec<(u64, &str)> = rejected.iter().map(|r| (r.line, r.reason.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (3, "user_id: 'x' is not an integer"),
                (6, "event_type: 'click' is not view or purchase"),
                (7, "expected 9 fields, found 7"),
            ]
        );
        assert_eq!(rejected[0].raw, "x,Bob,b@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z");
        assert!(rejected.iter().all(|r| r.file_index == 3));
        let lines: Vec<u64> =
            frame.column(LINE_COLUMN).and_then(|c| Ok(c.u64()?.into_no_null_iter().collect())).unwrap_or_default();
        assert_eq!(lines, vec![2, 4]);
    }

    #[test]
    fn unreadable_files_are_quarantined_with_a_reason() {
        assert!(quarantined(parse(b"", 0)).contains("empty"));
        assert!(quarantined(parse(b"a,b,c\n1,2,3\n", 0)).contains("wrong header"));
        assert!(quarantined(parse(b"user_id,caf\xe9\n", 0)).contains("not UTF-8: the header"));
        assert!(quarantined(parse(b"\n\n", 0)).contains("no header row"));
    }

    #[test]
    fn a_row_that_is_not_utf8_is_rejected_and_the_rest_goes_on() {
        let mut latin1 = H.as_bytes().to_vec();
        latin1.extend_from_slice(b"1,Jos\xe9,j@x.com,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z\n");
        latin1.extend_from_slice(b"2,Ann,a@x.com,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z\n");
        let (frame, n, rejected) = rows(parse(&latin1, 0));
        assert_eq!((n, frame.height()), (2, 1));
        assert_eq!(rejected[0].reason, "not UTF-8: user_name has an invalid byte at offset 3");
        assert_eq!(rejected[0].raw, "1,Jos\u{fffd},j@x.com,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z");
    }

    #[test]
    fn an_over_long_record_rejects_the_rest_of_the_file_only() {
        let csv = format!(
            "{H}1,Ann,a@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z\n2,{},b@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z\n",
            "x".repeat(100_000)
        );
        let Opened::Rows(mut reader) = FileReader::open_with_limit(csv.as_bytes(), 0, 50_000) else {
            panic!("the header is fine")
        };
        let piece = reader.next_piece(u64::MAX).expect("one piece");
        assert_eq!(piece.frame.height(), 1, "the row before the long one is kept");
        assert_eq!(piece.rejected.len(), 1);
        assert_eq!(piece.rejected[0].line, 3);
        assert!(piece.rejected[0].reason.contains("a record is longer than 50000 bytes"), "{:?}", piece.rejected);
        assert!(reader.next_piece(u64::MAX).is_none());
    }

    #[test]
    fn reading_in_pieces_gives_the_same_rows_as_reading_at_once() {
        let body: String = (1..=200)
            .map(|i| {
                if i % 7 == 0 {
                    format!("{i},bad\n")
                } else {
                    format!("{i},\"N, {i}\",e@x,view,{i},P,C,1.0{},2026-01-01T00:00:{:02}Z\n", i % 10, i % 60)
                }
            })
            .collect();
        let csv = format!("{H}{body}");
        let (whole, n, bad) = rows(parse(csv.as_bytes(), 2));
        let Opened::Rows(mut reader) = FileReader::open(csv.as_bytes(), 2) else { panic!("the header is fine") };
        let mut frame = empty_frame();
        let (mut pieces, mut rows_read, mut rejected, mut bytes) = (0, 0, Vec::new(), 0);
        while let Some(p) = reader.next_piece(300) {
            pieces += 1;
            rows_read += p.rows_read;
            bytes += p.bytes;
            rejected.extend(p.rejected);
            frame.vstack_mut(&p.frame).expect("same schema");
        }
        assert!(pieces > 10, "{pieces} pieces");
        assert_eq!((rows_read, n, bytes), (200, 200, csv.len() as u64 - H.len() as u64));
        assert_eq!(rejected, bad);
        assert!(frame.equals(&whole));
    }

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
    fn links_fifos_and_folders_are_never_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target.csv");
        std::fs::write(&target, H).expect("write");
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let folder = dir.path().join("folder.csv");
        std::fs::create_dir(&folder).expect("mkdir");
        let fifo = dir.path().join("fifo.csv");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()));
        let meta = std::fs::metadata(&target).expect("stat");
        for (path, want) in [(link, "symbolic link"), (folder, "not a regular file"), (fifo, "not a regular file")] {
            let source = SourceFile { id: crate::watch::file_id("x.csv", &meta), path };
            match open_source(&source) {
                Err((_, FileOutcome::Quarantine { reason })) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        let gone = SourceFile { id: crate::watch::file_id("x.csv", &meta), path: dir.path().join("gone.csv") };
        assert!(matches!(open_source(&gone), Err((_, FileOutcome::Missing))));
    }

    #[test]
    fn bom_crlf_and_header_only_files_are_fine() {
        let csv =
            format!("\u{feff}{}1,Ann,a@x.com,VIEW,2,Mug,Home,3.50,2026-01-01T00:00:00Z\r\n", H.replace('\n', "\r\n"));
        let (frame, _, rejected) = rows(parse(csv.as_bytes(), 0));
        assert!(rejected.is_empty(), "{rejected:?}");
        let view = EventView::new(&frame).expect("batch schema");
        assert_eq!(view.row(0).map(|r| r.event_type), Some("view"));
        let (frame, n, _) = rows(parse(H.as_bytes(), 0));
        assert_eq!((frame.height(), n), (0, 0));
    }

    #[test]
    fn prices_are_exact_cents() {
        assert_eq!(parse_price("12"), Ok(1200));
        assert_eq!(parse_price("12.5"), Ok(1250));
        assert_eq!(parse_price("0.07"), Ok(7));
        assert_eq!(parse_price("12.500"), Ok(1250));
        assert_eq!(parse_price("99999999.99"), Ok(MAX_PRICE_CENTS));
        for bad in ["", "-1.00", "1e3", "1.505", ".5", "5.", "100000000.00", "1,5", "+1", "abc"] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_utc_microseconds() {
        let z = parse_time("2026-01-01T00:00:00.000001Z");
        assert_eq!(z, Ok(1_767_225_600_000_001));
        assert_eq!(parse_time("2026-01-01 00:00:00.000001"), z);
        assert_eq!(parse_time("2026-01-01T01:00:00.000001+01:00"), z);
        assert!(parse_time("2026-01-01T00:00:00.0000001Z").is_err());
        assert!(parse_time("2026-13-45T99:99:99Z").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn ids_and_text_follow_the_contract() {
        assert_eq!(parse_id("user_id", "7"), Ok(7));
        assert!(parse_id("user_id", "0").is_err());
        assert!(parse_id("user_id", "-3").is_err());
        assert_eq!(parse_id("user_id", "2147483648"), Err("user_id: 2147483648 is larger than 2147483647".into()));
        assert_eq!(
            parse_id("user_id", "99999999999999999999"),
            Err("user_id: '99999999999999999999' is out of range".into())
        );
        assert!(parse_text("user_name", &"é".repeat(100), 100).is_ok());
        assert!(parse_text("user_name", &"é".repeat(101), 100).is_err());
        assert!(parse_text("user_name", "a\0b", 100).is_err());
    }

    /// The fuzz target (run longer with PROPTEST_CASES=100000): no input
    /// makes the reader panic, and every record is either kept or rejected.
    fn check_no_panic_and_accounting(bytes: &[u8]) {
        if let FileRead::Rows { frame, rows_read, rejected } = parse(bytes, 0) {
            assert_eq!(frame.height() as u64 + rejected.len() as u64, rows_read);
            assert!(rejected.iter().all(|r| r.raw.len() <= MAX_RAW_LINE + 3 && !r.reason.is_empty()));
            assert!(EventView::new(&frame).is_ok());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]

        #[test]
        fn fuzz_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            check_no_panic_and_accounting(&bytes);
            let mut with_header = H.as_bytes().to_vec();
            with_header.extend_from_slice(&bytes);
            check_no_panic_and_accounting(&with_header);
        }

        #[test]
        fn fuzz_contract_shaped_rows(lines in proptest::collection::vec("[-0-9a-zA-Z.,:\" \r\t+éZT\u{0}]{0,160}", 0..40)) {
            let text = format!("{H}{}", lines.join("\n"));
            check_no_panic_and_accounting(text.as_bytes());
        }
    }

    #[test]
    fn dedup_keeps_the_last_row_in_file_then_line_order() -> PolarsResult<()> {
        let a = format!("{H}1,A,a,view,1,P,C,1.00,2026-01-01T00:00:00Z\n1,A,a,view,2,P,C,2.00,2026-01-01T00:00:00Z\n2,B,b,view,1,P,C,1.00,2026-01-01T00:00:00Z\n");
        let b = format!("{H}1,A,a,purchase,3,P,C,3.00,2026-01-01T00:00:00Z\n");
        let (fa, _, _) = rows(parse(a.as_bytes(), 0));
        let (fb, _, _) = rows(parse(b.as_bytes(), 1));
        let d = dedup(vec![fa, fb], 2)?;
        assert_eq!(d.duplicates, vec![2, 0]);
        let view = EventView::new(&d.frame)?;
        let got: Vec<(i32, i32, i64)> =
            (0..view.len()).filter_map(|i| view.row(i)).map(|r| (r.user_id, r.product_id, r.price_cents)).collect();
        assert_eq!(got, vec![(2, 1, 100), (1, 3, 300)]);
        Ok(())
    }
}
