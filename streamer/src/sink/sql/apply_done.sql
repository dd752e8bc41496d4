-- What the applier folded is consumed: in its REPEATABLE READ snapshot these
-- statements see exactly the rows it folded, and rows committed since stay
-- for the next round.
DELETE FROM metrics_delta;
DELETE FROM counters_delta;
DELETE FROM analytics_rows;
UPDATE batches SET applied_at = clock_timestamp() WHERE applied_at IS NULL;
