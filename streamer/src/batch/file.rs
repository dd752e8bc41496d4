//! One file of a batch: opened without following links or blocking
//! ([`open_source`]), its header checked, then its records read part by part
//! ([`ContractReader`]), each checked against the contract by
//! [`contract::validate`]. Good rows go into a [`Part`]'s frame; a row that
//! breaks the contract becomes a [`Rejected`] with its physical line, raw
//! text and reason, and the rest of the file goes on.
//!
//! Records are tokenised by the `csv` crate rather than Polars' CSV reader:
//! the contract asks for every bad row to be rejected with its file, physical
//! line, raw text and reason while the good rows go on, and Polars' reader
//! fails a whole file on one row with too many fields, pads short rows with
//! nulls without saying so, and reports no line numbers
//! (pola-rs/polars#10585, #10660).
//!
//! A UTF-8 BOM and CRLF line ends are accepted. Columns are found by name
//! ([`Layout`]): the contract's nine in any order, matched without regard to
//! case or surrounding spaces; a column the contract does not know is kept
//! with its row as JSON (`events._rescued`); a missing or repeated column
//! quarantines the file. gzip and zstd files are read through
//! [`super::decode`].

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use contract::write::push_field;
use contract::COLUMNS;
use polars::prelude::DataFrame;

use super::frame::{empty_frame, Columns};
use super::FileOutcome;
use crate::checkpoint::FileId;

/// The longest raw line kept with a rejected row; longer ones are cut.
pub const MAX_RAW_LINE: usize = 4_096;

/// The longest record read: past it the rest of the file is rejected, so a
/// file with no line ends is never held whole in memory.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

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

impl Rejected {
    /// What it holds in memory, for the chunk budget.
    pub fn size(&self) -> u64 {
        (self.raw.len() + self.reason.len() + std::mem::size_of::<Rejected>()) as u64
    }
}

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

/// Where the contract's columns are in a file, from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The file's column of each contract column, in contract order.
    index: [usize; COLUMNS.len()],
    /// Columns the contract does not know: (file column, name).
    extras: Vec<(usize, String)>,
    /// Fields a record must have.
    width: usize,
}

impl Layout {
    /// Reads a header; `Err` says why the file cannot be read by it.
    pub fn from_header(fields: &[&str]) -> Result<Layout, String> {
        let mut index = [usize::MAX; COLUMNS.len()];
        let mut extras: Vec<(usize, String)> = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let name = field.trim();
            match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
                Some(c) if index[c] != usize::MAX => {
                    return Err(format!("wrong header: column {} appears twice", COLUMNS[c]));
                }
                Some(c) => index[c] = i,
                None => {
                    let name = if name.is_empty() { format!("column_{}", i + 1) } else { name.replace('\0', "\\0") };
                    if extras.iter().any(|(_, n)| *n == name) {
                        return Err(format!("wrong header: column {} appears twice", shorten_name(&name)));
                    }
                    extras.push((i, name));
                }
            }
        }
        let missing: Vec<&str> =
            COLUMNS.iter().zip(&index).filter(|(_, i)| **i == usize::MAX).map(|(c, _)| *c).collect();
        if !missing.is_empty() {
            let found = fields.join(",").replace('\0', "\\0").chars().take(200).collect::<String>();
            return Err(format!(
                "wrong header: missing column{} {} (expected `{}` in any order, found `{found}`)",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                COLUMNS.join(",")
            ));
        }
        Ok(Layout { index, extras, width: fields.len() })
    }

    /// The contract's own header: every column in place, nothing extra.
    pub fn contract() -> Layout {
        Layout { index: std::array::from_fn(|i| i), extras: Vec::new(), width: COLUMNS.len() }
    }

    /// The record's fields in contract order, and what is left over as a
    /// JSON object (`None` without extra columns). A NUL is spelled `\0`
    /// (PostgreSQL's `jsonb` cannot hold `\u0000`).
    fn pick<'r>(&self, record: &'r csv::StringRecord) -> ([&'r str; COLUMNS.len()], Option<String>) {
        let fields = std::array::from_fn(|i| &record[self.index[i]]);
        if self.extras.is_empty() {
            return (fields, None);
        }
        let mut object = serde_json::Map::with_capacity(self.extras.len());
        for (i, name) in &self.extras {
            let value = &record[*i];
            let value = if value.contains('\0') { value.replace('\0', "\\0") } else { value.to_owned() };
            object.insert(name.clone(), serde_json::Value::String(value));
        }
        (fields, Some(serde_json::Value::Object(object).to_string()))
    }
}

fn shorten_name(name: &str) -> String {
    name.chars().take(100).collect()
}

/// The rows of a part of one file.
#[derive(Debug)]
pub struct Part {
    pub frame: DataFrame,
    pub rows_read: u64,
    pub rejected: Vec<Rejected>,
    /// Bytes of the file this part covers.
    pub bytes: u64,
}

/// One file read against the contract, part by part: memory is bounded by
/// the part size, not by the file.
#[derive(Debug)]
pub struct ContractReader<R> {
    csv: csv::Reader<Bounded<R>>,
    since_record: Arc<AtomicU64>,
    file_index: u32,
    layout: Layout,
    record: csv::ByteRecord,
    finished: bool,
    /// Why the file's archive cannot be read, once its decoder failed.
    corrupt: Option<String>,
}

impl<R: Read> ContractReader<R> {
    /// Reads and checks the header of `inner`, file `file_index` of its
    /// batch; `Err` holds why the file is to be quarantined.
    pub fn open(inner: R, file_index: u32) -> Result<Self, String> {
        Self::open_with_limit(inner, file_index, MAX_RECORD_BYTES)
    }

    fn open_with_limit(inner: R, file_index: u32, limit: u64) -> Result<Self, String> {
        let since_record = Arc::new(AtomicU64::new(0));
        let bounded = Bounded { inner, since_record: since_record.clone(), limit };
        let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bounded);
        let mut record = csv::ByteRecord::new();
        let layout = match csv.read_byte_record(&mut record) {
            Ok(true) => {
                let mut fields: Vec<&[u8]> = record.iter().collect();
                if let Some(first) = fields.first_mut() {
                    *first = first.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first);
                }
                let Ok(names) = fields.iter().map(|f| std::str::from_utf8(f)).collect::<Result<Vec<&str>, _>>() else {
                    return Err("not UTF-8: the header has an invalid byte".into());
                };
                Layout::from_header(&names)?
            }
            Ok(false) if csv.position().byte() == 0 => return Err("empty file: no header".into()),
            Ok(false) => return Err("no header row".into()),
            Err(e) => return Err(format!("unreadable CSV header: {}", io_reason(&e))),
        };
        Ok(ContractReader { csv, since_record, file_index, layout, record, finished: false, corrupt: None })
    }

    /// Reads rows until `max_bytes` are used — the input consumed plus what
    /// the rejected rows hold in memory ([`Rejected::size`]) — or the file
    /// ends; `None` once it has ended.
    pub fn next_part(&mut self, max_bytes: u64) -> Option<Part> {
        if self.finished {
            return None;
        }
        let start = self.csv.position().byte();
        let mut columns = Columns::new();
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut rejected_bytes = 0u64;
        let mut rows_read = 0u64;
        while self.csv.position().byte() - start + rejected_bytes < max_bytes.max(1) {
            if let Some(last) = rejected.last() {
                rejected_bytes += last.size();
            }
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
                            let checked = line_fits(line).and_then(|()| field_count(record.len(), self.layout.width));
                            let checked = checked.and_then(|()| {
                                let (fields, rescued) = self.layout.pick(&record);
                                contract::validate(fields).map(|row| (row, rescued))
                            });
                            match checked {
                                Ok((row, rescued)) => columns.push(self.file_index, line, &row, rescued.as_deref()),
                                Err(reason) => rejected.push(reject(raw_text(record.as_byte_record()), reason)),
                            }
                            self.record = record.into_byte_record();
                        }
                        Err(e) => {
                            let bad = e.utf8_error();
                            let column = self.layout.column_name(bad.field());
                            let reason =
                                format!("not UTF-8: {column} has an invalid byte at offset {}", bad.valid_up_to());
                            self.record = e.into_byte_record();
                            rejected.push(reject(raw_text(&self.record), reason));
                        }
                    }
                }
                Err(e) => {
                    // A damaged archive: the whole file is quarantined.
                    if let csv::ErrorKind::Io(io) = e.kind() {
                        if let Some(reason) = super::decode::corrupt(io) {
                            self.corrupt = Some(reason);
                            self.finished = true;
                            break;
                        }
                    }
                    // An I/O error or an over-long record: keep the rows
                    // read so far and reject the rest of the file.
                    let reason = format!("unreadable CSV from here on: {e}");
                    rows_read += 1;
                    rejected.push(Rejected { file_index: self.file_index, line, raw: String::new(), reason });
                    self.finished = true;
                    break;
                }
            }
        }
        let bytes = self.csv.position().byte() - start;
        Some(Part { frame: columns.finish(), rows_read, rejected, bytes })
    }
}

impl<R> ContractReader<R> {
    /// Why the file is to be quarantined after all: its archive turned out
    /// to be damaged part way (what was read of it is not to be kept).
    pub fn corrupt(&self) -> Option<&str> {
        self.corrupt.as_deref()
    }
}

impl Layout {
    /// The name of the file's column `i`, for a reason.
    fn column_name(&self, i: usize) -> String {
        if let Some(c) = self.index.iter().position(|&f| f == i) {
            return COLUMNS[c].to_owned();
        }
        match self.extras.iter().find(|(f, _)| *f == i) {
            Some((_, name)) => shorten_name(name),
            None => "an extra field".to_owned(),
        }
    }
}

/// The reason for a record with another number of fields than the header
/// (the contract's nine, unless the header has more).
fn field_count(found: usize, width: usize) -> Result<(), String> {
    if found == width {
        Ok(())
    } else {
        Err(format!("expected {width} fields, found {found}"))
    }
}

/// A CSV error as a reason: a damaged archive's own words.
fn io_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => super::decode::corrupt(io).unwrap_or_else(|| e.to_string()),
        _ => e.to_string(),
    }
}

/// Rows past this line are rejected: `events.src_line` is an `INTEGER`.
pub const MAX_LINE: u64 = i32::MAX as u64;

fn line_fits(line: u64) -> Result<(), String> {
    if line <= MAX_LINE {
        Ok(())
    } else {
        Err(format!("line {line} is past line {MAX_LINE}, the last a row's position can hold"))
    }
}

/// Reads the whole contents of one file (decompressed if need be) as one
/// part; `Err` holds why the file is to be quarantined.
pub fn read_whole(bytes: &[u8], file_index: u32) -> Result<Part, String> {
    let (_, decoded) = super::decode::decoded(bytes, 64 * 1024).map_err(|e| format!("unreadable: {e}"))?;
    let mut reader = ContractReader::open(decoded, file_index)?;
    let mut out = Part { frame: empty_frame(), rows_read: 0, rejected: Vec::new(), bytes: 0 };
    while let Some(part) = reader.next_part(u64::MAX) {
        if let Some(reason) = reader.corrupt() {
            return Err(reason.to_owned());
        }
        // Same schema on both sides: vstack cannot fail.
        let _ = out.frame.vstack_mut(&part.frame);
        out.rows_read += part.rows_read;
        out.bytes += part.bytes;
        out.rejected.extend(part.rejected);
    }
    Ok(out)
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
    // Invalid UTF-8 grows in the text (a byte becomes U+FFFD, three bytes),
    // and so does a NUL (`\0`): the text is cut again, on a character.
    let mut text = String::from_utf8_lossy(&out).replace('\0', "\\0");
    if text.len() > MAX_RAW_LINE {
        let cut = (0..=MAX_RAW_LINE).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
    }
    text
}

/// A file as it was opened: its identity taken again from the open file,
/// and its inode (to tell a rewrite in place from a new file renamed over it).
#[derive(Debug)]
pub struct Opened {
    pub id: FileId,
    pub inode: (u64, u64),
    pub file: std::fs::File,
}

/// Opens a planned file without following a symbolic link and without
/// blocking on a FIFO; only a regular file is read.
pub fn open_source(f: &SourceFile) -> Result<Opened, (FileId, FileOutcome)> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let quarantine = |reason: String| (f.id.clone(), FileOutcome::Quarantine { reason });
    let file = if f.id.name.contains('/') {
        open_in_subfolder(f)
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&f.path)
    };
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err((f.id.clone(), FileOutcome::Missing)),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(quarantine("not a regular file: a symbolic link, never followed".into()))
        }
        Err(e) => return Err(quarantine(format!("unreadable: {e}"))),
    };
    match file.metadata() {
        Ok(meta) if meta.file_type().is_file() => {
            Ok(Opened { id: crate::watch::file_id(&f.id.name, &meta), inode: (meta.dev(), meta.ino()), file })
        }
        Ok(_) => Err(quarantine("not a regular file".into())),
        Err(e) => Err(quarantine(format!("unreadable: {e}"))),
    }
}

/// A file of a subfolder: every folder on its way opened without
/// following a link (a folder swapped for a link after the listing is
/// refused), then the file itself as [`open_source`] opens one.
fn open_in_subfolder(f: &SourceFile) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let depth = f.id.name.matches('/').count() + 1;
    let root = f.path.ancestors().nth(depth).unwrap_or(std::path::Path::new("."));
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(root, flags, Mode::empty())?;
    let (dir, base) = crate::dispose::parent_of(&root, &f.id.name)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    Ok(std::fs::File::from(rustix::fs::openat(&dir, base, flags, Mode::empty())?))
}

#[cfg(test)]
mod tests {
    use super::super::frame::{schema, EventView, LINE_COLUMN};
    use super::*;

    const H: &str =
        "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time\n";

    fn rows(read: Result<Part, String>) -> (DataFrame, u64, Vec<Rejected>) {
        match read {
            Ok(p) => (p.frame, p.rows_read, p.rejected),
            Err(reason) => panic!("expected rows, got a quarantine: {reason}"),
        }
    }

    fn quarantined(read: Result<Part, String>) -> String {
        match read {
            Err(reason) => reason,
            Ok(p) => panic!("expected a quarantine, got {} rows", p.rows_read),
        }
    }

    #[test]
    fn frames_have_exactly_the_explicit_schema() {
        let csv = format!("{H}1,Ann,a@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00.000001Z\n");
        let (frame, n, rejected) = rows(read_whole(csv.as_bytes(), 0));
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
        let (frame, n, rejected) = rows(read_whole(csv.as_bytes(), 3));
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
        assert!(quarantined(read_whole(b"", 0)).contains("empty"));
        assert!(quarantined(read_whole(b"a,b,c\n1,2,3\n", 0)).contains("wrong header"));
        assert!(quarantined(read_whole(b"user_id,caf\xe9\n", 0)).contains("not UTF-8: the header"));
        assert!(quarantined(read_whole(b"\n\n", 0)).contains("no header row"));
    }

    #[test]
    fn a_row_that_is_not_utf8_is_rejected_and_the_rest_goes_on() {
        let mut latin1 = H.as_bytes().to_vec();
        latin1.extend_from_slice(b"1,Jos\xe9,j@x.com,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z\n");
        latin1.extend_from_slice(b"2,Ann,a@x.com,view,2,Mug,Home,1.00,2026-01-01T00:00:00Z\n");
        let (frame, n, rejected) = rows(read_whole(&latin1, 0));
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
        let mut reader = ContractReader::open_with_limit(csv.as_bytes(), 0, 50_000).expect("the header is fine");
        let part = reader.next_part(u64::MAX).expect("one part");
        assert_eq!(part.frame.height(), 1, "the row before the long one is kept");
        assert_eq!(part.rejected.len(), 1);
        assert_eq!(part.rejected[0].line, 3);
        assert!(part.rejected[0].reason.contains("a record is longer than 50000 bytes"), "{:?}", part.rejected);
        assert!(reader.next_part(u64::MAX).is_none());
    }

    #[test]
    fn reading_in_parts_gives_the_same_rows_as_reading_at_once() {
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
        let (whole, n, bad) = rows(read_whole(csv.as_bytes(), 2));
        let mut reader = ContractReader::open(csv.as_bytes(), 2).expect("the header is fine");
        let mut frame = empty_frame();
        let (mut parts, mut rows_read, mut rejected, mut bytes) = (0, 0, Vec::new(), 0);
        while let Some(p) = reader.next_part(300) {
            parts += 1;
            rows_read += p.rows_read;
            bytes += p.bytes;
            rejected.extend(p.rejected);
            frame.vstack_mut(&p.frame).expect("same schema");
        }
        assert!(parts > 10, "{parts} parts");
        assert_eq!((rows_read, n, bytes), (200, 200, csv.len() as u64 - H.len() as u64));
        assert_eq!(rejected, bad);
        assert!(frame.equals_missing(&whole));
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
                Err(other) => panic!("{other:?}"),
                Ok(opened) => panic!("opened {:?}", opened.id),
            }
        }
        let gone = SourceFile { id: crate::watch::file_id("x.csv", &meta), path: dir.path().join("gone.csv") };
        assert!(matches!(open_source(&gone), Err((_, FileOutcome::Missing))));
    }

    #[test]
    fn an_unreadable_tail_counts_as_one_row_read_and_one_rejected() {
        let csv = format!("{H}1,Ann,a@x.com,view,2,Mug,Home,3.50,2026-01-01T00:00:00Z\n2,\"{}", "x".repeat(60_000));
        let mut reader = ContractReader::open_with_limit(csv.as_bytes(), 0, 50_000).expect("the header is fine");
        let part = reader.next_part(u64::MAX).expect("one part");
        assert_eq!((part.frame.height(), part.rejected.len(), part.rows_read), (1, 1, 2));
    }

    #[test]
    fn bom_crlf_and_header_only_files_are_fine() {
        let csv =
            format!("\u{feff}{}1,Ann,a@x.com,VIEW,2,Mug,Home,3.50,2026-01-01T00:00:00Z\r\n", H.replace('\n', "\r\n"));
        let (frame, _, rejected) = rows(read_whole(csv.as_bytes(), 0));
        assert!(rejected.is_empty(), "{rejected:?}");
        let view = EventView::new(&frame).expect("batch schema");
        assert_eq!(view.row(0).map(|(_, _, r)| r.event_type), Some(contract::EventType::View));
        let (frame, n, _) = rows(read_whole(H.as_bytes(), 0));
        assert_eq!((frame.height(), n), (0, 0));
    }

    #[test]
    fn a_rejected_record_of_invalid_utf8_or_nuls_is_cut_at_the_cap_as_text() {
        for fill in [&b"\xff"[..], b"\0", "é".as_bytes()] {
            let field = fill.repeat(MAX_RAW_LINE);
            let csv = [H.as_bytes(), b"x,", &field, b"\n"].concat();
            let (_, _, rejected) = rows(read_whole(&csv, 0));
            assert_eq!(rejected.len(), 1);
            let raw = &rejected[0].raw;
            assert!(raw.len() <= MAX_RAW_LINE && raw.len() > MAX_RAW_LINE - 4, "{} bytes", raw.len());
        }
    }

    /// The fuzz target (run longer with PROPTEST_CASES=100000): no input
    /// makes the reader panic, and every record is either kept or rejected.
    fn check_no_panic_and_accounting(bytes: &[u8]) {
        if let Ok(Part { frame, rows_read, rejected, .. }) = read_whole(bytes, 0) {
            assert_eq!(frame.height() as u64 + rejected.len() as u64, rows_read);
            assert!(rejected.iter().all(|r| r.raw.len() <= MAX_RAW_LINE && !r.reason.is_empty()));
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
}
