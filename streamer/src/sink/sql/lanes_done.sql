-- The batches both lanes have folded are done: their deltas and their marks
-- are deleted and their applied_at set, all in one statement (one snapshot,
-- so a lane that commits meanwhile adds nothing to it). Batches one lane
-- has not folded yet keep their deltas for that lane.
WITH done AS (SELECT batch_seq FROM applier_marks GROUP BY batch_seq HAVING count(*) = 2),
metrics AS (DELETE FROM metrics_delta d USING done WHERE d.batch_seq = done.batch_seq),
counters AS (DELETE FROM counters_delta d USING done WHERE d.batch_seq = done.batch_seq),
rows AS (DELETE FROM analytics_rows d USING done WHERE d.batch_seq = done.batch_seq),
marks AS (DELETE FROM applier_marks d USING done WHERE d.batch_seq = done.batch_seq)
UPDATE batches b SET applied_at = clock_timestamp() FROM done
WHERE b.batch_seq = done.batch_seq AND b.applied_at IS NULL
