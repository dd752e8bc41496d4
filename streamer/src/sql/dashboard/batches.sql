-- The last ten batches committed.
SELECT batch_id,
       to_char(max(committed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS committed_at,
       count(*) AS files,
       sum(rows_read) AS rows_read,
       sum(rows_inserted) AS inserted,
       sum(rows_updated) AS updated,
       sum(rows_duplicate) AS duplicates,
       sum(rows_rejected) AS rejected,
       round(1000 * extract(epoch FROM max(committed_at) - min(batch_started_at))) AS duration_ms
FROM load_history
GROUP BY checkpoint_id, batch_id
ORDER BY max(committed_at) DESC, batch_id DESC
LIMIT 10
