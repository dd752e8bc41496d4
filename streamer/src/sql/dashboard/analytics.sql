-- How far the derived tables are behind events: committed batches the
-- analytics applier has not folded in yet (none runs while every streamer
-- has ANALYTICS=false), and the age of the oldest.
SELECT count(*) AS batches_behind,
       coalesce(round(extract(epoch FROM clock_timestamp() - min(committed_at))), 0) AS seconds_behind
FROM batches
WHERE applied_at IS NULL
