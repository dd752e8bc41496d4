//! `streamer verify`: the table against the files, by the oracle.

use std::collections::HashMap;

use anyhow::Context as _;

use serde::Serialize;
use tokio_postgres::Client;

use super::connect;
use crate::checkpoint::FileId;
use crate::config::StateArgs;
use crate::pg::describe;
use crate::watch::file_id;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Loaded files re-read, and loaded files that could not be (gone from
    /// the data folder, or changed since they were loaded).
    pub files_checked: usize,
    pub files_absent: usize,
    pub files_changed: usize,
    /// Keys the oracle gives, found equal, differing, or missing in `events`.
    pub rows_compared: usize,
    pub rows_equal: usize,
    pub rows_differing: usize,
    pub rows_missing: usize,
    /// Rows of `events` whose winner is a file not re-read (another source,
    /// a file no longer here, a newer position) — not checked.
    pub rows_other: usize,
    /// Up to ten differences, described.
    pub examples: Vec<String>,
}

/// One event as the oracle and the table both give it.
type Key = (i32, i64);
type Values = (String, String, String, i32, String, String, i64);

/// What the oracle expects of a key: the values, and where they come from.
#[derive(Debug)]
struct Expected {
    values: Values,
    file_id: i32,
    line: i64,
    mtime: i64,
}

/// Re-reads the files of the source the registry calls loaded that are
/// still in the data folder, unchanged, computes the oracle of
/// docs/architecture.md over them (for each key the last valid row in the
/// global file order, then line order), and compares it with `events`,
/// source positions included.
pub async fn verify(state: &StateArgs) -> anyhow::Result<Verification> {
    let client = connect(&state.url()?).await.map_err(anyhow::Error::msg)?;
    let source = state.source()?;
    let files = client
        .query(
            "SELECT file_id, file_name, file_size, file_mtime_ns FROM source_files WHERE source = $1 AND state = 'loaded' \
             ORDER BY file_mtime_ns, file_name COLLATE \"C\", file_id",
            &[&source],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading the file registry: {}", describe(&e)))?;
    let mut out = Verification::default();
    let mut oracle: HashMap<Key, Expected> = HashMap::new();
    let mut checked: HashMap<i32, usize> = HashMap::new();
    for (rank, r) in files.iter().enumerate() {
        let (file_id, name, size, mtime): (i32, String, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let path = state.data_dir.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            out.files_absent += 1;
            continue;
        };
        let id = file_id_of(&name, &meta);
        if id.size as i64 != size || id.mtime_ns != mtime {
            out.files_changed += 1;
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(part) = crate::batch::read_whole(&bytes, 0) {
            let view = crate::batch::EventView::new(&part.frame)?;
            for (_, line, r) in (0..view.len()).filter_map(|i| view.row(i)) {
                let values = (
                    r.user_name.to_owned(),
                    r.user_email.to_owned(),
                    r.event_type.as_str().to_owned(),
                    r.product_id,
                    r.product_name.to_owned(),
                    r.product_category.to_owned(),
                    r.price_cents,
                );
                oracle.insert((r.user_id, r.event_time_micros), Expected { values, file_id, line: line as i64, mtime });
            }
        }
        checked.insert(file_id, rank);
        out.files_checked += 1;
    }
    out.rows_compared = oracle.len();
    compare(&client, &mut oracle, &checked, &mut out).await?;
    out.rows_missing = oracle.len();
    for (key, e) in oracle.iter().take(10usize.saturating_sub(out.examples.len())) {
        out.examples.push(format!("user {} at {} µs: missing from the table, files {:?}", key.0, key.1, e.values));
    }
    Ok(out)
}

fn file_id_of(name: &str, meta: &std::fs::Metadata) -> FileId {
    file_id(name, meta)
}

async fn compare(
    client: &Client,
    oracle: &mut HashMap<Key, Expected>,
    checked: &HashMap<i32, usize>,
    out: &mut Verification,
) -> anyhow::Result<()> {
    let rows = client
        .query(
            "SELECT user_id, (extract(epoch FROM event_time) * 1000000)::int8, user_name, user_email, event_type, \
             product_id, product_name, product_category, (product_price * 100)::int8, src_file, src_line::int8, src_mtime \
             FROM events",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading events: {}", describe(&e)))?;
    for r in &rows {
        let key: Key = (r.get(0), r.get(1));
        let values: Values = (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
        let (src_file, src_line, src_mtime): (i32, i64, i64) = (r.get(9), r.get(10), r.get(11));
        let Some(e) = oracle.remove(&key) else {
            out.rows_other += 1;
            continue;
        };
        let (expected, file, line) = (e.values, e.file_id, e.line);
        if !checked.contains_key(&src_file) && src_mtime > e.mtime {
            // The stored row comes from a newer file that was not re-read.
            out.rows_other += 1;
            continue;
        }
        let same_place = (src_file, src_line) == (file, line);
        if expected == values && same_place {
            out.rows_equal += 1;
        } else {
            out.rows_differing += 1;
            if out.examples.len() < 10 {
                out.examples.push(format!(
                    "user {} at {} µs: table {values:?} (file {src_file} line {src_line}), files {expected:?} (file {file} line {line})",
                    key.0, key.1
                ));
            }
        }
    }
    Ok(())
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "files        {} re-read; {} no longer in the data folder, {} changed since loaded (not checked)",
            self.files_checked, self.files_absent, self.files_changed
        )?;
        writeln!(
            f,
            "rows         {} compared: {} equal, {} differing, {} missing; {} other rows in events",
            self.rows_compared, self.rows_equal, self.rows_differing, self.rows_missing, self.rows_other
        )?;
        for e in &self.examples {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}
