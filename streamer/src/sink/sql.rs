//! The SQL of a batch's transaction. Fixed statements live in `sql/*.sql`
//! (readable and runnable in psql); the merge is built from the contract's
//! columns by [`merge_sql`], a pure function tested as exact text. Values are
//! always bound or COPY'd, never formatted into SQL.

use contract::COLUMNS;
use tokio_postgres::types::Type;

/// The loader session's staging table.
pub const STAGE_DDL: &str = include_str!("sql/stage.sql");
/// A loader session's staging table on Citus, `SLOT` standing for its slot.
pub const CITUS_STAGE_DDL: &str = include_str!("sql/citus_stage.sql");
/// The load history of a batch's files.
pub const HISTORY: &str = include_str!("sql/history.sql");
/// The registry's state of a batch's files.
pub const SETTLE: &str = include_str!("sql/settle.sql");
/// The batch's own row.
pub const BATCH: &str = include_str!("sql/batch.sql");

/// The binary COPY into staging table `table`, its columns in `stage.sql`
/// order (a Citus stage draws `event_id` itself).
pub fn stage_copy(table: &str) -> String {
    let cols = std::iter::once("chunk").chain(source_columns()).collect::<Vec<_>>().join(", ");
    format!("COPY {table} ({cols}) FROM STDIN (FORMAT binary)")
}

/// The stage's columns but `chunk` (a merge's source rows): each row's file
/// and line, the contract's columns, the rescued ones.
fn source_columns() -> impl Iterator<Item = &'static str> {
    ["file_index", "line"].into_iter().chain(COLUMNS).chain(["_rescued"])
}
/// The binary COPY of a chunk straight into `events`, with each row's source
/// position: how a chunk none of whose keys is stored yet is loaded (the
/// usual case; COPY's own work, no stage and no upsert). A stored key makes
/// it fail with a unique violation, and the chunk is staged and merged.
pub fn insert_copy() -> String {
    format!("COPY events ({}, src_mtime, src_file, src_line, _rescued) FROM STDIN (FORMAT binary)", COLUMNS.join(", "))
}
/// The rows of a chunk whose key `events` holds (`$1` the chunk's user ids
/// and `$2` their event times, by row), as 0-based row numbers: one probe
/// of the key's index per row. Before a chunk that does not try straight
/// into `events` (`Loader::split`).
pub const STORED_KEYS: &str = "SELECT (k.i - 1)::int4 \
     FROM unnest($1::int4[], $2::timestamptz[]) WITH ORDINALITY AS k(user_id, event_time, i) \
     WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = k.user_id AND e.event_time = k.event_time)";
/// The key constraint of `events`, whose violation sends a chunk to the merge.
pub const KEY_CONSTRAINT: &str = "events_user_id_event_time_key";
pub const REJECTED_COPY: &str =
    "COPY rejected_rows (checkpoint_id, batch_id, file_name, line_number, raw_line, reason) FROM STDIN (FORMAT binary)";
pub const METRICS_COPY: &str = "COPY metrics_delta (batch_seq, window_start, product_category, views, purchases, \
                                revenue, user_ids, user_rows) FROM STDIN (FORMAT binary)";
pub const COUNTERS_COPY: &str = "COPY counters_delta (batch_seq, flush, user_ids, categories, product_ids, views, \
                                 purchases) FROM STDIN (FORMAT binary)";

/// Rows of this batch's files that replaced a stored row with other
/// values, per file (the trigger of db/005 logs them).
pub const REPLACED_PER_FILE: &str = "SELECT src_file, count(*) FROM analytics_rows \
                                     WHERE batch_seq = $1 AND kind = 'replaced' GROUP BY src_file";

/// Whether a new row's position is after the stored row's: file order
/// (modification time, then name and registry id), then line. Between two
/// files of one modification time `$4` decides: the pairs (a batch's file,
/// an older file of the same time) as `file_id << 32 | older_file_id`
/// (read with the claim, and again by [`same_time_older`] before the
/// COMMIT when a staged row lost: a pair gained meanwhile makes the batch
/// run again).
pub const NEWER: &str = "CASE WHEN EXCLUDED.src_mtime <> e.src_mtime THEN EXCLUDED.src_mtime > e.src_mtime \
                         WHEN EXCLUDED.src_file = e.src_file THEN EXCLUDED.src_line > e.src_line \
                         ELSE ((EXCLUDED.src_file::int8 << 32) | e.src_file) = ANY($4::int8[]) END";

/// For the registered file `f`, every registered file of the same
/// modification time that is older in the file order (by name, then
/// registry id, as `source_file_after` of db/005 says), as an array of the
/// pairs [`NEWER`] takes. Usually empty. The claim reads it per file.
pub const OLDER_OF_SAME_TIME: &str = "ARRAY(SELECT (f.file_id::int8 << 32) | o.file_id FROM source_files o \
     WHERE o.file_mtime_ns = f.file_mtime_ns \
     AND (o.file_name COLLATE \"C\", o.file_id) < (f.file_name COLLATE \"C\", f.file_id))";

/// [`OLDER_OF_SAME_TIME`] of the batch's files (`$1`), as one array: read
/// again before the COMMIT.
pub fn same_time_older() -> String {
    format!(
        "SELECT coalesce(array_agg(p), '{{}}') FROM source_files f, unnest({OLDER_OF_SAME_TIME}) p \
         WHERE f.file_id = ANY($1)"
    )
}

/// The columns of a row the analytics depend on, in `analytics_rows` order.
const ANALYTICS_COLS: &str = "user_id, event_time, event_type, product_id, product_category, product_price";

/// After a batch merged in several chunks: the changes to its files' counts
/// that make it count as if its chunks had been deduplicated together
/// (`$1` its `batch_seq`), from the rows the trigger logged as superseded.
pub const RECONCILE: &str = include_str!("sql/reconcile.sql");

/// The upsert of the staged rows in `table` into `events`:
/// - `$1` are the batch's file ids and `$2` their modification times, by the
///   file's index in the batch; `$3` the file order between files of one
///   time ([`NEWER`], where it is `$4`);
/// - `INSERT … ON CONFLICT DO UPDATE … WHERE` the staged row's source
///   position is newer ([`NEWER`]), in key order for index locality;
/// - returns per file id the rows inserted and the rows written over a
///   stored row (whether or not its values changed).
///
/// On PostgreSQL `table` is the loader's TEMP stage holding one chunk
/// (unique keys), merged as soon as it is staged; a later chunk's row of the
/// same key writes over it (the trigger logs that as `superseded`, and
/// [`RECONCILE`] counts it). On Citus (`distributed`) it is the loader's
/// distributed stage, co-located with `events`, holding the whole batch
/// (`several_chunks`: the latest chunk's row of a key is merged), so that
/// Citus pushes the upsert down whole to the shards; its rows carry the
/// `event_id` the coordinator drew (no sequence on the workers).
/// The staged rows that did not end up in `events` are [`lost_sql`]'s.
pub fn merge_sql(table: &str, distributed: bool, several_chunks: bool) -> String {
    let source = if several_chunks {
        format!("(SELECT DISTINCT ON (user_id, event_time) * FROM {table} ORDER BY user_id, event_time, chunk DESC) s")
    } else {
        format!("{table} s")
    };
    merge_from(&source, distributed)
}

/// [`merge_sql`] of rows bound as arrays ([`rows_source`] from `$4`, of
/// the stage's column `types` but `chunk`'s) instead of staged: the merge
/// of a chunk's few rows whose key is stored (usually rows re-sent from
/// recent batches), one statement where the stage takes a COPY and the
/// merge.
pub fn merge_rows_sql(types: &[Type]) -> String {
    merge_from(&rows_source(4, types), false)
}

fn merge_from(source: &str, distributed: bool) -> String {
    let cols = COLUMNS.join(", ");
    let (id_col, id_val) = if distributed { ("event_id, ", "s.event_id, ") } else { ("", "") };
    format!(
        "WITH merged AS (INSERT INTO events AS e ({id_col}{cols}, src_mtime, src_file, src_line, _rescued) \
         SELECT {id_val}{cols}, ($2::int8[])[s.file_index + 1], ($1::int4[])[s.file_index + 1], s.line, \
         s._rescued::jsonb FROM {source} ORDER BY s.user_id, s.event_time \
         ON CONFLICT (user_id, event_time) DO UPDATE SET {} WHERE {} \
         RETURNING e.src_file, (e.xmax = 0) AS inserted) \
         SELECT src_file, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) \
         FROM merged GROUP BY src_file",
        upsert_set(),
        NEWER.replace("$4", "$3")
    )
}

/// Rows bound as one array per column of the stage but `chunk`
/// ([`source_columns`], of these `types`), in its order, from parameter
/// `$first` on: a FROM item named `s`, as a stage would be.
pub fn rows_source(first: usize, types: &[Type]) -> String {
    let arrays: Vec<String> =
        types.iter().enumerate().map(|(i, ty)| format!("${}::{}[]", first + i, ty.name())).collect();
    let names: Vec<&str> = source_columns().collect();
    format!("unnest({}) AS s({})", arrays.join(", "), names.join(", "))
}

/// After [`merge_sql`], when fewer rows won than were staged: every staged
/// row whose key in `events` does not hold its position (a stored row was
/// newer, or, on Citus, a later chunk had its key) goes to `analytics_rows`
/// as `lost`; `$1` are the batch's file ids by index, `$2` its `batch_seq`.
/// On Citus a join of co-located tables on the distribution column: it runs
/// on the workers.
pub fn lost_sql(table: &str) -> String {
    lost_from(&format!("{table} s"))
}

/// [`lost_sql`] after [`merge_rows_sql`]: the rows bound as arrays
/// ([`rows_source`] from `$3`).
pub fn lost_rows_sql(types: &[Type]) -> String {
    lost_from(&rows_source(3, types))
}

fn lost_from(source: &str) -> String {
    format!(
        "INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, {ANALYTICS_COLS}) \
         SELECT $2::int8, 'lost', -1, ($1::int4[])[s.file_index + 1], s.{} FROM {source} \
         LEFT JOIN events e ON e.user_id = s.user_id AND e.event_time = s.event_time \
         AND e.src_file = ($1::int4[])[s.file_index + 1] AND e.src_line = s.line \
         WHERE e.user_id IS NULL",
        ANALYTICS_COLS.replace(", ", ", s.")
    )
}

/// `ON CONFLICT DO UPDATE SET`: every column but the key, from the new row.
fn upsert_set() -> String {
    let others = COLUMNS.iter().copied().filter(|c| !matches!(*c, "user_id" | "event_time"));
    let set: Vec<String> = others
        .chain(["src_mtime", "src_file", "src_line", "_rescued"])
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    set.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_is_the_exact_statement() {
        let cols = "user_id, user_name, user_email, event_type, product_id, product_name, product_category, \
                    product_price, event_time";
        let set =
            "user_name = EXCLUDED.user_name, user_email = EXCLUDED.user_email, event_type = EXCLUDED.event_type, \
                   product_id = EXCLUDED.product_id, product_name = EXCLUDED.product_name, \
                   product_category = EXCLUDED.product_category, product_price = EXCLUDED.product_price, \
                   src_mtime = EXCLUDED.src_mtime, src_file = EXCLUDED.src_file, src_line = EXCLUDED.src_line, \
                   _rescued = EXCLUDED._rescued";
        let newer = NEWER.replace("ANY($4", "ANY($3");
        let expected = format!(
            "WITH merged AS (INSERT INTO events AS e ({cols}, src_mtime, src_file, src_line, _rescued) \
             SELECT {cols}, ($2::int8[])[s.file_index + 1], ($1::int4[])[s.file_index + 1], s.line, \
             s._rescued::jsonb FROM events_stage s ORDER BY s.user_id, s.event_time \
             ON CONFLICT (user_id, event_time) DO UPDATE SET {set} WHERE {newer} \
             RETURNING e.src_file, (e.xmax = 0) AS inserted) \
             SELECT src_file, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) \
             FROM merged GROUP BY src_file"
        );
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(squash(&merge_sql("events_stage", false, false)), squash(&expected));
        assert_eq!(
            squash(&lost_sql("events_stage")),
            squash(
                "INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, user_id, event_time, event_type, \
                 product_id, product_category, product_price) SELECT $2::int8, 'lost', -1, \
                 ($1::int4[])[s.file_index + 1], s.user_id, s.event_time, s.event_type, s.product_id, \
                 s.product_category, s.product_price FROM events_stage s LEFT JOIN events e \
                 ON e.user_id = s.user_id AND e.event_time = s.event_time \
                 AND e.src_file = ($1::int4[])[s.file_index + 1] AND e.src_line = s.line WHERE e.user_id IS NULL"
            )
        );
    }

    #[test]
    fn the_merge_of_bound_rows_is_the_stage_merge_over_arrays() {
        let source = "unnest($4::int4[], $5::int4[], $6::int4[], $7::text[], $8::text[], $9::text[], $10::int4[], \
                      $11::text[], $12::text[], $13::numeric[], $14::timestamptz[], $15::text[]) AS s(file_index, \
                      line, user_id, user_name, user_email, event_type, product_id, product_name, product_category, \
                      product_price, event_time, _rescued)";
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let types = &super::super::STAGE_TYPES[1..];
        assert_eq!(squash(&rows_source(4, types)), squash(source));
        let stage = merge_sql("events_stage", false, false);
        assert_eq!(merge_rows_sql(types), stage.replace("events_stage s", &rows_source(4, types)));
        let lost = lost_sql("events_stage");
        assert_eq!(lost_rows_sql(types), lost.replace("events_stage s", &rows_source(3, types)));
        assert!(lost_rows_sql(types).contains("FROM unnest($3::int4[], $4::int4[],"), "{}", lost_rows_sql(types));
    }

    #[test]
    fn the_citus_merge_reads_the_distributed_stage_and_draws_no_sequence() {
        let one = merge_sql("events_stage_3", true, false);
        assert!(one.contains("INSERT INTO events AS e (event_id, user_id,"), "{one}");
        assert!(one.contains("SELECT s.event_id, user_id,"), "{one}");
        assert!(one.contains("FROM events_stage_3 s ORDER BY s.user_id, s.event_time ON CONFLICT"), "{one}");
        let newer = NEWER.replace("ANY($4", "ANY($3");
        assert!(one.contains(&format!("WHERE {newer} RETURNING e.src_file, (e.xmax = 0) AS inserted")), "{one}");
        let several = merge_sql("events_stage_3", true, true);
        assert!(several.contains(
            "FROM (SELECT DISTINCT ON (user_id, event_time) * FROM events_stage_3 \
             ORDER BY user_id, event_time, chunk DESC) s"
        ));
        let lost = lost_sql("events_stage_3");
        assert!(lost.contains("FROM events_stage_3 s LEFT JOIN events e ON e.user_id = s.user_id"), "{lost}");
        assert!(lost.contains("AND e.src_file = ($1::int4[])[s.file_index + 1] AND e.src_line = s.line"), "{lost}");
        assert_eq!(
            stage_copy("events_stage_3"),
            "COPY events_stage_3 (chunk, file_index, line, user_id, user_name, user_email, event_type, product_id, \
             product_name, product_category, product_price, event_time, _rescued) FROM STDIN (FORMAT binary)"
        );
    }

    #[test]
    fn the_straight_insert_copies_the_columns_and_the_source_position() {
        assert_eq!(
            insert_copy(),
            "COPY events (user_id, user_name, user_email, event_type, product_id, product_name, product_category, \
             product_price, event_time, src_mtime, src_file, src_line, _rescued) FROM STDIN (FORMAT binary)"
        );
    }

    #[test]
    fn a_newer_position_is_decided_by_time_then_file_then_line() {
        assert!(NEWER.starts_with("CASE WHEN EXCLUDED.src_mtime <> e.src_mtime"));
        assert!(NEWER.contains("((EXCLUDED.src_file::int8 << 32) | e.src_file) = ANY($4::int8[])"));
    }
}
