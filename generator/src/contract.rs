//! The event contract shared by every part of the pipeline (DESIGN.md, "The
//! event contract"): the exact CSV header, the column order and the limits a
//! valid row respects. The generator writes files to this contract and the
//! streamer validates against it, so both sides name the same constants.

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

/// The exact header line of every event file (without the line end).
pub const HEADER: &str =
    "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time";

/// Longest `user_name`, `user_email` and `product_name`, in characters.
pub const MAX_TEXT_CHARS: usize = 100;
/// Longest `product_category`, in characters.
pub const MAX_CATEGORY_CHARS: usize = 50;
/// Largest price the column `NUMERIC(10,2)` holds, in cents.
pub const MAX_PRICE_CENTS: i64 = 99_999_999_99;
/// The two event types.
pub const EVENT_TYPES: [&str; 2] = ["view", "purchase"];

/// Formats a price in cents the way files carry it: `12.30`.
pub fn format_price(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_columns_joined_by_commas() {
        assert_eq!(HEADER, COLUMNS.join(","));
    }

    #[test]
    fn prices_keep_both_decimals() {
        assert_eq!(format_price(0), "0.00");
        assert_eq!(format_price(5), "0.05");
        assert_eq!(format_price(123_450), "1234.50");
        assert_eq!(format_price(MAX_PRICE_CENTS), "99999999.99");
    }
}
