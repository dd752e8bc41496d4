//! The batch frame: a Polars `DataFrame` of the contract's explicit schema
//! ([`schema`]; no inference anywhere) plus each row's place in its batch
//! (file index, physical line) and the columns its file had beyond the
//! contract's, as JSON ([`RESCUED_COLUMN`]). Rows go into it through [`Columns`]; the
//! sink reads them back through [`EventView`]. [`dedup`] keeps, for each
//! `(user_id, event_time)`, the last row in (file order, line order).

use contract::{Event, EventType, COLUMNS};
use polars::prelude::*;

/// Column names of a batch frame beyond the contract's: the file's index in
/// its batch and the row's physical line.
pub const FILE_COLUMN: &str = "file_index";
pub const LINE_COLUMN: &str = "line";
/// The row's columns beyond the contract's, as a JSON object (null when
/// its file had none): `events._rescued`.
pub const RESCUED_COLUMN: &str = "_rescued";

/// The explicit schema of a batch frame.
pub fn schema() -> Schema {
    let mut fields =
        vec![Field::new(FILE_COLUMN.into(), DataType::UInt32), Field::new(LINE_COLUMN.into(), DataType::UInt64)];
    for name in COLUMNS {
        let dtype = match name {
            "user_id" | "product_id" => DataType::Int32,
            "product_price" => DataType::Int64,                               // cents
            "event_time" => DataType::Datetime(TimeUnit::Microseconds, None), // UTC
            _ => DataType::String,
        };
        fields.push(Field::new(name.into(), dtype));
    }
    fields.push(Field::new(RESCUED_COLUMN.into(), DataType::String));
    Schema::from_iter(fields)
}

/// Column builders of one part's frame: text goes straight into Polars'
/// buffers, one copy per field and no allocation per row.
pub struct Columns {
    file: Vec<u32>,
    line: Vec<u64>,
    user_id: Vec<i32>,
    user_name: StringChunkedBuilder,
    user_email: StringChunkedBuilder,
    event_type: Vec<&'static str>,
    product_id: Vec<i32>,
    product_name: StringChunkedBuilder,
    product_category: StringChunkedBuilder,
    price: Vec<i64>,
    time: Vec<i64>,
    rescued: StringChunkedBuilder,
}

impl std::fmt::Debug for Columns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Columns").field("rows", &self.file.len()).finish_non_exhaustive()
    }
}

impl Default for Columns {
    fn default() -> Self {
        Self::new()
    }
}

impl Columns {
    pub fn new() -> Self {
        let text = |name: &str| StringChunkedBuilder::new(name.into(), 0);
        Columns {
            file: Vec::new(),
            line: Vec::new(),
            user_id: Vec::new(),
            user_name: text("user_name"),
            user_email: text("user_email"),
            event_type: Vec::new(),
            product_id: Vec::new(),
            product_name: text("product_name"),
            product_category: text("product_category"),
            price: Vec::new(),
            time: Vec::new(),
            rescued: text(RESCUED_COLUMN),
        }
    }

    pub fn push(&mut self, file: u32, line: u64, row: &Event<'_>, rescued: Option<&str>) {
        self.file.push(file);
        self.line.push(line);
        self.user_id.push(row.user_id);
        self.user_name.append_value(row.user_name);
        self.user_email.append_value(row.user_email);
        self.event_type.push(row.event_type.as_str());
        self.product_id.push(row.product_id);
        self.product_name.append_value(row.product_name);
        self.product_category.append_value(row.product_category);
        self.price.push(row.price_cents);
        self.time.push(row.event_time_micros);
        self.rescued.append_option(rescued);
    }

    pub fn finish(self) -> DataFrame {
        let height = self.file.len();
        let columns = vec![
            Column::new(FILE_COLUMN.into(), self.file),
            Column::new(LINE_COLUMN.into(), self.line),
            Column::new("user_id".into(), self.user_id),
            self.user_name.finish().into_column(),
            self.user_email.finish().into_column(),
            Column::new("event_type".into(), self.event_type),
            Column::new("product_id".into(), self.product_id),
            self.product_name.finish().into_column(),
            self.product_category.finish().into_column(),
            Column::new("product_price".into(), self.price),
            Int64Chunked::from_vec("event_time".into(), self.time)
                .into_datetime(TimeUnit::Microseconds, None)
                .into_column(),
            self.rescued.finish().into_column(),
        ];
        DataFrame::new(height, columns).expect("the columns are built with equal lengths")
    }
}

/// An empty frame of the batch schema.
pub fn empty_frame() -> DataFrame {
    Columns::new().finish()
}

/// The rows of a batch after deduplication, and how many rows of each file
/// lost to a later row with the same key.
#[derive(Debug)]
pub struct Deduped {
    pub frame: DataFrame,
    pub duplicates: Vec<u64>,
}

/// Concatenates the files' frames in file order and keeps, for each
/// `(user_id, event_time)`, the last row in (file order, line order); the
/// rows come out sorted by key (the merge's order, for index locality).
///
/// One stable sort of the two key columns does both: rows of one key end up
/// next to each other in (file, line) order, so the last of each run is the
/// one kept, and a single gather of every column takes the kept rows in key
/// order (a hashed unique followed by a sort gathered every column twice).
pub fn dedup(frames: Vec<DataFrame>, files: usize) -> PolarsResult<Deduped> {
    let mut all = empty_frame();
    for frame in &frames {
        all.vstack_mut(frame)?;
    }
    // `all` shares the files' buffers; dropped here, they are freed when
    // `all` is rechunked below instead of living on beside its copy.
    drop(frames);
    let before = rows_per_file(&all, files)?;
    let users = all.column("user_id")?.as_materialized_series().rechunk();
    let times = all.column("event_time")?.as_materialized_series().to_physical_repr().rechunk();
    let order = users.arg_sort_multiple(
        &[times.clone().into_column()],
        &SortMultipleOptions::default()
            .with_order_descending_multi([false, false])
            .with_nulls_last_multi([false, false])
            .with_maintain_order(true),
    )?;
    let (users, times) = (users.i32()?, times.i64()?);
    let order = order.rechunk();
    let (Ok(user), Ok(time), Ok(order)) = (users.cont_slice(), times.cont_slice(), order.cont_slice()) else {
        // Keys are never null and the columns were rechunked: not reached.
        polars_bail!(ComputeError: "the dedup's keys are not one contiguous, null-free array")
    };
    let mut last = Vec::with_capacity(order.len());
    for (at, &i) in order.iter().enumerate() {
        let next = order.get(at + 1);
        if next.is_none_or(|&j| user[j as usize] != user[i as usize] || time[j as usize] != time[i as usize]) {
            last.push(i);
        }
    }
    // A gather from one contiguous array per column is several times
    // faster than from the files' chunks, rechunking included.
    all.rechunk_mut_par();
    let frame = all.take(&IdxCa::from_vec(PlSmallStr::EMPTY, last))?;
    let after = rows_per_file(&frame, files)?;
    let duplicates = before.iter().zip(&after).map(|(b, a)| b - a).collect();
    Ok(Deduped { frame, duplicates })
}

fn rows_per_file(frame: &DataFrame, files: usize) -> PolarsResult<Vec<u64>> {
    let mut counts = vec![0u64; files];
    for i in frame.column(FILE_COLUMN)?.u32()?.into_no_null_iter() {
        if let Some(c) = counts.get_mut(i as usize) {
            *c += 1;
        }
    }
    Ok(counts)
}

/// Typed access to the rows of a batch frame, for the sink.
#[derive(Debug)]
pub struct EventView<'a> {
    file: &'a UInt32Chunked,
    line: &'a UInt64Chunked,
    user_id: &'a Int32Chunked,
    user_name: &'a StringChunked,
    user_email: &'a StringChunked,
    event_type: &'a StringChunked,
    product_id: &'a Int32Chunked,
    product_name: &'a StringChunked,
    product_category: &'a StringChunked,
    price: &'a Int64Chunked,
    time: &'a Int64Chunked,
    rescued: &'a StringChunked,
}

impl<'a> EventView<'a> {
    pub fn new(frame: &'a DataFrame) -> PolarsResult<Self> {
        Ok(EventView {
            file: frame.column(FILE_COLUMN)?.u32()?,
            line: frame.column(LINE_COLUMN)?.u64()?,
            user_id: frame.column("user_id")?.i32()?,
            user_name: frame.column("user_name")?.str()?,
            user_email: frame.column("user_email")?.str()?,
            event_type: frame.column("event_type")?.str()?,
            product_id: frame.column("product_id")?.i32()?,
            product_name: frame.column("product_name")?.str()?,
            product_category: frame.column("product_category")?.str()?,
            price: frame.column("product_price")?.i64()?,
            time: frame.column("event_time")?.datetime()?.physical(),
            rescued: frame.column(RESCUED_COLUMN)?.str()?,
        })
    }

    pub fn len(&self) -> usize {
        self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Row `i`, with the index of its file in the batch and its physical
    /// line; `None` past the end (the frame has no nulls).
    pub fn row(&self, i: usize) -> Option<(u32, u64, Event<'a>)> {
        let event_type = match self.event_type.get(i)? {
            "purchase" => EventType::Purchase,
            _ => EventType::View,
        };
        Some((
            self.file.get(i)?,
            self.line.get(i)?,
            Event {
                user_id: self.user_id.get(i)?,
                user_name: self.user_name.get(i)?,
                user_email: self.user_email.get(i)?,
                event_type,
                product_id: self.product_id.get(i)?,
                product_name: self.product_name.get(i)?,
                product_category: self.product_category.get(i)?,
                price_cents: self.price.get(i)?,
                event_time_micros: self.time.get(i)?,
            },
        ))
    }

    /// Row `i`'s key: its user id and event time (microseconds).
    pub fn key(&self, i: usize) -> Option<(i32, i64)> {
        Some((self.user_id.get(i)?, self.time.get(i)?))
    }

    /// Row `i`'s rescued columns, as JSON.
    pub fn rescued(&self, i: usize) -> Option<&'a str> {
        self.rescued.get(i)
    }
}
