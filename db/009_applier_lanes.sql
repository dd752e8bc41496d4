-- 009: the applier folds a big round in two sessions at once, its two
-- lanes (docs/architecture.md, "Derived tables: the applier"): lane 1 folds
-- event_metrics_minute and user_category_counts, lane 2 user_product_counts.
-- A lane records here, in the same transaction as its folds, each batch it
-- folded. Once both lanes have a batch, one statement deletes its deltas and
-- its marks and sets its applied_at. The lanes only insert here, so they
-- never write one row.
-- Applied once (schema_migrations).

CREATE TABLE applier_marks (
    batch_seq BIGINT   NOT NULL,
    lane      SMALLINT NOT NULL CHECK (lane IN (1, 2)),
    PRIMARY KEY (batch_seq, lane)
);
