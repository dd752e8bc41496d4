//! The rules of a valid row, in one place: [`validate`] checks the nine
//! fields of a record and either gives the typed [`Event`] or says why the
//! row breaks the contract, naming the column. The field parsers are public
//! for the callers that check one value alone (the replay's mapping).
//!
//! Decisions the contract leaves open, applied here:
//! - `event_type` is matched case-insensitively and stored lower-case;
//! - `product_price` is a plain decimal with at most two significant
//!   decimals (`12`, `12.5`, `12.50`, `12.500`); exponents and signs are
//!   refused; prices are carried as integer cents, never through `f64`;
//! - `event_time` is RFC 3339 (`T` or space, any offset) or a naive
//!   `YYYY-MM-DD HH:MM:SS[.ffffff]`, which is UTC; more than microsecond
//!   precision is refused rather than rounded; the instant lies in years
//!   1–9999 UTC ([`MIN_TIME_MICROS`]..=[`MAX_TIME_MICROS`]): inside
//!   PostgreSQL's range, and every window of the metrics too;
//! - text fields may be empty; a NUL character is refused (PostgreSQL text
//!   cannot hold it).

use chrono::{DateTime, NaiveDateTime, Timelike};

use crate::{COLUMNS, MAX_CATEGORY_CHARS, MAX_PRICE_CENTS, MAX_TEXT_CHARS};

/// The two kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    View,
    Purchase,
}

impl EventType {
    /// The text a file and the `events` table carry.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::Purchase => "purchase",
        }
    }
}

/// One valid row, borrowed from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub user_id: i32,
    pub user_name: &'a str,
    pub user_email: &'a str,
    pub event_type: EventType,
    pub product_id: i32,
    pub product_name: &'a str,
    pub product_category: &'a str,
    pub price_cents: i64,
    /// Microseconds since the Unix epoch, UTC.
    pub event_time_micros: i64,
}

/// Checks the fields of one record, in contract order; the reason names the
/// column. (A record with another number of fields is the caller's to refuse:
/// see [`field_count`].)
pub fn validate<'a>(f: [&'a str; COLUMNS.len()]) -> Result<Event<'a>, String> {
    Ok(Event {
        user_id: parse_id("user_id", f[0])?,
        user_name: parse_text("user_name", f[1], MAX_TEXT_CHARS)?,
        user_email: parse_text("user_email", f[2], MAX_TEXT_CHARS)?,
        event_type: parse_event_type(f[3])?,
        product_id: parse_id("product_id", f[4])?,
        product_name: parse_text("product_name", f[5], MAX_TEXT_CHARS)?,
        product_category: parse_text("product_category", f[6], MAX_CATEGORY_CHARS)?,
        price_cents: parse_price(f[7])?,
        event_time_micros: parse_time(f[8])?,
    })
}

/// The reason for a record that does not have the contract's nine fields.
pub fn field_count(found: usize) -> Result<(), String> {
    if found == COLUMNS.len() {
        Ok(())
    } else {
        Err(format!("expected {} fields, found {found}", COLUMNS.len()))
    }
}

/// An id: an integer in `1..=i32::MAX` (a PostgreSQL `INTEGER` > 0).
pub fn parse_id(column: &str, s: &str) -> Result<i32, String> {
    if s.is_empty() {
        return Err(format!("{column}: missing"));
    }
    let v: i64 = s.parse().map_err(|_| {
        if s.bytes().skip(usize::from(s.starts_with(['-', '+']))).all(|b| b.is_ascii_digit()) {
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

/// An id from bytes, as [`parse_id`] reads it but without a reason: an
/// optional `+`, digits (leading zeros allowed), a value in `1..=i32::MAX`.
pub fn id_from_bytes(s: &[u8]) -> Option<i32> {
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
    i32::try_from(value).ok().filter(|v| *v > 0)
}

/// Text of at most `max` characters, without NUL.
pub fn parse_text<'a>(column: &str, s: &'a str, max: usize) -> Result<&'a str, String> {
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

/// `view` or `purchase`, in any case.
pub fn parse_event_type(s: &str) -> Result<EventType, String> {
    if s.eq_ignore_ascii_case("view") {
        Ok(EventType::View)
    } else if s.eq_ignore_ascii_case("purchase") {
        Ok(EventType::Purchase)
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

/// The earliest `event_time`: 0001-01-01T00:00:00Z, in microseconds.
pub const MIN_TIME_MICROS: i64 = -62_135_596_800_000_000;
/// The latest `event_time`: 9999-12-31T23:59:59.999999Z, in microseconds.
pub const MAX_TIME_MICROS: i64 = 253_402_300_799_999_999;

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
    let micros = t.and_utc().timestamp_micros();
    if !(MIN_TIME_MICROS..=MAX_TIME_MICROS).contains(&micros) {
        return Err(format!("event_time: {} is outside years 1 to 9999", shorten(s)));
    }
    Ok(micros)
}

/// A value quoted for a reason, cut at 40 characters, NULs spelled `\0`.
pub fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(40).collect::<String>().replace('\0', "\\0");
    if s.chars().nth(40).is_some() {
        format!("'{cut}…'")
    } else {
        format!("'{cut}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), Ok(MIN_TIME_MICROS));
        assert_eq!(parse_time("9999-12-31T23:59:59.999999Z"), Ok(MAX_TIME_MICROS));
        for far in ["-5000-01-01 00:00:00", "0000-12-31T23:59:59Z", "+10000-01-01T00:00:00Z", "262143-01-01 00:00:00"] {
            let e = parse_time(far).err().unwrap_or_default();
            assert!(e.contains("outside years 1 to 9999") || e.contains("not a timestamp"), "{far}: {e}");
        }
        assert!(parse_time("-5000-01-01 00:00:00").err().unwrap_or_default().contains("outside years 1 to 9999"));
    }

    #[test]
    fn reasons_never_carry_a_nul() {
        let e = parse_id("user_id", "1\x002").err().unwrap_or_default();
        assert_eq!(e, "user_id: '1\\02' is not an integer");
        assert!(!parse_time("2026\0").err().unwrap_or_default().contains('\0'));
        assert!(!parse_event_type("vi\0ew").err().unwrap_or_default().contains('\0'));
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

    #[test]
    fn ids_from_bytes_agree_with_the_text_parser() {
        for s in ["1", "+7", "0042", "2147483647", "2147483648", "0", "-1", "", "+", "1a", "99999999999999999999"] {
            let text = if s.starts_with('+') { None } else { parse_id("id", s).ok() };
            let bytes = id_from_bytes(s.as_bytes());
            if !s.starts_with('+') {
                assert_eq!(bytes, text, "{s:?}");
            }
        }
        assert_eq!(id_from_bytes(b"+7"), Some(7));
    }

    #[test]
    fn a_valid_row_becomes_an_event() {
        let row = ["1", "Ann", "a@x", "PURCHASE", "2", "Mug", "Home", "3.5", "2026-01-01 00:00:00"];
        let e = validate(row).expect("valid");
        assert_eq!((e.user_id, e.event_type, e.price_cents), (1, EventType::Purchase, 350));
        let mut bad = row;
        bad[4] = "0";
        assert_eq!(validate(bad).err().as_deref(), Some("product_id: 0 is not > 0"));
        assert_eq!(field_count(8).err().as_deref(), Some("expected 9 fields, found 8"));
    }
}
