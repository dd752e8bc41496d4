-- A loader session's staging table on Citus: the columns of the session's
-- TEMP stage (stage.sql, created just before) plus event_id, distributed by
-- user_id and co-located with events, so that each shard's merge reads its
-- stage shard on its own worker. One per stage slot (`STAGE_SLOT`), which
-- the session holds by an advisory lock; created by the first session to
-- take the slot, emptied in every batch's transaction by a DELETE (a
-- TRUNCATE of 32 shards costs more, and its table lock would be held by a
-- transaction a dead worker left prepared, stalling the slot's next batch
-- until Citus recovers it); autovacuum takes the dead rows away. Unlogged:
-- nothing in it outlives the batch that staged it.
CREATE UNLOGGED TABLE IF NOT EXISTS events_stage_SLOT (
    LIKE events_stage,
    -- Drawn on the coordinator as the COPY routes the row: the merge on the
    -- workers may not call a sequence (Citus pushes down no volatile
    -- function); a key that is stored already keeps its own.
    event_id BIGINT NOT NULL DEFAULT nextval('events_event_id_seq')
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
SELECT create_distributed_table('events_stage_SLOT', 'user_id', colocate_with => 'events')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'events_stage_SLOT'::regclass);
