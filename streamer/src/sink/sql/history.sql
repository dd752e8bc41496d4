-- One load-history row per file of a committed batch ($3.. are parallel
-- arrays, one element per file).
INSERT INTO load_history (checkpoint_id, batch_id, batch_seq, file_name, file_size, file_mtime, status, reason,
                          rows_read, rows_inserted, rows_updated, rows_unchanged, rows_duplicate, rows_rejected,
                          reingest, batch_started_at, committed_at)
SELECT $1, $2, $15, f.*, $16, clock_timestamp()
FROM UNNEST($3::text[], $4::int8[], $5::timestamptz[], $6::text[], $7::text[], $8::int8[], $9::int8[],
            $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::bool[]) AS f
