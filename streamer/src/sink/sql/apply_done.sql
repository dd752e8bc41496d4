-- A whole round (both lanes in one transaction: see applier.rs) consumes
-- what it folded: in its REPEATABLE READ snapshot these statements see
-- exactly the rows it folded, and rows committed since stay for the next
-- round. The lanes' marks go with them.
DELETE FROM metrics_delta;
DELETE FROM counters_delta;
DELETE FROM analytics_rows;
DELETE FROM applier_marks;
UPDATE batches SET applied_at = clock_timestamp() WHERE applied_at IS NULL;
