-- 002: what the streamer loaded, file by file, and the rows it rejected.
-- Applied once by the streamer (recorded in schema_migrations); written to be safe to apply again.

-- One row per file per load (like Snowflake's COPY_HISTORY). A file loaded
-- again (rewritten under the same name, so with a new size or modification
-- time) gets a new row with reingest = true.
CREATE TABLE IF NOT EXISTS load_history (
    load_id          BIGSERIAL   PRIMARY KEY,
    checkpoint_id    UUID        NOT NULL,  -- the checkpoints/ folder's id (its metadata file)
    batch_id         BIGINT      NOT NULL,
    file_name        TEXT        NOT NULL,
    file_size        BIGINT      NOT NULL,
    file_mtime       TIMESTAMPTZ NOT NULL,
    status           TEXT        NOT NULL,  -- loaded | quarantined | missing
    reason           TEXT,                  -- why a file was quarantined or missing
    rows_read        BIGINT      NOT NULL,  -- data rows in the file, bad ones included
    rows_inserted    BIGINT      NOT NULL,  -- new (user_id, event_time) keys
    rows_updated     BIGINT      NOT NULL,  -- existing keys whose other columns changed
    rows_unchanged   BIGINT      NOT NULL,  -- existing keys already holding these values
    rows_duplicate   BIGINT      NOT NULL,  -- rows dropped for a later row with the same key in the batch
    rows_rejected    BIGINT      NOT NULL,  -- rows breaking the contract (see rejected_rows)
    reingest         BOOLEAN     NOT NULL,  -- a file of this name was loaded before
    batch_started_at TIMESTAMPTZ NOT NULL,
    committed_at     TIMESTAMPTZ NOT NULL,  -- when the batch's transaction wrote this row
    CONSTRAINT load_history_status_known CHECK (status IN ('loaded', 'quarantined', 'missing')),
    CONSTRAINT load_history_rows_add_up CHECK (
        status <> 'loaded'
        OR rows_read = rows_inserted + rows_updated + rows_unchanged + rows_duplicate + rows_rejected)
);

-- A batch's files are recorded once: loading a batch twice is impossible.
CREATE UNIQUE INDEX IF NOT EXISTS load_history_batch_file_key ON load_history (checkpoint_id, batch_id, file_name);
CREATE INDEX IF NOT EXISTS load_history_file_name_idx ON load_history (file_name);
CREATE INDEX IF NOT EXISTS load_history_committed_at_idx ON load_history (committed_at);

-- Rows that break the event contract, with where they were and why.
CREATE TABLE IF NOT EXISTS rejected_rows (
    rejected_id   BIGSERIAL   PRIMARY KEY,
    checkpoint_id UUID        NOT NULL,
    batch_id      BIGINT      NOT NULL,
    file_name     TEXT        NOT NULL,
    line_number   BIGINT      NOT NULL,  -- physical line where the record starts; the header is line 1
    raw_line      TEXT        NOT NULL,  -- the record as it stands, cut at 4 KiB
    reason        TEXT        NOT NULL,
    rejected_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS rejected_rows_file_idx ON rejected_rows (file_name, line_number);
