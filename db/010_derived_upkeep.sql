-- 010: the derived tables' upkeep.
--
-- Room on the derived tables' pages for their rows' next versions.
-- The applier updates the same rows round after round (a window's cells, a
-- user's counters), and never an indexed column. With free space on the
-- page, PostgreSQL writes such an update as a heap-only tuple (HOT): no new
-- entry in the primary key's index, less WAL, and the old version is pruned
-- on the page instead of waiting for VACUUM. Full pages (the default
-- fillfactor 100) send nearly every update to another page and add an index
-- entry each time. The cells and the (user, category) counters are updated
-- most; the (user, product) pairs are mostly new at first, so they keep less
-- room. Measured in docs/performance_metrics.md ("Where the limits are").
-- The setting applies to pages written from now on; a table filled before
-- takes it for all its pages at its next rewrite (VACUUM FULL, CLUSTER).

ALTER TABLE event_metrics_minute SET (fillfactor = 50);
ALTER TABLE user_category_counts SET (fillfactor = 60);
ALTER TABLE user_product_counts SET (fillfactor = 80);

-- counters_delta: db/005 wrote one row per chunk and table. A batch's loader
-- now merges its chunks' counters and writes one row per table, each (user,
-- key) pair once, sorted (more only past its cap: see docs/architecture.md,
-- step 7), and the applier upserts a batch of one row as it is. Rows
-- written before this migration are grouped first, as before.
COMMENT ON TABLE counters_delta IS
    'A batch''s contribution to the counters: per (user, category) or (user, product) its view and purchase rows, '
    'as parallel arrays; one row per batch and table, each pair once, sorted (several past the loader''s cap).';

-- Applied once (schema_migrations).
