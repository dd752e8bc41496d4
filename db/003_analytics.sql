-- 003: windowed metrics and the counters datamart. Since 005 the analytics
-- applier folds each committed batch into them, off the commit path (see
-- docs/architecture.md); 005 also widened revenue to NUMERIC.
-- Applied once (schema_migrations); written to be safe to apply again.
--
-- Each table always equals its GROUP BY definition over `events` (the
-- comments give it); docs/queries.md shows how to check.

-- The window width the metrics are cut by. The streamer sets it at start
-- from METRICS_WINDOW_SECS and rebuilds event_metrics_minute from `events`
-- when it changed; batches read it from here, so every streamer writing
-- into this database uses the same width.
CREATE TABLE IF NOT EXISTS analytics_settings (
    id             BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    window_seconds INTEGER NOT NULL CHECK (window_seconds > 0)
);

-- Per window and category:
--   SELECT date_bin(width, event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS window_start,
--          product_category,
--          count(*) FILTER (WHERE event_type = 'view')                         AS views,
--          count(*) FILTER (WHERE event_type = 'purchase')                     AS purchases,
--          count(DISTINCT user_id)                                             AS users,
--          coalesce(sum(product_price) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
--   FROM events GROUP BY 1, 2
-- The applier adds each batch's contribution and takes away the rows it
-- replaced; distinct users by probing `events` for each user it touched
-- (see streamer/src/applier.rs).
CREATE TABLE IF NOT EXISTS event_metrics_minute (
    window_start     TIMESTAMPTZ   NOT NULL,
    product_category TEXT          NOT NULL,
    views            BIGINT        NOT NULL,
    purchases        BIGINT        NOT NULL,
    users            BIGINT        NOT NULL,  -- distinct user_id in the window and category
    revenue          NUMERIC(14,2) NOT NULL,  -- sum of product_price over purchases
    PRIMARY KEY (window_start, product_category)
);

-- Per user and category, and per user and product: view and purchase rows.
--   SELECT user_id, product_category,
--          count(*) FILTER (WHERE event_type = 'view') AS views,
--          count(*) FILTER (WHERE event_type = 'purchase') AS purchases
--   FROM events GROUP BY 1, 2
-- (and the same by product_id). The applier adds what each batch wrote and
-- takes the replaced rows away; pairs left at zero are deleted.
CREATE TABLE IF NOT EXISTS user_category_counts (
    user_id          INTEGER NOT NULL,
    product_category TEXT    NOT NULL,
    views            BIGINT  NOT NULL,
    purchases        BIGINT  NOT NULL,
    PRIMARY KEY (user_id, product_category)
);

CREATE TABLE IF NOT EXISTS user_product_counts (
    user_id    INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    views      BIGINT  NOT NULL,
    purchases  BIGINT  NOT NULL,
    PRIMARY KEY (user_id, product_id)
);


-- The window an event time falls into, by the width above (windows are
-- aligned on 2000-01-01 00:00 UTC, so one-minute windows start on the
-- minute): `GROUP BY metrics_window(event_time)` in your own queries.
CREATE OR REPLACE FUNCTION metrics_window(t TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE AS $$
    SELECT date_bin(make_interval(secs => (SELECT window_seconds FROM analytics_settings)), t,
                    TIMESTAMPTZ '2000-01-01 00:00:00+00')
$$;
