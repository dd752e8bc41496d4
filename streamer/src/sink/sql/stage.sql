-- The staging tables of a loader session: emptied at every commit. A batch
-- stages its rows chunk by chunk (binary COPY), then merges them into events.
CREATE TEMP TABLE IF NOT EXISTS events_stage (
    chunk            INTEGER       NOT NULL,  -- the chunk of its batch the row came in
    file_index       INTEGER       NOT NULL,  -- the row's file, by its place in the batch
    line             INTEGER       NOT NULL,  -- the row's physical line in its file
    user_id          INTEGER       NOT NULL,
    user_name        TEXT          NOT NULL,
    user_email       TEXT          NOT NULL,
    event_type       TEXT          NOT NULL,
    product_id       INTEGER       NOT NULL,
    product_name     TEXT          NOT NULL,
    product_category TEXT          NOT NULL,
    product_price    NUMERIC(10,2) NOT NULL,
    event_time       TIMESTAMPTZ   NOT NULL,
    _rescued         TEXT                     -- the file's columns beyond the contract's, as JSON
) ON COMMIT DELETE ROWS;
