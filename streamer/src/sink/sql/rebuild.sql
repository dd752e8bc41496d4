-- Rebuilds the derived tables from events in the applier's snapshot (a new
-- window width, or analytics turned on for a database that had none), and
-- consumes every delta that snapshot holds: they are in events already.
DELETE FROM event_metrics_minute;
INSERT INTO event_metrics_minute (window_start, product_category, views, purchases, users, revenue)
SELECT date_bin(s.width, e.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), e.product_category,
       count(*) FILTER (WHERE e.event_type = 'view'), count(*) FILTER (WHERE e.event_type = 'purchase'),
       count(DISTINCT e.user_id), coalesce(sum(e.product_price) FILTER (WHERE e.event_type = 'purchase'), 0)
FROM events e, (SELECT make_interval(secs => window_seconds) AS width FROM analytics_settings) s
GROUP BY 1, 2;
DELETE FROM user_category_counts;
INSERT INTO user_category_counts (user_id, product_category, views, purchases)
SELECT user_id, product_category, count(*) FILTER (WHERE event_type = 'view'),
       count(*) FILTER (WHERE event_type = 'purchase')
FROM events GROUP BY 1, 2;
DELETE FROM user_product_counts;
INSERT INTO user_product_counts (user_id, product_id, views, purchases)
SELECT user_id, product_id, count(*) FILTER (WHERE event_type = 'view'),
       count(*) FILTER (WHERE event_type = 'purchase')
FROM events GROUP BY 1, 2;
UPDATE analytics_settings SET needs_rebuild = false;
