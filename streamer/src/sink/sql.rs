//! The SQL of a batch's transaction. Fixed statements live in `sql/*.sql`
//! (readable and runnable in psql); the merge is built from the contract's
//! columns by [`merge_sql`], a pure function tested as exact text. Values are
//! always bound or COPY'd, never formatted into SQL.

use contract::COLUMNS;

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
    let cols = ["chunk", "file_index", "line"].iter().chain(&COLUMNS).copied().collect::<Vec<_>>().join(", ");
    format!("COPY {table} ({cols}, _rescued) FROM STDIN (FORMAT binary)")
}
pub const REJECTED_COPY: &str =
    "COPY rejected_rows (checkpoint_id, batch_id, file_name, line_number, raw_line, reason) FROM STDIN (FORMAT binary)";
pub const METRICS_COPY: &str = "COPY metrics_delta (batch_seq, window_start, product_category, views, purchases, \
                                revenue, user_ids, user_rows) FROM STDIN (FORMAT binary)";
pub const COUNTERS_COPY: &str = "COPY counters_delta (batch_seq, user_ids, categories, product_ids, views, purchases) \
                                 FROM STDIN (FORMAT binary)";

/// Rows of this batch's files that replaced a stored row with other
/// values, per file (the trigger of db/005 logs them).
pub const REPLACED_PER_FILE: &str = "SELECT src_file, count(*) FROM analytics_rows \
                                     WHERE batch_seq = $1 AND kind = 'replaced' GROUP BY src_file";

/// Whether a new row's position is after the stored row's: file order
/// (modification time, then name and registry id), then line. Between two
/// files of one modification time `$4` decides: the pairs (a batch's file,
/// an older file of the same time) as `file_id << 32 | older_file_id`
/// ([`SAME_TIME_OLDER`]).
pub const NEWER: &str = "CASE WHEN EXCLUDED.src_mtime <> e.src_mtime THEN EXCLUDED.src_mtime > e.src_mtime \
                         WHEN EXCLUDED.src_file = e.src_file THEN EXCLUDED.src_line > e.src_line \
                         ELSE ((EXCLUDED.src_file::int8 << 32) | e.src_file) = ANY($4::int8[]) END";

/// For the batch's files (`$1`), every registered file of the same
/// modification time that is older in the file order (by name, then
/// registry id, as `source_file_after` of db/005 says), as the pairs
/// [`NEWER`] takes. Usually none.
pub const SAME_TIME_OLDER: &str = "SELECT coalesce(array_agg((n.file_id::int8 << 32) | o.file_id), '{}') \
     FROM source_files n JOIN source_files o ON o.file_mtime_ns = n.file_mtime_ns \
     AND (o.file_name COLLATE \"C\", o.file_id) < (n.file_name COLLATE \"C\", n.file_id) \
     WHERE n.file_id = ANY($1)";

/// The columns of a row the analytics depend on, in `analytics_rows` order.
const ANALYTICS_COLS: &str = "user_id, event_time, event_type, product_id, product_category, product_price";

/// The merge of the staged rows into `events`, in one statement:
/// - with several chunks the row of the latest chunk wins (`DISTINCT ON`;
///   each chunk is unique within itself);
/// - `$1` are the batch's file ids and `$2` their modification times, by the
///   file's index in the batch; `$3` is the batch's `batch_seq`; `$4` the
///   file order between files of one time ([`NEWER`]);
/// - `INSERT … ON CONFLICT DO UPDATE … WHERE` the staged row's source
///   position is newer ([`NEWER`]), in key order for index locality;
/// - every staged row that did not end up in `events` (a stored row was
///   newer, or a later chunk had its key) goes to `analytics_rows` as
///   `lost`, so that the batch's Polars deltas can be corrected;
/// - returns per file: rows kept after deduplication, inserted, and written
///   over a stored row (whether or not its values changed).
pub fn merge_sql(several_chunks: bool) -> String {
    let cols = COLUMNS.join(", ");
    let set = upsert_set();
    let (latest, source, cross_chunk) = if several_chunks {
        (
            "latest AS (SELECT DISTINCT ON (user_id, event_time) * FROM events_stage \
             ORDER BY user_id, event_time, chunk DESC), ",
            "latest",
            format!(
                " UNION ALL SELECT $3::int8, 'lost', -1, ($1::int4[])[s.file_index + 1], s.{} FROM events_stage s \
                 WHERE NOT EXISTS (SELECT 1 FROM latest l WHERE l.user_id = s.user_id AND l.event_time = s.event_time \
                 AND l.chunk = s.chunk)",
                ANALYTICS_COLS.replace(", ", ", s.")
            ),
        )
    } else {
        ("", "events_stage", String::new())
    };
    format!(
        "WITH {latest}src AS (SELECT s.*, ($1::int4[])[s.file_index + 1] AS src_file, \
         ($2::int8[])[s.file_index + 1] AS src_mtime FROM {source} s), \
         merged AS (INSERT INTO events AS e ({cols}, src_mtime, src_file, src_line, _rescued) \
         SELECT {cols}, src_mtime, src_file, line, _rescued::jsonb FROM src ORDER BY user_id, event_time \
         ON CONFLICT (user_id, event_time) DO UPDATE SET {set} WHERE {NEWER} \
         RETURNING e.user_id, e.event_time, (e.xmax = 0) AS inserted), \
         counted AS (SELECT s.*, m.inserted FROM src s LEFT JOIN merged m USING (user_id, event_time)), \
         lost AS (INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, {ANALYTICS_COLS}) \
         SELECT $3::int8, 'lost', -1, src_file, {ANALYTICS_COLS} FROM counted WHERE inserted IS NULL{cross_chunk}) \
         SELECT file_index, count(*), count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) \
         FROM counted GROUP BY file_index"
    )
}

/// The merge on Citus, from the loader's distributed stage `table`
/// (co-located with `events`), so that Citus pushes the upsert down whole to
/// the shards: each worker upserts its shards from its own stage shards, in
/// parallel, and sends back only what the `RETURNING` counts need. The
/// upsert is [`merge_sql`]'s, with its parameters but the batch's number
/// (the file order is `$3`), and the `event_id` the stage drew on the
/// coordinator (no sequence on the workers); it
/// returns per file id (not index) the rows inserted and the rows written
/// over a stored row.
/// The rows that did not end up in `events` are [`citus_lost_sql`]'s.
pub fn citus_merge_sql(table: &str, several_chunks: bool) -> String {
    let cols = COLUMNS.join(", ");
    let source = if several_chunks {
        format!("(SELECT DISTINCT ON (user_id, event_time) * FROM {table} ORDER BY user_id, event_time, chunk DESC)")
    } else {
        table.to_owned()
    };
    format!(
        "WITH merged AS (INSERT INTO events AS e (event_id, {cols}, src_mtime, src_file, src_line, _rescued) \
         SELECT s.event_id, {cols}, ($2::int8[])[s.file_index + 1], ($1::int4[])[s.file_index + 1], s.line, \
         s._rescued::jsonb FROM {source} s ORDER BY s.user_id, s.event_time \
         ON CONFLICT (user_id, event_time) DO UPDATE SET {} WHERE {} \
         RETURNING e.src_file, (e.xmax = 0) AS inserted) \
         SELECT src_file, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) \
         FROM merged GROUP BY src_file",
        upsert_set(),
        NEWER.replace("$4", "$3")
    )
}

/// On Citus, after [`citus_merge_sql`]: every staged row whose key in
/// `events` does not hold its position (a stored row was newer, or a later
/// chunk had its key) goes to `analytics_rows` as `lost`; `$1` are the
/// batch's file ids by index, `$2` its `batch_seq`. A join of co-located
/// tables on the distribution column: it runs on the workers.
pub fn citus_lost_sql(table: &str) -> String {
    format!(
        "INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, {ANALYTICS_COLS}) \
         SELECT $2::int8, 'lost', -1, ($1::int4[])[s.file_index + 1], s.{} FROM {table} s \
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
        let body = |source: &str| {
            format!(
                "src AS (SELECT s.*, ($1::int4[])[s.file_index + 1] AS src_file, ($2::int8[])[s.file_index + 1] AS src_mtime \
                 FROM {source} s), \
                 merged AS (INSERT INTO events AS e ({cols}, src_mtime, src_file, src_line, _rescued) \
                 SELECT {cols}, src_mtime, src_file, line, _rescued::jsonb FROM src ORDER BY user_id, event_time \
                 ON CONFLICT (user_id, event_time) DO UPDATE SET {set} WHERE {NEWER} \
                 RETURNING e.user_id, e.event_time, (e.xmax = 0) AS inserted), \
                 counted AS (SELECT s.*, m.inserted FROM src s LEFT JOIN merged m USING (user_id, event_time)), \
                 lost AS (INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, {ANALYTICS_COLS}) \
                 SELECT $3::int8, 'lost', -1, src_file, {ANALYTICS_COLS} FROM counted WHERE inserted IS NULL"
            )
        };
        let tail =
            " SELECT file_index, count(*), count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) \
                    FROM counted GROUP BY file_index";
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(squash(&merge_sql(false)), squash(&format!("WITH {}){tail}", body("events_stage"))));
        let latest = "latest AS (SELECT DISTINCT ON (user_id, event_time) * FROM events_stage \
                      ORDER BY user_id, event_time, chunk DESC), ";
        let cross = " UNION ALL SELECT $3::int8, 'lost', -1, ($1::int4[])[s.file_index + 1], s.user_id, s.event_time, \
                     s.event_type, s.product_id, s.product_category, s.product_price FROM events_stage s \
                     WHERE NOT EXISTS (SELECT 1 FROM latest l WHERE l.user_id = s.user_id AND l.event_time = s.event_time \
                     AND l.chunk = s.chunk)";
        assert_eq!(squash(&merge_sql(true)), squash(&format!("WITH {latest}{}{cross}){tail}", body("latest"))));
    }

    #[test]
    fn the_citus_merge_reads_the_distributed_stage_and_draws_no_sequence() {
        let one = citus_merge_sql("events_stage_3", false);
        assert!(one.contains("INSERT INTO events AS e (event_id, user_id,"), "{one}");
        assert!(one.contains("SELECT s.event_id, user_id,"), "{one}");
        assert!(one.contains("FROM events_stage_3 s ORDER BY s.user_id, s.event_time ON CONFLICT"), "{one}");
        let newer = NEWER.replace("ANY($4", "ANY($3");
        assert!(one.contains(&format!("WHERE {newer} RETURNING e.src_file, (e.xmax = 0) AS inserted")), "{one}");
        let several = citus_merge_sql("events_stage_3", true);
        assert!(several.contains(
            "FROM (SELECT DISTINCT ON (user_id, event_time) * FROM events_stage_3 \
             ORDER BY user_id, event_time, chunk DESC) s"
        ));
        let lost = citus_lost_sql("events_stage_3");
        assert!(lost.contains("FROM events_stage_3 s LEFT JOIN events e ON e.user_id = s.user_id"), "{lost}");
        assert!(lost.contains("AND e.src_file = ($1::int4[])[s.file_index + 1] AND e.src_line = s.line"), "{lost}");
        assert_eq!(
            stage_copy("events_stage_3"),
            "COPY events_stage_3 (chunk, file_index, line, user_id, user_name, user_email, event_type, product_id, \
             product_name, product_category, product_price, event_time, _rescued) FROM STDIN (FORMAT binary)"
        );
    }

    #[test]
    fn a_newer_position_is_decided_by_time_then_file_then_line() {
        assert!(NEWER.starts_with("CASE WHEN EXCLUDED.src_mtime <> e.src_mtime"));
        assert!(NEWER.contains("((EXCLUDED.src_file::int8 << 32) | e.src_file) = ANY($4::int8[])"));
    }
}
