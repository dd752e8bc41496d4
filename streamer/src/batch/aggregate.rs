//! A chunk's contribution to the derived tables, computed by Polars group-bys
//! over the chunk's rows, so that PostgreSQL receives a few rows per window
//! and category instead of per-row work:
//! - per (window, category): views, purchases, revenue, and for each user
//!   the rows added there (the applier turns those into exact distinct-user
//!   counts by probing `events` once per touched user and cell);
//! - per (user, category) and (user, product): views and purchases.
//!
//! The contribution assumes every row of the chunk ends up in `events`; the
//! merge records the rows that did not (`analytics_rows`, kind `lost`) and
//! the trigger of db/005 the rows that were replaced, and the applier takes
//! both away. Windows are `date_bin(width, event_time, 2000-01-01 UTC)`, as
//! `metrics_window()` computes them in SQL. Sums are in cents and rows of
//! one chunk (at most [`crate::config::MAX_CHUNK_BYTES`] of input), so they
//! cannot overflow.

use polars::prelude::*;

/// 2000-01-01T00:00:00Z, in microseconds since the Unix epoch: windows are
/// aligned on it (one-minute windows start on the minute).
pub const WINDOW_ORIGIN_MICROS: i64 = 946_684_800_000_000;

/// The start of the window `t` falls into (microseconds).
pub fn window_start(t: i64, width_micros: i64) -> i64 {
    WINDOW_ORIGIN_MICROS + (t - WINDOW_ORIGIN_MICROS).div_euclid(width_micros) * width_micros
}

/// One window and category of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub window_start_micros: i64,
    pub category: String,
    pub views: i64,
    pub purchases: i64,
    pub revenue_cents: i64,
    /// The users with rows here, and how many rows each.
    pub user_ids: Vec<i32>,
    pub user_rows: Vec<i32>,
}

/// Per-user counters of a chunk, as parallel arrays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters<K> {
    pub user_ids: Vec<i32>,
    pub keys: Vec<K>,
    pub views: Vec<i32>,
    pub purchases: Vec<i32>,
}

/// What a chunk adds to the derived tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deltas {
    pub cells: Vec<Cell>,
    pub by_category: Counters<String>,
    pub by_product: Counters<i32>,
}

impl Deltas {
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// The deltas of `frame` (batch schema) with windows `width_micros` wide.
pub fn aggregate(frame: &DataFrame, width_micros: i64) -> PolarsResult<Deltas> {
    if frame.height() == 0 {
        return Ok(Deltas::default());
    }
    let time = frame.column("event_time")?.datetime()?.physical();
    let window = time.apply_values(|t| window_start(t, width_micros)).with_name("window".into());
    let purchases = frame.column("event_type")?.str()?.equal("purchase").cast(&DataType::Int64)?;
    let purchases = purchases.i64()?.clone().with_name("purchases".into());
    let views = purchases.apply_values(|p| 1 - p).with_name("views".into());
    let revenue = (frame.column("product_price")?.i64()? * &purchases).with_name("revenue".into());
    let columns = vec![
        window.into_column(),
        frame.column("product_category")?.clone(),
        frame.column("user_id")?.clone(),
        frame.column("product_id")?.clone(),
        views.into_column(),
        purchases.into_column(),
        revenue.into_column(),
    ];
    let rows = DataFrame::new(frame.height(), columns)?;

    let per_user = sums(&rows, &["window", "product_category", "user_id"], &["views", "purchases", "revenue"])?
        .sort(["window", "product_category", "user_id"], SortMultipleOptions::default())?;
    let (w, c, u) = (
        per_user.column("window")?.i64()?,
        per_user.column("product_category")?.str()?,
        per_user.column("user_id")?.i32()?,
    );
    let (v, p, r) = (
        per_user.column("views_sum")?.i64()?,
        per_user.column("purchases_sum")?.i64()?,
        per_user.column("revenue_sum")?.i64()?,
    );
    let mut cells: Vec<Cell> = Vec::new();
    for i in 0..per_user.height() {
        let (Some(window), Some(category), Some(user), Some(views), Some(purchases), Some(revenue)) =
            (w.get(i), c.get(i), u.get(i), v.get(i), p.get(i), r.get(i))
        else {
            continue;
        };
        let cell = match cells.last_mut() {
            Some(cell) if cell.window_start_micros == window && cell.category == category => cell,
            _ => {
                cells.push(Cell {
                    window_start_micros: window,
                    category: category.to_owned(),
                    views: 0,
                    purchases: 0,
                    revenue_cents: 0,
                    user_ids: Vec::new(),
                    user_rows: Vec::new(),
                });
                cells.last_mut().expect("pushed just now")
            }
        };
        cell.views += views;
        cell.purchases += purchases;
        cell.revenue_cents += revenue;
        cell.user_ids.push(user);
        cell.user_rows.push((views + purchases) as i32);
    }
    Ok(Deltas {
        cells,
        by_category: counters(&rows, "product_category", |c| {
            Ok(c.str()?.iter().map(|s| s.unwrap_or_default().to_owned()).collect())
        })?,
        by_product: counters(&rows, "product_id", |c| Ok(c.i32()?.into_no_null_iter().collect()))?,
    })
}

/// `frame` grouped by `keys`, with the sum of each of `values` per group
/// (columns named `{value}_sum`). The eager group-by's `sum` is marked
/// deprecated in favour of the lazy API, which would bring the whole lazy
/// engine into the build; it runs the same aggregation kernel.
fn sums(frame: &DataFrame, keys: &[&str], values: &[&str]) -> PolarsResult<DataFrame> {
    #[allow(deprecated)]
    frame.group_by(keys.iter().copied())?.select(values.iter().copied()).sum()
}

fn counters<K>(
    rows: &DataFrame,
    key: &str,
    keys: impl Fn(&Column) -> PolarsResult<Vec<K>>,
) -> PolarsResult<Counters<K>> {
    let g = sums(rows, &["user_id", key], &["views", "purchases"])?;
    let small = |name: &str| -> PolarsResult<Vec<i32>> {
        Ok(g.column(name)?.i64()?.into_no_null_iter().map(|n| n as i32).collect())
    };
    Ok(Counters {
        user_ids: g.column("user_id")?.i32()?.into_no_null_iter().collect(),
        keys: keys(g.column(key)?)?,
        views: small("views_sum")?,
        purchases: small("purchases_sum")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::read_whole;
    use std::collections::BTreeMap;

    const H: &str =
        "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time\n";

    #[test]
    fn windows_are_cut_as_date_bin_cuts_them() {
        let minute = 60_000_000;
        assert_eq!(window_start(WINDOW_ORIGIN_MICROS + 59_999_999, minute), WINDOW_ORIGIN_MICROS);
        assert_eq!(window_start(WINDOW_ORIGIN_MICROS + 60_000_000, minute), WINDOW_ORIGIN_MICROS + minute);
        // Before the origin: floor, not truncation.
        assert_eq!(window_start(WINDOW_ORIGIN_MICROS - 1, minute), WINDOW_ORIGIN_MICROS - minute);
        assert_eq!(window_start(0, 86_400_000_000), 0, "1970-01-01 starts a day window");
    }

    /// The deltas equal a plain fold over the rows.
    #[test]
    fn deltas_are_the_group_by_of_the_rows() {
        let mut csv = H.to_owned();
        let cats = ["Books", "Toys", "Home"];
        for i in 0..500u32 {
            let kind = if i % 7 == 0 { "purchase" } else { "view" };
            let t = 1_767_225_600 + i64::from(i) * 7;
            let time = chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().to_rfc3339();
            csv.push_str(&format!(
                "{},U,u@x,{kind},{},P,{},{}.{:02},{time}\n",
                i % 13 + 1,
                i % 5 + 1,
                cats[i as usize % 3],
                i % 50,
                i % 100
            ));
        }
        let frame = read_whole(csv.as_bytes(), 0).expect("valid").frame;
        let d = aggregate(&frame, 60_000_000).expect("aggregates");

        type Cells = BTreeMap<(i64, String), (i64, i64, i64, BTreeMap<i32, i32>)>;
        let mut cells: Cells = BTreeMap::new();
        let mut by_cat: BTreeMap<(i32, String), (i32, i32)> = BTreeMap::new();
        let mut by_prod: BTreeMap<(i32, i32), (i32, i32)> = BTreeMap::new();
        let view = crate::batch::EventView::new(&frame).expect("schema");
        for (_, _, e) in (0..view.len()).filter_map(|i| view.row(i)) {
            let p = i64::from(e.event_type == contract::EventType::Purchase);
            let c = cells
                .entry((window_start(e.event_time_micros, 60_000_000), e.product_category.to_owned()))
                .or_default();
            c.0 += 1 - p;
            c.1 += p;
            c.2 += p * e.price_cents;
            *c.3.entry(e.user_id).or_default() += 1;
            let k = by_cat.entry((e.user_id, e.product_category.to_owned())).or_default();
            k.0 += 1 - p as i32;
            k.1 += p as i32;
            let k = by_prod.entry((e.user_id, e.product_id)).or_default();
            k.0 += 1 - p as i32;
            k.1 += p as i32;
        }
        let got: Cells = d
            .cells
            .iter()
            .map(|c| {
                let users = c.user_ids.iter().copied().zip(c.user_rows.iter().copied()).collect();
                ((c.window_start_micros, c.category.clone()), (c.views, c.purchases, c.revenue_cents, users))
            })
            .collect();
        assert_eq!(got, cells);
        assert_eq!(d.cells.len(), cells.len(), "one cell per window and category");
        let fold = |c: &Counters<String>| {
            (0..c.user_ids.len())
                .map(|i| ((c.user_ids[i], c.keys[i].clone()), (c.views[i], c.purchases[i])))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(fold(&d.by_category), by_cat);
        let fold = |c: &Counters<i32>| {
            (0..c.user_ids.len())
                .map(|i| ((c.user_ids[i], c.keys[i]), (c.views[i], c.purchases[i])))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(fold(&d.by_product), by_prod);
        assert!(aggregate(&crate::batch::empty_frame(), 60_000_000).expect("empty").is_empty());
    }
}
