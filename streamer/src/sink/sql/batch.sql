-- The batch's own row: the applier folds batches whose applied_at is NULL.
INSERT INTO batches (batch_seq, checkpoint_id, batch_id, source, files, window_seconds, started_at)
OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)
