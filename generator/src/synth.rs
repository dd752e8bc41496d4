//! Synthetic events: a stable population of users, a stable product catalog,
//! and a seedable [`Generator`] that turns them into CSV files that follow the
//! contract (the `contract` crate).
//!
//! Invariants:
//! - a user is always the same person: name and email depend on the user id
//!   alone ([`user_profile`]), never on the seed or the run;
//! - a product always has the same name, category and price ([`product`]);
//! - for a given seed, settings and sequence of `now` instants, the bytes of
//!   every file are identical from run to run;
//! - a row that is not a deliberate duplicate never shares
//!   `(user_id, event_time)` with any other row of the run: each user's clock
//!   only moves forward.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fake::faker::name::en::{FirstName, LastName};
use fake::Fake;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use contract::write::{format_price, join_fields, truncate_chars, TimeWriter};
use contract::MAX_TEXT_CHARS;

/// The product categories of the catalog, with the nouns their products are
/// named after and their price range in cents.
const CATEGORIES: [(&str, &[&str], (i64, i64)); 10] = [
    (
        "Electronics",
        &["Headphones", "Earbuds", "Smart Speaker", "Monitor", "Webcam", "Power Bank", "Charger"],
        (1_999, 59_999),
    ),
    ("Computers", &["Laptop", "Keyboard", "Mouse", "SSD", "Router", "Docking Station"], (1_499, 249_999)),
    ("Home & Kitchen", &["Blender", "Coffee Maker", "Knife Set", "Toaster", "Frying Pan", "Kettle"], (999, 29_999)),
    ("Clothing", &["T-Shirt", "Hoodie", "Jeans", "Jacket", "Sweater", "Scarf"], (799, 19_999)),
    ("Shoes", &["Running Shoes", "Sneakers", "Boots", "Sandals", "Loafers"], (1_999, 24_999)),
    ("Beauty", &["Moisturizer", "Shampoo", "Perfume", "Lipstick", "Sunscreen"], (399, 12_999)),
    ("Sports & Outdoors", &["Yoga Mat", "Tent", "Water Bottle", "Dumbbells", "Backpack", "Bike Helmet"], (999, 49_999)),
    ("Toys & Games", &["Board Game", "Puzzle", "Building Set", "Doll", "RC Car"], (499, 14_999)),
    ("Books", &["Novel", "Cookbook", "Biography", "Travel Guide", "Comic"], (299, 5_999)),
    ("Grocery", &["Coffee Beans", "Green Tea", "Olive Oil", "Dark Chocolate", "Pasta"], (149, 4_999)),
];

const ADJECTIVES: [&str; 12] =
    ["Classic", "Premium", "Compact", "Eco", "Pro", "Ultra", "Essential", "Deluxe", "Smart", "Vintage", "Lite", "Max"];

const EMAIL_DOMAINS: [&str; 5] = ["example.com", "example.org", "example.net", "mail.example", "shop.example"];

/// Fixed seeds: profiles and the catalog never depend on the run's seed.
const USER_SEED: u64 = 0x7573_6572_7365_6564;
const PRODUCT_SEED: u64 = 0x7072_6f64_7365_6564;

/// How many recent rows a deliberate duplicate may repeat.
const RECENT_ROWS: usize = 4_096;

/// One user's stable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub name: String,
    pub email: String,
}

/// The name and email of `user_id`: the same for every run and every seed.
pub fn user_profile(user_id: u32) -> UserProfile {
    let mut rng = ChaCha8Rng::seed_from_u64(USER_SEED ^ u64::from(user_id));
    let first: String = FirstName().fake_with_rng(&mut rng);
    let last: String = LastName().fake_with_rng(&mut rng);
    let domain = EMAIL_DOMAINS[rng.random_range(0..EMAIL_DOMAINS.len())];
    // Built in place (the replay calls this for every new user).
    let mut name = String::with_capacity(first.len() + last.len() + 1);
    name.push_str(&first);
    name.push(' ');
    name.push_str(&last);
    let local = |out: &mut String, s: &str| {
        out.extend(s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()));
    };
    let mut email = String::with_capacity(first.len() + last.len() + domain.len() + 12);
    local(&mut email, &first);
    email.push('.');
    local(&mut email, &last);
    let _ = std::fmt::Write::write_fmt(&mut email, format_args!("{user_id}@{domain}"));
    UserProfile { name: cut(name, MAX_TEXT_CHARS), email: cut(email, MAX_TEXT_CHARS) }
}

/// `s` cut to its first `max` characters.
fn cut(mut s: String, max: usize) -> String {
    let keep = truncate_chars(&s, max).len();
    s.truncate(keep);
    s
}

/// One catalog product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub category: &'static str,
    pub price_cents: i64,
}

/// Product `id` (1-based) of the catalog: the same for every run and seed.
pub fn product(id: u32) -> Product {
    let mut rng = ChaCha8Rng::seed_from_u64(PRODUCT_SEED ^ u64::from(id));
    let (category, nouns, (low, high)) = CATEGORIES[(id as usize - 1) % CATEGORIES.len()];
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let noun = nouns[rng.random_range(0..nouns.len())];
    // Prices end in .99, .49 or .00 most of the time, like a real shop.
    let base = rng.random_range(low / 100..=high / 100) * 100;
    let cents = [99, 49, 0, 95][rng.random_range(0..4)];
    Product { id, name: format!("{adjective} {noun} {id}"), category, price_cents: base + cents }
}

/// What the generator is asked to make; validated by [`crate::config`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Users are `1..=users`.
    pub users: u32,
    /// Products are `1..=products`.
    pub products: u32,
    /// Rows per file when `rows` is not set: uniform in `[min_events, max_events]`.
    pub min_events: usize,
    pub max_events: usize,
    /// Exactly this many rows in each file.
    pub rows: Option<usize>,
    /// Share of rows that repeat a recent `(user_id, event_time)`.
    pub duplicate_rate: f64,
    /// Share of rows that break the contract.
    pub bad_row_rate: f64,
    /// Share of good, non-duplicate rows that are purchases (the rest are views).
    pub purchase_rate: f64,
    /// Events happened up to this long before the file was written.
    pub jitter_micros: i64,
    /// Seed of the row generator.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            users: 10_000,
            products: 300,
            min_events: 100,
            max_events: 1_500,
            rows: None,
            duplicate_rate: 0.02,
            bad_row_rate: 0.0,
            purchase_rate: 0.05,
            jitter_micros: 500_000,
            seed: 0,
        }
    }
}

/// One file's name, contents and what went into it.
#[derive(Debug, Clone)]
pub struct GeneratedFile {
    pub name: String,
    pub contents: Vec<u8>,
    /// Data rows (the header not counted), bad ones included.
    pub rows: usize,
    /// Rows that repeat an earlier `(user_id, event_time)` on purpose.
    pub duplicates: usize,
    /// Rows that break the contract on purpose.
    pub bad_rows: usize,
}

/// The ways a deliberately bad row breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    MissingColumn,
    ExtraColumn,
    NonNumericUserId,
    UnknownEventType,
    NegativePrice,
    BadTimestamp,
    OverlongName,
    ZeroProductId,
}

impl BadKind {
    pub const ALL: [BadKind; 8] = [
        BadKind::MissingColumn,
        BadKind::ExtraColumn,
        BadKind::NonNumericUserId,
        BadKind::UnknownEventType,
        BadKind::NegativePrice,
        BadKind::BadTimestamp,
        BadKind::OverlongName,
        BadKind::ZeroProductId,
    ];
}

#[derive(Debug, Clone, Copy)]
struct RecentRow {
    user_id: u32,
    time_micros: i64,
    purchase: bool,
    product_id: u32,
}

/// Per-user state: the CSV prefix `user_id,user_name,user_email` and the
/// user's clock (the last event time handed out).
#[derive(Debug)]
struct UserState {
    prefix: Box<[u8]>,
    clock: i64,
}

/// Fibonacci hashing: multiplying by 2^64 / φ spreads nearby ids over the
/// high bits of the product.
pub(crate) fn fibonacci(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A cheap hasher for `u32` keys ([`fibonacci`]): the user map is looked
/// up for every row and needs no protection against hostile keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = fibonacci(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = fibonacci(u64::from(n));
    }
}

pub(crate) type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Makes event files. Deterministic for a given [`Settings`] and sequence of
/// `now` instants passed to [`Generator::next_file`].
#[derive(Debug)]
pub struct Generator {
    settings: Settings,
    rng: ChaCha8Rng,
    /// Filled on first use of each user.
    users: IdMap<UserState>,
    /// CSV-escaped `product_id,product_name,product_category,product_price`.
    products: Vec<Box<[u8]>>,
    recent: Vec<RecentRow>,
    recent_next: usize,
    file_seq: u64,
    last_name_micros: i64,
    instance: String,
    time: TimeWriter,
    scratch: Vec<u8>,
}

impl Generator {
    /// A generator; `instance` is a short tag put into file names so that two
    /// generators writing into one folder never collide.
    pub fn new(settings: Settings, instance: &str) -> Self {
        let products = (1..=settings.products)
            .map(|id| {
                let p = product(id);
                csv_fields(&[&p.id.to_string(), &p.name, p.category, &format_price(p.price_cents)])
            })
            .collect();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(settings.seed),
            settings,
            users: IdMap::default(),
            products,
            recent: Vec::with_capacity(RECENT_ROWS),
            recent_next: 0,
            file_seq: 0,
            last_name_micros: i64::MIN,
            instance: instance.to_owned(),
            time: TimeWriter::default(),
            scratch: Vec::with_capacity(256),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The next file, with events that happened just before `now`.
    pub fn next_file(&mut self, now: DateTime<Utc>) -> GeneratedFile {
        let now_micros = now.timestamp_micros();
        let rows = match self.settings.rows {
            Some(rows) => rows,
            None => self.rng.random_range(self.settings.min_events..=self.settings.max_events),
        };
        let mut out = Vec::with_capacity(64 + rows * 160);
        out.extend_from_slice(contract::HEADER.as_bytes());
        out.push(b'\n');
        let (mut duplicates, mut bad_rows) = (0, 0);
        for _ in 0..rows {
            let roll: f64 = self.rng.random();
            if roll < self.settings.bad_row_rate {
                let kind = BadKind::ALL[self.rng.random_range(0..BadKind::ALL.len())];
                let row = self.fresh_row(now_micros);
                self.write_bad_row(&mut out, row, kind);
                bad_rows += 1;
            } else if roll < self.settings.bad_row_rate + self.settings.duplicate_rate && !self.recent.is_empty() {
                let mut row = self.recent[self.rng.random_range(0..self.recent.len())];
                // Half of the duplicates change the event itself, so the
                // upsert has something to update.
                if self.rng.random_bool(0.5) {
                    row.purchase = !row.purchase;
                    row.product_id = self.pick_product();
                }
                self.write_row(&mut out, row);
                duplicates += 1;
            } else {
                let row = self.fresh_row(now_micros);
                self.remember(row);
                self.write_row(&mut out, row);
            }
        }
        let name = self.file_name(now_micros);
        GeneratedFile { name, contents: out, rows, duplicates, bad_rows }
    }

    /// File names sort in creation order: the instant (never going back), a
    /// sequence number, then the instance tag.
    fn file_name(&mut self, now_micros: i64) -> String {
        let micros = now_micros.max(self.last_name_micros);
        self.last_name_micros = micros;
        self.file_seq += 1;
        let stamp = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default().format("%Y%m%dT%H%M%S%6fZ");
        format!("events_{stamp}_{:06}_{}.csv", self.file_seq, self.instance)
    }

    fn pick_user(&mut self) -> u32 {
        // A few users are much more active than most.
        let u: f64 = self.rng.random();
        1 + ((u * u * f64::from(self.settings.users)) as u32).min(self.settings.users - 1)
    }

    fn pick_product(&mut self) -> u32 {
        let u: f64 = self.rng.random();
        1 + ((u * u * f64::from(self.settings.products)) as u32).min(self.settings.products - 1)
    }

    fn fresh_row(&mut self, now_micros: i64) -> RecentRow {
        let user_id = self.pick_user();
        let jitter =
            if self.settings.jitter_micros > 0 { self.rng.random_range(0..=self.settings.jitter_micros) } else { 0 };
        let user = self.user(user_id);
        let time_micros = (now_micros - jitter).max(user.clock.saturating_add(1));
        user.clock = time_micros;
        let purchase = self.rng.random_bool(self.settings.purchase_rate);
        let product_id = self.pick_product();
        RecentRow { user_id, time_micros, purchase, product_id }
    }

    fn remember(&mut self, row: RecentRow) {
        if self.recent.len() < RECENT_ROWS {
            self.recent.push(row);
        } else {
            self.recent[self.recent_next] = row;
            self.recent_next = (self.recent_next + 1) % RECENT_ROWS;
        }
    }

    fn user(&mut self, user_id: u32) -> &mut UserState {
        self.users.entry(user_id).or_insert_with(|| {
            let p = user_profile(user_id);
            UserState { prefix: csv_fields(&[&user_id.to_string(), &p.name, &p.email]), clock: i64::MIN }
        })
    }

    fn write_row(&mut self, out: &mut Vec<u8>, row: RecentRow) {
        out.extend_from_slice(&self.user(row.user_id).prefix);
        out.extend_from_slice(if row.purchase { b",purchase," } else { b",view," });
        out.extend_from_slice(&self.products[row.product_id as usize - 1]);
        out.push(b',');
        self.time.push(out, row.time_micros);
        out.push(b'\n');
    }

    fn write_bad_row(&mut self, out: &mut Vec<u8>, row: RecentRow, kind: BadKind) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.write_row(&mut scratch, row);
        scratch.pop(); // the line end, put back below
        let line = String::from_utf8_lossy(&scratch);
        // Good rows from the catalog never hold a quoted comma, so splitting
        // on commas gives the nine fields back.
        let mut fields: Vec<String> = line.split(',').map(str::to_owned).collect();
        match kind {
            BadKind::MissingColumn => {
                fields.pop();
            }
            BadKind::ExtraColumn => fields.push("extra".to_owned()),
            BadKind::NonNumericUserId => fields[0] = format!("u{}", fields[0]),
            BadKind::UnknownEventType => fields[3] = "click".to_owned(),
            BadKind::NegativePrice => fields[7] = format!("-{}", fields[7]),
            BadKind::BadTimestamp => fields[8] = "2026-13-45T99:99:99Z".to_owned(),
            BadKind::OverlongName => fields[1] = "x".repeat(MAX_TEXT_CHARS + 20),
            BadKind::ZeroProductId => fields[4] = "0".to_owned(),
        }
        out.extend_from_slice(fields.join(",").as_bytes());
        out.push(b'\n');
        self.scratch = scratch;
    }
}

/// Fields joined by commas, each quoted when CSV needs it.
fn csv_fields(fields: &[&str]) -> Box<[u8]> {
    let fields: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
    join_fields(&fields).into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_always_the_same_person() {
        assert_eq!(user_profile(42), user_profile(42));
        // The profile of every id is what the first version built with
        // format! (replays and earlier runs must agree).
        for id in (1..3_000).chain([541_312_140, i32::MAX as u32]) {
            let mut rng = ChaCha8Rng::seed_from_u64(USER_SEED ^ u64::from(id));
            let first: String = FirstName().fake_with_rng(&mut rng);
            let last: String = LastName().fake_with_rng(&mut rng);
            let domain = EMAIL_DOMAINS[rng.random_range(0..EMAIL_DOMAINS.len())];
            let local = |s: &str| -> String {
                s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
            };
            let name: String = format!("{first} {last}").chars().take(MAX_TEXT_CHARS).collect();
            let email: String =
                format!("{}.{}{id}@{domain}", local(&first), local(&last)).chars().take(MAX_TEXT_CHARS).collect();
            assert_eq!(user_profile(id), UserProfile { name, email }, "user {id}");
        }
        assert_ne!(user_profile(42).email, user_profile(43).email);
        let p = user_profile(7);
        assert!(p.email.ends_with(&format!("7@{}", p.email.split('@').nth(1).unwrap_or(""))));
    }

    #[test]
    fn products_are_stable_and_span_ten_categories() {
        assert_eq!(product(5), product(5));
        let categories: std::collections::HashSet<_> = (1..=300).map(|id| product(id).category).collect();
        assert_eq!(categories.len(), 10);
        assert!((1..=300).all(|id| product(id).price_cents >= 0));
    }

    #[test]
    fn csv_fields_quote_only_when_needed() {
        assert_eq!(&*csv_fields(&["a", "b c"]), b"a,b c");
        assert_eq!(&*csv_fields(&["a,b", "say \"hi\""]), b"\"a,b\",\"say \"\"hi\"\"\"");
    }

    #[test]
    fn file_names_sort_in_creation_order_even_when_the_clock_stands_still() {
        let mut g = Generator::new(Settings { rows: Some(1), ..Settings::default() }, "t");
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let names: Vec<String> = (0..1_200).map(|_| g.next_file(now).name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
