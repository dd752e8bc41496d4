-- 005: order-independent upserts, the file registry, and what the analytics
-- applier folds. Applied once (see schema_migrations); docs/architecture.md
-- states the protocol these tables carry.

-- Every row of events carries its source position: its file's place in the
-- global file order (modification time in ns, then name, then registry id)
-- and its physical line. A stored row is replaced only by a row with a newer
-- position, so the table does not depend on the order in which files become
-- ready or batches commit. Rows loaded before this migration have position 0
-- (older than any file).
ALTER TABLE events
    ADD COLUMN src_mtime BIGINT  NOT NULL DEFAULT 0,  -- modification time of the row's file, ns since the epoch
    ADD COLUMN src_file  INTEGER NOT NULL DEFAULT 0,  -- source_files.file_id of the row's file
    ADD COLUMN src_line  INTEGER NOT NULL DEFAULT 0;  -- physical line of the row in its file (the header is 1)

-- The file registry: the truth about every file of a data folder ("source")
-- that was ever seen ready, shared by every streamer on that folder. A batch
-- claims pending files (FOR UPDATE SKIP LOCKED) inside its own transaction
-- and settles their state in the same COMMIT as their rows.
CREATE TABLE source_files (
    file_id       INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        TEXT        NOT NULL,  -- the data folder's id (SOURCE_ID, default its absolute path)
    file_name     TEXT        NOT NULL,  -- path inside the folder
    file_size     BIGINT      NOT NULL,
    file_mtime_ns BIGINT      NOT NULL,  -- modification time, ns since the epoch
    state         TEXT        NOT NULL DEFAULT 'pending',
    reason        TEXT,                  -- why a file was quarantined, missing, changed or skipped
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at    TIMESTAMPTZ,           -- when its batch committed
    batch_seq     BIGINT,                -- the batch that settled it (batches.batch_seq)
    disposed_at   TIMESTAMPTZ,           -- when it was archived, deleted or quarantined (or needed nothing)
    CONSTRAINT source_files_identity UNIQUE (source, file_name, file_size, file_mtime_ns),
    CONSTRAINT source_files_state_known
        CHECK (state IN ('pending', 'loaded', 'quarantined', 'missing', 'changed', 'skipped'))
);

-- Claims take the oldest pending files first, in the global file order.
CREATE INDEX source_files_pending ON source_files (source, file_mtime_ns, file_name COLLATE "C", file_id)
    WHERE state = 'pending';
-- The disposer's queue: settled files not yet moved.
CREATE INDEX source_files_undisposed ON source_files (source, file_id)
    WHERE disposed_at IS NULL AND state IN ('loaded', 'quarantined');

-- Claims the oldest pending files of a source for the calling transaction:
-- at most max_files, and files until their sizes reach max_bytes (the file
-- that crosses it is the last). Each file is locked as it is fetched, and a
-- file another transaction holds is skipped, so concurrent batches take
-- disjoint files and a batch holds no claim it does not use.
CREATE FUNCTION claim_source_files(claim_source TEXT, max_files INTEGER, max_bytes BIGINT)
RETURNS SETOF source_files LANGUAGE plpgsql AS $$
DECLARE
    pending refcursor;
    f source_files;
    files INTEGER := 0;
    bytes BIGINT := 0;
BEGIN
    OPEN pending FOR
        SELECT * FROM source_files
        WHERE source = claim_source AND state = 'pending'
        ORDER BY file_mtime_ns, file_name COLLATE "C", file_id
        FOR UPDATE SKIP LOCKED;
    LOOP
        EXIT WHEN files >= max_files OR bytes >= max_bytes;
        FETCH pending INTO f;
        EXIT WHEN NOT FOUND;
        files := files + 1;
        bytes := bytes + f.file_size;
        RETURN NEXT f;
    END LOOP;
    CLOSE pending;
END $$;

-- The global file order between two files of equal modification time: by
-- name, then registry id. (Only rows of equal src_mtime need it.)
CREATE FUNCTION source_file_after(newer INTEGER, older INTEGER) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT (n.file_name COLLATE "C", n.file_id) > (o.file_name COLLATE "C", o.file_id)
    FROM source_files n, source_files o WHERE n.file_id = newer AND o.file_id = older
$$;

-- One row per committed batch (a batch's files are in load_history). The
-- row is written by the batch's own transaction; the applier stamps
-- applied_at when it has folded the batch into the derived tables.
CREATE TABLE batches (
    batch_seq      BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checkpoint_id  UUID        NOT NULL,  -- the streamer's checkpoint (its checkpoints/metadata)
    batch_id       BIGINT      NOT NULL,  -- the batch's number in that checkpoint
    source         TEXT        NOT NULL,
    files          INTEGER     NOT NULL,
    window_seconds INTEGER     NOT NULL,  -- the width its metrics deltas were cut by
    started_at     TIMESTAMPTZ NOT NULL,
    committed_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    applied_at     TIMESTAMPTZ,
    CONSTRAINT batches_checkpoint_batch_key UNIQUE (checkpoint_id, batch_id)
);
CREATE INDEX batches_unapplied ON batches (batch_seq) WHERE applied_at IS NULL;

-- A batch's contribution to event_metrics_minute, as the streamer computed
-- it with Polars over the rows it staged: per window and category the
-- views, purchases and revenue, and per user the rows it added there (for
-- the distinct users).
CREATE TABLE metrics_delta (
    batch_seq        BIGINT      NOT NULL,
    window_start     TIMESTAMPTZ NOT NULL,
    product_category TEXT        NOT NULL,
    views            BIGINT      NOT NULL,
    purchases        BIGINT      NOT NULL,
    revenue          NUMERIC     NOT NULL,
    user_ids         INTEGER[]   NOT NULL,
    user_rows        INTEGER[]   NOT NULL
);

-- A batch's contribution to the counters datamart, computed the same way:
-- per (user, category) or per (user, product) the view and purchase rows
-- it staged, as parallel arrays (one row per chunk and table).
CREATE TABLE counters_delta (
    batch_seq   BIGINT    NOT NULL,
    user_ids    INTEGER[] NOT NULL,
    categories  TEXT[],              -- set for user_category_counts
    product_ids INTEGER[],           -- set for user_product_counts
    views       INTEGER[] NOT NULL,
    purchases   INTEGER[] NOT NULL,
    CHECK ((categories IS NULL) <> (product_ids IS NULL))
);

-- Rows whose contribution the applier takes back (sign -1) or adds (+1):
--   lost     a staged row that did not win (a stored row was newer, or a
--            later chunk of its batch had its key);
--   replaced the old version of a row a batch replaced with other values;
--   moved    the old version of a row a batch replaced with the same values
--            (its position moved on; it was counted when it was written);
--   edit     a change made by hand (UPDATE or DELETE on events).
-- (replaced and moved are written by the trigger below; src_file is then
-- the new row's file.)
CREATE TABLE analytics_rows (
    batch_seq        BIGINT,
    kind             TEXT        NOT NULL CHECK (kind IN ('lost', 'replaced', 'moved', 'edit')),
    sign             SMALLINT    NOT NULL CHECK (sign IN (-1, 1)),
    src_file         INTEGER,
    user_id          INTEGER     NOT NULL,
    event_time       TIMESTAMPTZ NOT NULL,
    event_type       TEXT        NOT NULL,
    product_id       INTEGER     NOT NULL,
    product_category TEXT        NOT NULL,
    product_price    NUMERIC(10,2) NOT NULL
);
CREATE INDEX analytics_rows_batch ON analytics_rows (batch_seq);

-- The exact old version of every row a batch replaces, whatever session
-- replaced it: a streamer's batch sets pipeline.batch_seq. Anything else is
-- an edit by hand: a change of its values takes the old ones away and adds
-- the new ones (a change of the position columns alone changes nothing).
CREATE FUNCTION events_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    seq BIGINT := nullif(current_setting('pipeline.batch_seq', true), '')::bigint;
    changed BOOLEAN := TG_OP = 'DELETE' OR
        (OLD.user_id, OLD.user_name, OLD.user_email, OLD.event_type, OLD.product_id, OLD.product_name,
         OLD.product_category, OLD.product_price, OLD.event_time)
        IS DISTINCT FROM
        (NEW.user_id, NEW.user_name, NEW.user_email, NEW.event_type, NEW.product_id, NEW.product_name,
         NEW.product_category, NEW.product_price, NEW.event_time);
BEGIN
    IF seq IS NULL AND NOT changed THEN
        RETURN NULL;
    END IF;
    INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, user_id, event_time, event_type, product_id,
                                product_category, product_price)
    VALUES (seq, CASE WHEN seq IS NULL THEN 'edit' WHEN changed THEN 'replaced' ELSE 'moved' END, -1,
            CASE WHEN TG_OP = 'UPDATE' THEN NEW.src_file END, OLD.user_id, OLD.event_time, OLD.event_type,
            OLD.product_id, OLD.product_category, OLD.product_price);
    IF seq IS NULL AND TG_OP = 'UPDATE' THEN
        INSERT INTO analytics_rows (batch_seq, kind, sign, src_file, user_id, event_time, event_type, product_id,
                                    product_category, product_price)
        VALUES (NULL, 'edit', 1, NEW.src_file, NEW.user_id, NEW.event_time, NEW.event_type, NEW.product_id,
                NEW.product_category, NEW.product_price);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_changed AFTER UPDATE ON events FOR EACH ROW EXECUTE FUNCTION events_log_change();
CREATE TRIGGER events_deleted AFTER DELETE ON events FOR EACH ROW EXECUTE FUNCTION events_log_change();

-- Sums of revenue cannot overflow; the width change needs a rebuild.
ALTER TABLE event_metrics_minute ALTER COLUMN revenue TYPE NUMERIC;
ALTER TABLE analytics_settings ADD COLUMN needs_rebuild BOOLEAN NOT NULL DEFAULT true;

-- A file can also be settled as changed (rewritten while its batch read it).
ALTER TABLE load_history DROP CONSTRAINT load_history_status_known;
ALTER TABLE load_history ADD CONSTRAINT load_history_status_known
    CHECK (status IN ('loaded', 'quarantined', 'missing', 'changed'));
ALTER TABLE load_history ADD COLUMN batch_seq BIGINT;
