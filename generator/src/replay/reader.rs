//! CSV records from a byte stream, the same records the `csv` crate reads
//! (with `flexible(true)` and no header handling), faster for plain lines.
//!
//! A line without a quote or a carriage return is split on its commas here,
//! with `memchr`'s vectorised searches; every other record (and the first,
//! which may start with a byte-order mark) goes through `csv_core`, the
//! parser inside the `csv` crate, so quoting rules are the crate's own.
//! Line numbers are counted as the crate counts them (`\n` before the start
//! of the read, blank lines skipped before a record included).
//!
//! Memory is bounded by the buffer, except for a record that does not fit it:
//! that one is parsed in pieces and held whole, as the `csv` crate does.

use std::io::{self, Read};

use csv_core::ReadRecordResult;

/// Bytes read from the input at a time.
const BUFFER: usize = 1 << 20;

#[derive(Debug)]
pub struct Records<R> {
    inner: R,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    bytes_read: u64,
    /// 1 + the `\n` consumed so far.
    line: u64,
    /// Whether `core` has parsed a record: until then it strips a
    /// byte-order mark, so the first record always goes through it.
    core_started: bool,
    core: csv_core::Reader,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

impl<R: Read> Records<R> {
    pub fn new(inner: R) -> Records<R> {
        Records::with_buffer(inner, BUFFER)
    }

    fn with_buffer(inner: R, size: usize) -> Records<R> {
        Records {
            inner,
            // Room for a byte-order mark and a byte after it.
            buf: vec![0; size.max(4)],
            start: 0,
            end: 0,
            eof: false,
            bytes_read: 0,
            line: 1,
            core_started: false,
            core: csv_core::Reader::new(),
            fields: vec![0; 1024],
            ends: vec![0; 16],
        }
    }

    /// Bytes read from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The line the next read starts on.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Reads the next record into `record`, returning the line it starts on
    /// as the `csv` crate gives it, or `None` at the end of the input.
    pub fn read(&mut self, record: &mut csv::ByteRecord) -> io::Result<Option<u64>> {
        record.clear();
        let line = self.line;
        loop {
            let Some(n) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) else {
                // No whole line buffered: read more, unless the line is longer
                // than the buffer or the input has ended.
                if self.eof || (self.start == 0 && self.end == self.buf.len()) || !self.fill()? {
                    return self.read_with_core(record, line);
                }
                continue;
            };
            let text = &self.buf[self.start..self.start + n];
            if !self.core_started || memchr::memchr2(b'"', b'\r', text).is_some() {
                return self.read_with_core(record, line);
            }
            let (from, to) = (self.start, self.start + n);
            self.start = to + 1;
            self.line += 1;
            if from == to {
                // The csv crate skips empty lines.
                continue;
            }
            let text = &self.buf[from..to];
            let mut field_start = 0;
            for comma in memchr::memchr_iter(b',', text) {
                record.push_field(&text[field_start..comma]);
                field_start = comma + 1;
            }
            record.push_field(&text[field_start..]);
            return Ok(Some(line));
        }
    }

    /// Moves the unread bytes to the front and reads more; false at the end
    /// of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    self.bytes_read += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One record through `csv_core`, refilling the buffer as it goes.
    fn read_with_core(&mut self, record: &mut csv::ByteRecord, line: u64) -> io::Result<Option<u64>> {
        if !self.core_started {
            // csv_core strips a byte-order mark only when it sees it whole,
            // and takes a call with nothing after it for the end of the data.
            while self.end - self.start <= 3 && !self.eof {
                self.fill()?;
            }
            self.core_started = true;
        }
        let (mut out, mut ends) = (0, 0);
        loop {
            // An empty input tells csv_core the data has ended.
            if self.start == self.end && !self.eof {
                self.fill()?;
                continue;
            }
            let input = &self.buf[self.start..self.end];
            let (result, n_in, n_out, n_ends) =
                self.core.read_record(input, &mut self.fields[out..], &mut self.ends[ends..]);
            self.line += memchr::memchr_iter(b'\n', &input[..n_in]).count() as u64;
            self.start += n_in;
            out += n_out;
            ends += n_ends;
            match result {
                ReadRecordResult::InputEmpty => {
                    if !self.eof {
                        self.fill()?;
                    }
                }
                ReadRecordResult::OutputFull => self.fields.resize(self.fields.len() * 2, 0),
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    let mut field_start = 0;
                    for &end in &self.ends[..ends] {
                        record.push_field(&self.fields[field_start..end]);
                        field_start = end;
                    }
                    return Ok(Some(line));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the `csv` crate reads, as the replay configured it.
    fn csv_crate(input: &[u8]) -> Vec<(Vec<Vec<u8>>, u64)> {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(input);
        let mut record = csv::ByteRecord::new();
        let mut out = Vec::new();
        while reader.read_byte_record(&mut record).unwrap_or(false) {
            let line = record.position().map_or(0, |p| p.line());
            out.push((record.iter().map(<[u8]>::to_vec).collect(), line));
        }
        out
    }

    /// What [`Records`] reads, through a buffer of `size` bytes and an input
    /// that hands out at most `chunk` bytes a read.
    fn ours(input: &[u8], size: usize, chunk: usize) -> Vec<(Vec<Vec<u8>>, u64)> {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut records = Records::with_buffer(Chunked(input, chunk), size);
        let mut record = csv::ByteRecord::new();
        let mut out = Vec::new();
        while let Ok(Some(line)) = records.read(&mut record) {
            out.push((record.iter().map(<[u8]>::to_vec).collect(), line));
        }
        assert_eq!(records.bytes_read(), input.len() as u64);
        out
    }

    #[test]
    fn records_and_lines_are_the_csv_crates() {
        for input in [
            &b"a,b,c\n1,2,3\n"[..],
            b"\xEF\xBB\xBFh1,h2\nx,y",
            b"a,b\n\n\nc,d\n",
            b"\"q,1\",2\n3,\"multi\nline\"\n4,5\n",
            b"a,b\r\nc,d\r\n",
            b"a\rb\rc",
            b"x,ab\"c,d\ne,f\n",
            b",\n,,\n\n",
            b"",
            b"\n\n",
            b"\"unterminated,1\n2,3\n",
        ] {
            let expected = csv_crate(input);
            for (size, chunk) in [(1 << 20, 1 << 20), (4, 1), (7, 3), (64, 5)] {
                assert_eq!(
                    ours(input, size, chunk),
                    expected,
                    "{:?} size {size} chunk {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_input_gives_the_csv_crates_records(
            bytes in proptest::collection::vec(proptest::sample::select(&b"ab,\"\r\n \xEF\xBB\xBF"[..]), 0..200),
            size in 1usize..40,
            chunk in 1usize..50,
        ) {
            prop_assert_eq!(ours(&bytes, size, chunk), csv_crate(&bytes));
        }
    }
}
