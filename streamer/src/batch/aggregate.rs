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
    /// A category's key is its index in `categories` (one name each, not
    /// one string per pair).
    pub by_category: Counters<u32>,
    pub categories: Vec<String>,
    pub by_product: Counters<i32>,
}

impl Deltas {
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// One (user, key) pair's counts in [`BatchCounters`]: user, key (a
/// product id, or a category's index), views, purchases.
pub type Pair = (i32, u32, i32, i32);

/// A batch's counters merged: each (user, key) pair once, sorted by user
/// and key; a category pair's key is its index in `names`, which are in
/// name order.
#[derive(Debug, Default)]
pub struct Merged {
    pub names: Vec<String>,
    pub by_category: Vec<Pair>,
    pub by_product: Vec<Pair>,
}

/// A batch's counters, merged over its chunks: each chunk's are unique per
/// (user, key), but a user's pairs come back in the next chunks. Merged and
/// sorted once at the end, each pair appears once, so that the applier
/// upserts them as they are, without grouping and sorting them again (its
/// costliest step after the upsert itself). Categories are kept as indexes
/// into the batch's list of them: every pair is 16 bytes.
#[derive(Debug, Default)]
pub struct BatchCounters {
    names: Vec<String>,
    index: std::collections::HashMap<String, u32>,
    by_category: Vec<Pair>,
    by_product: Vec<Pair>,
    rows: u64,
}

/// The most rows a [`BatchCounters`] merges: any pair's sums stay far
/// from `i32::MAX` (a chunk adds at most a few million rows).
pub const MERGED_ROWS: u64 = 1 << 30;

impl BatchCounters {
    /// Adds a chunk's counters.
    pub fn add(&mut self, d: &Deltas) {
        // The chunk's category indexes, as this batch's.
        let keys: Vec<u32> = d
            .categories
            .iter()
            .map(|name| match self.index.get(name) {
                Some(&k) => k,
                None => {
                    let k = self.names.len() as u32;
                    self.names.push(name.clone());
                    self.index.insert(name.clone(), k);
                    k
                }
            })
            .collect();
        let c = &d.by_category;
        self.by_category.extend(
            (0..c.user_ids.len()).map(|i| (c.user_ids[i], keys[c.keys[i] as usize], c.views[i], c.purchases[i])),
        );
        let p = &d.by_product;
        self.rows += p.views.iter().chain(&p.purchases).map(|&n| n as u64).sum::<u64>();
        self.by_product
            .extend((0..p.user_ids.len()).map(|i| (p.user_ids[i], p.keys[i] as u32, p.views[i], p.purchases[i])));
    }

    /// Pairs held (before merging).
    pub fn len(&self) -> usize {
        self.by_category.len() + self.by_product.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether to write the pairs out now: merged, they still fill half of
    /// `cap` (they are merged when they reach it), or they hold
    /// [`MERGED_ROWS`] rows.
    pub fn full(&mut self, cap: usize) -> bool {
        if self.rows >= MERGED_ROWS {
            return true;
        }
        if self.len() < cap {
            return false;
        }
        merge(&mut self.by_category);
        merge(&mut self.by_product);
        self.len() >= cap / 2
    }

    /// The pairs merged, each once, sorted by user and key (categories by
    /// name); leaves this empty.
    pub fn take(&mut self) -> Merged {
        let names = std::mem::take(&mut self.names);
        self.index.clear();
        self.rows = 0;
        // Category indexes renumbered in name order, so that sorting by
        // index sorts by name.
        let mut rank: Vec<u32> = (0..names.len() as u32).collect();
        rank.sort_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
        let mut order = vec![0u32; names.len()];
        for (r, &k) in rank.iter().enumerate() {
            order[k as usize] = r as u32;
        }
        let mut by_category = std::mem::take(&mut self.by_category);
        for pair in &mut by_category {
            pair.1 = order[pair.1 as usize];
        }
        merge(&mut by_category);
        let mut by_product = std::mem::take(&mut self.by_product);
        merge(&mut by_product);
        let names = rank.iter().map(|&k| names[k as usize].clone()).collect();
        Merged { names, by_category, by_product }
    }
}

/// Sorts `pairs` by (user, key) and sums the counts of equal pairs into one.
fn merge(pairs: &mut Vec<Pair>) {
    pairs.sort_unstable_by_key(|&(user, k, _, _)| (user, k));
    pairs.dedup_by(|next, kept| {
        let same = (next.0, next.1) == (kept.0, kept.1);
        if same {
            kept.2 += next.2;
            kept.3 += next.3;
        }
        same
    });
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
    let mut categories: Vec<String> = Vec::new();
    let by_category = counters(&rows, "product_category", |c| {
        let mut index: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        Ok(c.str()?
            .iter()
            .map(|s| {
                let name = s.unwrap_or_default();
                *index.entry(name).or_insert_with(|| {
                    categories.push(name.to_owned());
                    categories.len() as u32 - 1
                })
            })
            .collect())
    })?;
    Ok(Deltas {
        cells,
        by_category,
        categories,
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
    keys: impl FnOnce(&Column) -> PolarsResult<Vec<K>>,
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
        let fold = |c: &Counters<u32>| {
            (0..c.user_ids.len())
                .map(|i| ((c.user_ids[i], d.categories[c.keys[i] as usize].clone()), (c.views[i], c.purchases[i])))
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

    /// Per-pair (views, purchases) as a chunk's counters, in the
    /// group-by's order (not sorted: here, reversed).
    fn arrays<K: Clone>(pairs: &BTreeMap<(i32, K), (i32, i32)>) -> Counters<K> {
        let mut c = Counters { user_ids: Vec::new(), keys: Vec::new(), views: Vec::new(), purchases: Vec::new() };
        for ((u, k), (v, p)) in pairs.iter().rev() {
            c.user_ids.push(*u);
            c.keys.push(k.clone());
            c.views.push(*v);
            c.purchases.push(*p);
        }
        c
    }

    /// Adds each pair's counts of `from` into `into`.
    fn add_into<K: Ord + Clone>(into: &mut BTreeMap<(i32, K), (i32, i32)>, from: &BTreeMap<(i32, K), (i32, i32)>) {
        for (key, (v, p)) in from {
            let e = into.entry(key.clone()).or_default();
            *e = (e.0 + v, e.1 + p);
        }
    }

    proptest::proptest! {
        /// Chunks of counters (each unique per pair, as a chunk's group-by
        /// makes them) with pairs repeated across chunks: the merge holds
        /// each pair once with its summed counts, sorted by user and key,
        /// and leaves itself empty.
        #[test]
        fn batch_counters_merge_each_pair_once_sorted(
            chunks in proptest::collection::vec(
                proptest::collection::btree_map((1i32..8, 0usize..4, 1i32..6), (0i32..3, 0i32..3), 0..40), 0..6),
        ) {
            let names = ["Toys", "Books", "garden", "Äpfel"];
            // Merged once at the end, and merged in place after every
            // chunk (as when the pairs keep reaching the cap).
            let (mut merged, mut often) = (BatchCounters::default(), BatchCounters::default());
            let mut want_cat: BTreeMap<(i32, String), (i32, i32)> = BTreeMap::new();
            let mut want_prod: BTreeMap<(i32, i32), (i32, i32)> = BTreeMap::new();
            let mut rows = 0u64;
            for (j, chunk) in chunks.iter().enumerate() {
                // Each chunk's category names in an order of their own
                // (rotated by the chunk's place): its keys index them.
                let categories: Vec<String> = (0..names.len()).map(|i| names[(i + j) % names.len()].to_owned()).collect();
                let (mut cat, mut cat_keys, mut prod) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
                for (&(user, c, product), &(v, p)) in chunk {
                    let e: &mut (i32, i32) = cat.entry((user, names[c].to_owned())).or_default();
                    *e = (e.0 + v, e.1 + p);
                    let e: &mut (i32, i32) = cat_keys.entry((user, ((c + names.len() - j % names.len()) % names.len()) as u32)).or_default();
                    *e = (e.0 + v, e.1 + p);
                    let e: &mut (i32, i32) = prod.entry((user, product)).or_default();
                    *e = (e.0 + v, e.1 + p);
                    rows += (v + p) as u64;
                }
                add_into(&mut want_cat, &cat);
                add_into(&mut want_prod, &prod);
                let deltas =
                    Deltas { cells: Vec::new(), by_category: arrays(&cat_keys), categories, by_product: arrays(&prod) };
                merged.add(&deltas);
                often.add(&deltas);
                let _ = often.full(1);
            }
            proptest::prop_assert_eq!(merged.rows, rows);
            proptest::prop_assert!(!merged.full(usize::MAX));
            let (want_cat, want_prod): (Vec<_>, Vec<_>) = (want_cat.into_iter().collect(), want_prod.into_iter().collect());
            for counters in [&mut merged, &mut often] {
                let m = counters.take();
                let got_cat: Vec<_> =
                    m.by_category.iter().map(|&(u, k, v, p)| ((u, m.names[k as usize].clone()), (v, p))).collect();
                let got_prod: Vec<_> = m.by_product.iter().map(|&(u, k, v, p)| ((u, k as i32), (v, p))).collect();
                proptest::prop_assert_eq!(&got_cat, &want_cat);
                proptest::prop_assert_eq!(&got_prod, &want_prod);
                proptest::prop_assert!(counters.is_empty() && counters.rows == 0 && counters.names.is_empty());
            }
        }
    }
}
