-- 008: a batch merges each chunk as soon as it is staged (docs/architecture.md,
-- "The batch protocol"), so a key whose rows stand in two chunks of one batch
-- is written by the first and written over by the later one. The trigger logs
-- such a row, one the batch itself wrote and then replaced, as `superseded`:
-- the applier takes its contribution back like any replaced row, and the
-- batch counts it as a duplicate, as if the chunks had been deduplicated
-- together (the one-chunk result). For that count the log keeps the
-- superseded row's file (`old_file`) and, for the version a batch first wrote
-- over (`replaced` or `moved`), the text columns the analytics do not need,
-- so that the batch can decide "updated" or "unchanged" against its last row.
-- Applied once (schema_migrations).

ALTER TABLE analytics_rows ADD COLUMN old_file INTEGER;
ALTER TABLE analytics_rows ADD COLUMN user_name TEXT;
ALTER TABLE analytics_rows ADD COLUMN user_email TEXT;
ALTER TABLE analytics_rows ADD COLUMN product_name TEXT;
ALTER TABLE analytics_rows DROP CONSTRAINT analytics_rows_kind_check;
ALTER TABLE analytics_rows ADD CONSTRAINT analytics_rows_kind_check
    CHECK (kind IN ('lost', 'replaced', 'moved', 'superseded', 'edit'));

-- As in 005, plus: a streamer's batch names its files in
-- pipeline.batch_files; an old version that one of them wrote is
-- `superseded` (src_file the new row's file, old_file its own).
CREATE OR REPLACE FUNCTION events_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    seq BIGINT := nullif(current_setting('pipeline.batch_seq', true), '')::bigint;
    changed BOOLEAN := TG_OP = 'DELETE' OR
        (OLD.user_id, OLD.user_name, OLD.user_email, OLD.event_type, OLD.product_id, OLD.product_name,
         OLD.product_category, OLD.product_price, OLD.event_time)
        IS DISTINCT FROM
        (NEW.user_id, NEW.user_name, NEW.user_email, NEW.event_type, NEW.product_id, NEW.product_name,
         NEW.product_category, NEW.product_price, NEW.event_time);
    superseded BOOLEAN := false;
BEGIN
    IF seq IS NULL AND NOT changed THEN
        RETURN NULL;
    END IF;
    IF seq IS NOT NULL AND TG_OP = 'UPDATE' THEN
        superseded := OLD.src_file = ANY (coalesce(nullif(current_setting('pipeline.batch_files', true), ''),
                                                   '{}')::int[]);
    END IF;
    INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, old_file, user_id, event_time, event_type,
                                product_id, product_category, product_price, user_name, user_email, product_name)
    VALUES (seq, CASE WHEN seq IS NULL THEN 'edit' WHEN superseded THEN 'superseded'
                      WHEN changed THEN 'replaced' ELSE 'moved' END, -1,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.src_file END, CASE WHEN superseded THEN OLD.src_file END,
            OLD.user_id, OLD.event_time, OLD.event_type, OLD.product_id, OLD.product_category, OLD.product_price,
            CASE WHEN seq IS NOT NULL AND NOT superseded THEN OLD.user_name END,
            CASE WHEN seq IS NOT NULL AND NOT superseded THEN OLD.user_email END,
            CASE WHEN seq IS NOT NULL AND NOT superseded THEN OLD.product_name END);
    IF seq IS NULL AND TG_OP = 'UPDATE' THEN
        INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, user_id, event_time, event_type, product_id,
                                    product_category, product_price)
        VALUES (NULL, 'edit', 1, NEW.src_file, NEW.user_id, NEW.event_time, NEW.event_type, NEW.product_id,
                NEW.product_category, NEW.product_price);
    END IF;
    RETURN NULL;
END $$;
