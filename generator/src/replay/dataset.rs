//! The replay's mapping of input records into contract rows ([`Mapper`]),
//! for its two input formats:
//! - **contract**: our own files (replaying an earlier run); rows are written
//!   as they are (with `--shift-to-now`, only `event_time` changes);
//! - **dataset**: the public "eCommerce behavior data from multi-category
//!   store" format, mapped as [`Mapper::map`] documents.
//!
//! The dataset's times have one-second resolution; one user often has several
//! events in one second, which deduplication on `(user_id, event_time)`
//! would drop. Each distinct row of a user in a second gets its rank in that
//! second (0, 1, 2, … in input order) added in microseconds; a row identical
//! in every column to an earlier one of the same user and second gets the
//! same rank, so it stays a duplicate for the streamer to drop.

use chrono::{DateTime, NaiveDateTime, Utc};
use contract::validate::{id_from_bytes, parse_price};
use contract::write::{push_field, truncate_chars, TimeWriter};
use contract::{COLUMNS, MAX_CATEGORY_CHARS, MAX_TEXT_CHARS};

use crate::synth::{user_profile, IdMap};

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

/// How one input row ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A contract row (CSV line, with its newline) at this data time.
    Row {
        micros: i64,
        identical: bool,
    },
    /// A `cart` or `remove_from_cart` row, skipped.
    Cart,
    /// A dataset row older than a row before it, skipped.
    OutOfOrder,
    Malformed(String),
}

/// Why a dataset row yields no contract row.
enum Skip {
    Cart,
    OutOfOrder,
    Malformed(String),
}

impl From<String> for Skip {
    fn from(reason: String) -> Skip {
        Skip::Malformed(reason)
    }
}

/// Turns input records into contract rows.
#[derive(Debug)]
pub struct Mapper {
    format: InputFormat,
    ranks: SecondRanks,
    /// The text of the last `event_time` and its second.
    last_time: (Vec<u8>, i64),
    profiles: Profiles,
    shift_micros: Option<i64>,
    shift_to: Option<i64>,
    text: String,
    time: TimeWriter,
}

/// The distinct rows of each user in the newest second of a dataset replay:
/// per user the newest entry, each entry linking to the user's previous one,
/// the rows' fields (length-prefixed) kept in `arena`.
#[derive(Debug)]
struct SecondRanks {
    second: i64,
    latest: IdMap<usize>,
    entries: Vec<(usize, usize, usize)>,
    arena: Vec<u8>,
    encoded: Vec<u8>,
}

impl SecondRanks {
    fn new() -> SecondRanks {
        SecondRanks {
            second: i64::MIN,
            latest: IdMap::default(),
            entries: Vec::new(),
            arena: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// The row's rank among its user's distinct rows of `second`, and whether
    /// an identical row came before it; `None` when `second` is older than
    /// the newest second seen.
    fn rank(&mut self, second: i64, user_id: u32, record: &csv::ByteRecord) -> Option<(usize, bool)> {
        if second < self.second {
            return None;
        }
        if second > self.second {
            self.second = second;
            self.latest.clear();
            self.entries.clear();
            self.arena.clear();
        }
        // The row as its field lengths, then its fields' bytes.
        let mut lengths = [0u8; 4 * DATASET_COLUMNS.len()];
        for (length, f) in lengths.chunks_exact_mut(4).zip(record.iter()) {
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
        Some(match identical {
            Some(position) => (count - 1 - position, true),
            None => {
                let start = self.arena.len();
                self.arena.extend_from_slice(&self.encoded);
                let previous = self.latest.get(&user_id).copied().unwrap_or(usize::MAX);
                self.entries.push((start, self.arena.len(), previous));
                self.latest.insert(user_id, self.entries.len() - 1);
                (count, false)
            }
        })
    }
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

    fn slot_of(user_id: u32) -> usize {
        (crate::synth::fibonacci(u64::from(user_id)) >> (64 - PROFILE_SLOTS_LOG2)) as usize
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
            ranks: SecondRanks::new(),
            last_time: (Vec::new(), i64::MIN),
            profiles: Profiles::new(),
            shift_micros: None,
            shift_to: shift_to.map(|t| t.timestamp_micros()),
            text: String::new(),
            time: TimeWriter::default(),
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
    ///
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
    /// - `product_price`: as given, when it is a contract price;
    /// - `event_time`: `YYYY-MM-DD HH:MM:SS UTC`, plus the row's rank among
    ///   the distinct rows of its user in that second, in microseconds;
    /// - `category_id` and `user_session` are not carried.
    pub fn map(&mut self, record: &csv::ByteRecord, out: &mut Vec<u8>) -> Mapped {
        let result = match self.format {
            InputFormat::Dataset => self.map_dataset(record, out),
            _ => self.map_contract(record, out),
        };
        match result {
            Ok((micros, identical)) => Mapped::Row { micros, identical },
            Err(Skip::Cart) => Mapped::Cart,
            Err(Skip::OutOfOrder) => Mapped::OutOfOrder,
            Err(Skip::Malformed(reason)) => Mapped::Malformed(reason),
        }
    }

    fn shifted(&mut self, micros: i64) -> i64 {
        match self.shift_to {
            Some(to) => micros + *self.shift_micros.get_or_insert(to - micros),
            None => micros,
        }
    }

    fn map_contract(&mut self, record: &csv::ByteRecord, out: &mut Vec<u8>) -> Result<(i64, bool), Skip> {
        contract::validate::field_count(record.len())?;
        let Some(micros) = std::str::from_utf8(&record[8]).ok().and_then(parse_contract_time) else {
            return Err(Skip::Malformed("event_time is not a timestamp".into()));
        };
        let micros = self.shifted(micros);
        for (i, field) in record.iter().enumerate().take(8) {
            if i > 0 {
                out.push(b',');
            }
            push_field(out, field);
        }
        out.push(b',');
        self.time.push(out, micros);
        out.push(b'\n');
        Ok((micros, false))
    }

    /// The second of a dataset `event_time`, parsed once per distinct text.
    fn second_of(&mut self, field: &[u8]) -> Result<i64, Skip> {
        if field == &self.last_time.0[..] {
            return Ok(self.last_time.1);
        }
        let second = std::str::from_utf8(field)
            .ok()
            .and_then(parse_dataset_time)
            .ok_or_else(|| Skip::Malformed("event_time is not `YYYY-MM-DD HH:MM:SS UTC`".into()))?;
        self.last_time.0.clear();
        self.last_time.0.extend_from_slice(field);
        self.last_time.1 = second;
        Ok(second)
    }

    fn map_dataset(&mut self, record: &csv::ByteRecord, out: &mut Vec<u8>) -> Result<(i64, bool), Skip> {
        if record.len() != DATASET_COLUMNS.len() {
            return Err(Skip::Malformed(format!("expected {} fields, found {}", DATASET_COLUMNS.len(), record.len())));
        }
        let field =
            |i: usize| std::str::from_utf8(&record[i]).map_err(|_| format!("{} is not UTF-8", DATASET_COLUMNS[i]));
        let event_type = match &record[1] {
            b"view" => "view",
            b"purchase" => "purchase",
            b"cart" | b"remove_from_cart" => return Err(Skip::Cart),
            other => return Err(Skip::Malformed(format!("unknown event_type {:?}", String::from_utf8_lossy(other)))),
        };
        let second = self.second_of(&record[0])?;
        let product = id_from_bytes(&record[2]).ok_or_else(|| "product_id is not an id > 0".to_owned())?;
        let user_id = id_from_bytes(&record[7]).ok_or_else(|| "user_id is not an id > 0".to_owned())? as u32;
        let price = &record[6];
        if let Err(reason) = std::str::from_utf8(price).map_err(|_| "not UTF-8".to_owned()).and_then(parse_price) {
            return Err(Skip::Malformed(format!("price {:?}: {reason}", String::from_utf8_lossy(price))));
        }
        let (code, brand) = (field(4)?, field(5)?);
        let (rank, identical) = self.ranks.rank(second, user_id, record).ok_or(Skip::OutOfOrder)?;
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
        if !brand.is_empty() && !last.is_empty() {
            self.text.push_str(brand);
            self.text.push(' ');
            self.text.push_str(last);
        } else {
            self.text.push_str(if !brand.is_empty() {
                brand
            } else if !last.is_empty() {
                last
            } else {
                "product"
            });
            self.text.push_str(" #");
            self.text.push_str(product);
        }
        let name = truncate_chars(&self.text, MAX_TEXT_CHARS);
        let category = if category.is_empty() { "unknown" } else { truncate_chars(category, MAX_CATEGORY_CHARS) };

        self.profiles.push(user_id, out);
        for text in [event_type.as_bytes(), product.as_bytes()] {
            out.extend_from_slice(text);
            out.push(b',');
        }
        for text in [name, category] {
            push_field(out, text.as_bytes());
            out.push(b',');
        }
        // Checked above: a contract price, written as given.
        out.extend_from_slice(price);
        out.push(b',');
        self.time.push(out, micros);
        out.push(b'\n');
        Ok((micros, identical))
    }
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
    contract::validate::parse_time(s).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const DATASET_HEADER: &str =
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n";

    pub(crate) fn map_lines(format: InputFormat, lines: &[&str]) -> (Vec<Mapped>, String) {
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
                Malformed("price \"1.005\": product_price: '1.005' has more than 2 decimal places".into()),
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
    fn dataset_times_are_read_as_chrono_does() {
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
    }

    #[test]
    fn ids_are_read_as_u32_from_str_does_within_1_to_i32_max() {
        for text in ["1", "+7", "0007", "0", "", "+", "-1", "1a", " 1", "2147483647", "2147483648", "99999999999"] {
            let std = text.parse::<u32>().ok().filter(|v| (1..=i32::MAX as u32).contains(v));
            assert_eq!(id_from_bytes(text.as_bytes()).map(|v| v as u32), std, "{text:?}");
        }
    }
}
