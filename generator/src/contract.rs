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
pub const MAX_PRICE_CENTS: i64 = 9_999_999_999;
/// The two event types.
pub const EVENT_TYPES: [&str; 2] = ["view", "purchase"];

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

/// Why a data row breaks the contract, or `None` when it is valid: the
/// reference statement of the rules, kept simple on purpose. Tests use it as
/// the oracle; the streamer has its own, faster validator.
pub fn violation(record: &csv::StringRecord) -> Option<String> {
    if record.len() != COLUMNS.len() {
        return Some(format!("{} fields", record.len()));
    }
    let id = |i: usize| record[i].parse::<i32>().ok().filter(|v| *v > 0);
    if id(0).is_none() {
        return Some("user_id".into());
    }
    if id(4).is_none() {
        return Some("product_id".into());
    }
    for (i, max) in [(1, MAX_TEXT_CHARS), (2, MAX_TEXT_CHARS), (5, MAX_TEXT_CHARS), (6, MAX_CATEGORY_CHARS)] {
        if record[i].chars().count() > max || record[i].contains('\0') {
            return Some(format!("field {i} too long"));
        }
    }
    if !EVENT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(&record[3])) {
        return Some("event_type".into());
    }
    let price = &record[7];
    let digits = |p: &str, max: usize| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit());
    let ok_price = match price.split_once('.') {
        Some((int, frac)) => digits(int, 8) && digits(frac, 2),
        None => digits(price, 8),
    };
    if !ok_price {
        return Some(format!("product_price {price:?}"));
    }
    if chrono::DateTime::parse_from_rfc3339(&record[8]).is_err() {
        return Some("event_time".into());
    }
    None
}

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
