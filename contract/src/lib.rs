//! The event contract every part of the pipeline shares: the CSV columns and
//! their order, the limits of a valid row, the row type ([`Event`]), the one
//! validator ([`validate`]) and the writers that put rows into files
//! ([`write`]). The generator writes to it, the streamer reads against it,
//! and the tests compute their oracle with the same rules, so there is one
//! statement of the contract in code; `docs/architecture.md` states it in
//! prose. No I/O, no async here.

pub mod validate;
pub mod write;

pub use validate::{validate, Event, EventType};

/// Column names, in file order.
pub const COLUMNS: [&str; 9] = [
    "user_id",
    "user_name",
    "user_email",
    "event_type",
    "product_id",
    "product_name",
    "product_category",
    "product_price",
    "event_time",
];

/// The header line of every event file the pipeline writes (without the line end).
pub const HEADER: &str =
    "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time";

/// Longest `user_name`, `user_email` and `product_name`, in characters.
pub const MAX_TEXT_CHARS: usize = 100;
/// Longest `product_category`, in characters.
pub const MAX_CATEGORY_CHARS: usize = 50;
/// Largest price the column `NUMERIC(10,2)` holds, in cents.
pub const MAX_PRICE_CENTS: i64 = 9_999_999_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_columns_joined_by_commas() {
        assert_eq!(HEADER, COLUMNS.join(","));
    }
}
