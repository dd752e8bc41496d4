-- The dashboard's headline figures. Events, revenue and conversion come from
-- the windowed metrics (folded by the analytics applier); files and rejects
-- from the load history.
SELECT coalesce(sum(views + purchases), 0) AS events,
       coalesce(sum(views), 0) AS views,
       coalesce(sum(purchases), 0) AS purchases,
       coalesce(sum(revenue), 0) AS revenue,
       coalesce(round(100.0 * sum(purchases) / nullif(sum(views), 0), 2), 0) AS conversion_pct,
       (SELECT count(*) FROM load_history WHERE status = 'loaded') AS files_loaded,
       (SELECT count(*) FROM load_history WHERE status <> 'loaded') AS files_failed,
       (SELECT coalesce(sum(rows_rejected), 0) FROM load_history) AS rows_rejected
FROM event_metrics_minute
