//! Compressed files read transparently: gzip (one member or several, as
//! `cat a.gz b.gz` makes) and zstd (one frame or several), told by their
//! first bytes rather than their names. The reader above counts the
//! decompressed bytes, so they are what the chunk budget bounds. A
//! decoder's error is a [`Corrupt`] inside the `io::Error`, for the reader
//! to quarantine the whole file rather than keep its first rows.

use std::io::{self, BufRead, BufReader, Read};

/// How a file's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Tells the encoding from the first bytes of a file.
    pub fn sniff(head: &[u8]) -> Encoding {
        if head.starts_with(&[0x1f, 0x8b]) {
            Encoding::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Encoding::Zstd
        } else {
            Encoding::Plain
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// A decoder's failure: the archive is damaged or truncated.
#[derive(Debug, thiserror::Error)]
#[error("corrupt {encoding} archive: {message}")]
pub struct Corrupt {
    pub encoding: &'static str,
    pub message: String,
}

/// If `e` is a decoder's failure, what it says.
pub fn corrupt(e: &io::Error) -> Option<String> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Corrupt>()).map(Corrupt::to_string)
}

/// Marks every error of the decoder as [`Corrupt`] (the file underneath
/// is a regular file already open: its own read errors are rare, and a
/// damaged archive is the likely cause).
struct Marked<R> {
    inner: R,
    encoding: Encoding,
}

impl<R: Read> Read for Marked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                Corrupt { encoding: self.encoding.name(), message: e.to_string() },
            )
        })
    }
}

/// The file's contents, decompressed when its first bytes say so.
pub fn decoded<'a, R: Read + Send + 'a>(file: R, capacity: usize) -> io::Result<(Encoding, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(capacity, file);
    let encoding = Encoding::sniff(buffered.fill_buf()?);
    let reader: Box<dyn Read + Send + 'a> = match encoding {
        Encoding::Plain => Box::new(buffered),
        Encoding::Gzip => Box::new(BufReader::with_capacity(
            capacity,
            Marked { inner: flate2::bufread::MultiGzDecoder::new(buffered), encoding },
        )),
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(buffered)?;
            Box::new(BufReader::with_capacity(capacity, Marked { inner: decoder, encoding }))
        }
    };
    Ok((encoding, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn read_all(bytes: Vec<u8>) -> io::Result<(Encoding, Vec<u8>)> {
        let (encoding, mut r) = decoded(io::Cursor::new(bytes), 64)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok((encoding, out))
    }

    #[test]
    fn gzip_zstd_and_plain_read_the_same() -> io::Result<()> {
        let text = b"a,b\n1,2\n".repeat(100);
        assert_eq!(read_all(text.clone())?, (Encoding::Plain, text.clone()));
        assert_eq!(read_all(gzip(&text))?, (Encoding::Gzip, text.clone()));
        let two_members = [gzip(&text[..400]), gzip(&text[400..])].concat();
        assert_eq!(read_all(two_members)?, (Encoding::Gzip, text.clone()));
        let zstd = zstd::encode_all(&text[..], 3)?;
        assert_eq!(read_all(zstd)?, (Encoding::Zstd, text));
        Ok(())
    }

    #[test]
    fn a_damaged_archive_says_so() {
        let text = b"a,b\n1,2\n".repeat(1000);
        let mut bad = gzip(&text);
        let n = bad.len();
        bad.truncate(n / 2);
        let e = read_all(bad).expect_err("truncated");
        assert!(corrupt(&e).is_some_and(|m| m.starts_with("corrupt gzip archive")), "{e}");
        let mut bad = zstd::encode_all(&text[..], 3).expect("zstd");
        let n = bad.len();
        bad.truncate(n - 4);
        let e = read_all(bad).expect_err("truncated");
        assert!(corrupt(&e).is_some_and(|m| m.starts_with("corrupt zstd archive")), "{e}");
    }
}
