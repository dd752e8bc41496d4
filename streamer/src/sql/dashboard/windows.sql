-- Revenue and conversion per category in the last three windows.
SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS window_start,
       product_category, views, purchases, users, revenue,
       coalesce(round(100.0 * purchases / nullif(views, 0), 2), 0) AS conversion_pct
FROM event_metrics_minute
WHERE window_start >= (SELECT min(w) FROM (SELECT DISTINCT window_start AS w FROM event_metrics_minute ORDER BY 1 DESC LIMIT 3) t)
ORDER BY window_start DESC, revenue DESC, product_category
