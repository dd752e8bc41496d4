-- Rows loaded and end-to-end latency (publish to commit) per minute of the
-- last 15 minutes.
SELECT to_char(date_trunc('minute', committed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS minute,
       sum(rows_read) AS rows,
       count(*) AS files,
       round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM committed_at - file_mtime))::numeric) AS latency_p50_ms,
       round(1000 * percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM committed_at - file_mtime))::numeric) AS latency_p95_ms
FROM load_history
WHERE committed_at > now() - interval '15 minutes'
GROUP BY 1
ORDER BY 1
