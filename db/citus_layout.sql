-- The Citus layout: applied by the streamer once, in one transaction, when
-- its database has the citus extension and `events` is not distributed yet
-- (after the numbered migrations; docs/architecture.md, "Citus as the sink").
--
-- Distributed by user_id and co-located with `events` (a user's rows, the
-- replaced versions the trigger logs and the user's counters live in one
-- shard group on one worker): events, analytics_rows, user_category_counts,
-- user_product_counts. A reference table (a copy on every node):
-- analytics_settings. On the coordinator alone: the file registry
-- source_files (claims lock its rows FOR UPDATE SKIP LOCKED, which Citus
-- would turn into one lock on a reference table's whole shard, so batches
-- would claim one at a time), load_history, rejected_rows, batches,
-- metrics_delta, counters_delta, event_metrics_minute, applier_marks,
-- schema_migrations.

-- The trigger on events logs replaced rows into the co-located shard of
-- analytics_rows (Citus asks for this setting to distribute a table with
-- triggers; it is only read when a trigger is created).
SET LOCAL citus.enable_unsafe_triggers = on;

-- A distributed table's unique keys contain its distribution column; the
-- upsert key (user_id, event_time) does already.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (user_id, event_id);

-- metrics_window(t) reads analytics_settings: so that GROUP BY
-- metrics_window(event_time) runs on the workers, it is distributed and
-- may read the worker's own copy of that reference table inside a query on
-- a shard (Citus's warning for this setting is about distributed tables,
-- whose shards can move; a reference table has a copy on every node).
ALTER FUNCTION metrics_window(TIMESTAMPTZ) SET citus.allow_nested_distributed_execution = on;

SELECT create_reference_table('analytics_settings');
SELECT create_distributed_function('metrics_window(timestamptz)');
SELECT create_distributed_table('events', 'user_id');
SELECT create_distributed_table('analytics_rows', 'user_id', colocate_with => 'events');
SELECT create_distributed_table('user_category_counts', 'user_id', colocate_with => 'events');
SELECT create_distributed_table('user_product_counts', 'user_id', colocate_with => 'events');
