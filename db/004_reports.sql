-- 004: the reports of `streamer report`, as SQL functions of a time range
-- (`since` inclusive, `until` exclusive; NULL means unbounded) and as views
-- over all time, so each answer is one SELECT away in psql:
--   SELECT * FROM conversion_funnel;
--   SELECT * FROM report_conversion_funnel(now() - interval '1 hour', NULL);
-- Applied once (schema_migrations); written to be safe to apply again.
-- docs/queries.md documents each one with example output.

-- Views, purchases and conversion per category. Windowed: a window counts
-- when its start is in the range.
CREATE OR REPLACE FUNCTION report_conversion_funnel(since TIMESTAMPTZ, until TIMESTAMPTZ)
RETURNS TABLE (product_category TEXT, views BIGINT, purchases BIGINT, conversion_pct NUMERIC)
LANGUAGE sql STABLE AS $$
    SELECT m.product_category, sum(m.views)::int8, sum(m.purchases)::int8,
           round(100.0 * sum(m.purchases) / nullif(sum(m.views), 0), 2)
    FROM event_metrics_minute m
    WHERE m.window_start >= coalesce(since, '-infinity') AND m.window_start < coalesce(until, 'infinity')
    GROUP BY m.product_category
    ORDER BY sum(m.purchases) DESC, m.product_category
$$;

-- Products by revenue (purchases only), best first.
CREATE OR REPLACE FUNCTION report_top_products(since TIMESTAMPTZ, until TIMESTAMPTZ, top INTEGER)
RETURNS TABLE (product_id INTEGER, product_name TEXT, product_category TEXT, purchases BIGINT, revenue NUMERIC)
LANGUAGE sql STABLE AS $$
    SELECT e.product_id, max(e.product_name), max(e.product_category), count(*), sum(e.product_price)
    FROM events e
    WHERE e.event_type = 'purchase'
      AND e.event_time >= coalesce(since, '-infinity') AND e.event_time < coalesce(until, 'infinity')
    GROUP BY e.product_id
    ORDER BY sum(e.product_price) DESC, e.product_id
    LIMIT top
$$;

-- Views, purchases, revenue and conversion per window, all categories.
CREATE OR REPLACE FUNCTION report_revenue_per_window(since TIMESTAMPTZ, until TIMESTAMPTZ)
RETURNS TABLE (window_start TIMESTAMPTZ, views BIGINT, purchases BIGINT, revenue NUMERIC, conversion_pct NUMERIC)
LANGUAGE sql STABLE AS $$
    SELECT m.window_start, sum(m.views)::int8, sum(m.purchases)::int8, sum(m.revenue),
           round(100.0 * sum(m.purchases) / nullif(sum(m.views), 0), 2)
    FROM event_metrics_minute m
    WHERE m.window_start >= coalesce(since, '-infinity') AND m.window_start < coalesce(until, 'infinity')
    GROUP BY m.window_start
    ORDER BY m.window_start
$$;

-- Users with the most events, most first.
CREATE OR REPLACE FUNCTION report_most_active_users(since TIMESTAMPTZ, until TIMESTAMPTZ, top INTEGER)
RETURNS TABLE (user_id INTEGER, user_name TEXT, events BIGINT, views BIGINT, purchases BIGINT, revenue NUMERIC,
               last_event TIMESTAMPTZ)
LANGUAGE sql STABLE AS $$
    SELECT e.user_id, max(e.user_name), count(*),
           count(*) FILTER (WHERE e.event_type = 'view'), count(*) FILTER (WHERE e.event_type = 'purchase'),
           coalesce(sum(e.product_price) FILTER (WHERE e.event_type = 'purchase'), 0)::numeric(14,2), max(e.event_time)
    FROM events e
    WHERE e.event_time >= coalesce(since, '-infinity') AND e.event_time < coalesce(until, 'infinity')
    GROUP BY e.user_id
    ORDER BY count(*) DESC, e.user_id
    LIMIT top
$$;

-- What the streamer loaded per hour of commit time: batches, files by
-- outcome, rows by outcome, and the latency from a file's modification
-- time (when it was published) to its batch's commit, in seconds.
CREATE OR REPLACE FUNCTION report_ingest_health(since TIMESTAMPTZ, until TIMESTAMPTZ)
RETURNS TABLE (hour TIMESTAMPTZ, batches BIGINT, files_loaded BIGINT, files_quarantined BIGINT, files_missing BIGINT,
               rows_read BIGINT, rows_inserted BIGINT, rows_updated BIGINT, rows_duplicate BIGINT,
               rows_rejected BIGINT, latency_p50_s NUMERIC, latency_p95_s NUMERIC, latency_max_s NUMERIC)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('hour', h.committed_at),
           count(DISTINCT (h.checkpoint_id, h.batch_id)),
           count(*) FILTER (WHERE h.status = 'loaded'),
           count(*) FILTER (WHERE h.status = 'quarantined'),
           count(*) FILTER (WHERE h.status = 'missing'),
           sum(h.rows_read)::int8, sum(h.rows_inserted)::int8, sum(h.rows_updated)::int8,
           sum(h.rows_duplicate)::int8, sum(h.rows_rejected)::int8,
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM h.committed_at - h.file_mtime))::numeric, 3),
           round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM h.committed_at - h.file_mtime))::numeric, 3),
           round(max(extract(epoch FROM h.committed_at - h.file_mtime)), 3)
    FROM load_history h
    WHERE h.committed_at >= coalesce(since, '-infinity') AND h.committed_at < coalesce(until, 'infinity')
    GROUP BY 1
    ORDER BY 1
$$;

CREATE OR REPLACE VIEW conversion_funnel AS SELECT * FROM report_conversion_funnel(NULL, NULL);
CREATE OR REPLACE VIEW top_products AS SELECT * FROM report_top_products(NULL, NULL, 10);
CREATE OR REPLACE VIEW revenue_per_window AS SELECT * FROM report_revenue_per_window(NULL, NULL);
CREATE OR REPLACE VIEW most_active_users AS SELECT * FROM report_most_active_users(NULL, NULL, 10);
CREATE OR REPLACE VIEW ingest_health AS SELECT * FROM report_ingest_health(NULL, NULL);
