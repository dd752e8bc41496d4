//! Writing rows into contract files: CSV fields quoted only where needed,
//! prices with both decimals, instants as RFC 3339 UTC with microseconds,
//! and text cut at a character boundary. Used by the generator, the replay,
//! the streamer's rejected-row text and the tests' fixtures.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike as _, Timelike as _};

/// Appends a CSV field to `out`, quoted (quotes doubled) when it holds a
/// comma, a quote or a line break.
pub fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    if field.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for &b in field {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field);
    }
}

/// Fields joined by commas, each as [`push_field`] writes it.
pub fn join_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_field(&mut out, f);
    }
    out
}

/// A price in cents the way files carry it: `12.30`.
pub fn format_price(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// `s` cut to its first `max` characters.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// Writes instants as `2026-01-01T00:00:00.123456Z`; the text of the second
/// is formatted once per second (rows of one file mostly share it).
#[derive(Debug, Clone)]
pub struct TimeWriter {
    second: i64,
    text: String,
}

impl Default for TimeWriter {
    fn default() -> Self {
        TimeWriter { second: i64::MIN, text: String::new() }
    }
}

impl TimeWriter {
    /// Appends `micros` (since the Unix epoch) to `out`.
    pub fn push(&mut self, out: &mut Vec<u8>, micros: i64) {
        let (second, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
        if self.second != second {
            self.second = second;
            self.text.clear();
            let t = DateTime::from_timestamp(second, 0).unwrap_or_default();
            if (0..=9999).contains(&t.year()) {
                // What `%Y-%m-%dT%H:%M:%S` gives, without parsing the format.
                for (n, width, sep) in [
                    (t.year() as u32, 4, Some('-')),
                    (t.month(), 2, Some('-')),
                    (t.day(), 2, Some('T')),
                    (t.hour(), 2, Some(':')),
                    (t.minute(), 2, Some(':')),
                    (t.second(), 2, None),
                ] {
                    for k in (0..width).rev() {
                        self.text.push(char::from(b'0' + (n / 10u32.pow(k) % 10) as u8));
                    }
                    if let Some(sep) = sep {
                        self.text.push(sep);
                    }
                }
            } else {
                let _ = write!(self.text, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
            }
        }
        out.extend_from_slice(self.text.as_bytes());
        let mut digits = *b".000000Z";
        let mut f = fraction;
        for d in digits[1..7].iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        out.extend_from_slice(&digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(join_fields(&[b"a", b"b c"]), b"a,b c");
        assert_eq!(join_fields(&[b"a,b", b"say \"hi\""]), b"\"a,b\",\"say \"\"hi\"\"\"");
        assert_eq!(join_fields(&[b"line\nbreak", b"cr\r"]), b"\"line\nbreak\",\"cr\r\"");
    }

    #[test]
    fn prices_keep_both_decimals() {
        assert_eq!(format_price(0), "0.00");
        assert_eq!(format_price(5), "0.05");
        assert_eq!(format_price(123_450), "1234.50");
        assert_eq!(format_price(crate::MAX_PRICE_CENTS), "99999999.99");
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars(&"é".repeat(60), 50).chars().count(), 50);
    }

    proptest::proptest! {
        /// The writer gives what chrono's formatter gives, for every instant
        /// chrono can hold.
        #[test]
        fn instants_are_written_as_chrono_formats_them(micros in -62_000_000_000_000_000i64..250_000_000_000_000_000i64) {
            let mut w = TimeWriter::default();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            w.push(&mut a, micros);
            w.push(&mut b, micros);
            let t = DateTime::from_timestamp_micros(micros).unwrap_or_default();
            let expected = t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            proptest::prop_assert_eq!(String::from_utf8_lossy(&a), expected);
            proptest::prop_assert_eq!(a, b);
        }
    }
}
