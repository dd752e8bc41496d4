-- 001: the events table of the event contract (docs/architecture.md).
-- Applied once by the streamer (recorded in schema_migrations); written to be safe to apply again.
--
-- Text columns are never NULL: an empty CSV field is an empty string.
-- event_time is a UTC instant with microseconds (timestamptz).
-- UNIQUE (user_id, event_time) is the upsert key; its index, led by user_id,
-- also serves lookups by user_id, so there is no separate user_id index.

CREATE TABLE IF NOT EXISTS events (
    event_id         BIGSERIAL     PRIMARY KEY,
    user_id          INTEGER       NOT NULL,
    user_name        TEXT          NOT NULL,
    user_email       TEXT          NOT NULL,
    event_type       TEXT          NOT NULL,
    product_id       INTEGER       NOT NULL,
    product_name     TEXT          NOT NULL,
    product_category TEXT          NOT NULL,
    product_price    NUMERIC(10,2) NOT NULL,
    event_time       TIMESTAMPTZ   NOT NULL,
    CONSTRAINT events_user_id_event_time_key UNIQUE (user_id, event_time),
    CONSTRAINT events_user_id_positive       CHECK (user_id > 0),
    CONSTRAINT events_product_id_positive    CHECK (product_id > 0),
    CONSTRAINT events_user_name_length       CHECK (char_length(user_name) <= 100),
    CONSTRAINT events_user_email_length      CHECK (char_length(user_email) <= 100),
    CONSTRAINT events_product_name_length    CHECK (char_length(product_name) <= 100),
    CONSTRAINT events_product_category_length CHECK (char_length(product_category) <= 50),
    CONSTRAINT events_event_type_known       CHECK (event_type IN ('view', 'purchase')),
    CONSTRAINT events_product_price_positive CHECK (product_price >= 0)
);

CREATE INDEX IF NOT EXISTS events_event_time_idx ON events (event_time);
