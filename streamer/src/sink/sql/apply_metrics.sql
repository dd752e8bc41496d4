-- Lane 1: folds every delta visible in the applier's snapshot that lane 1
-- has not folded yet (its batches have no lane-1 mark; edits by hand have no
-- batch) into event_metrics_minute: the batches' Polars deltas
-- (metrics_delta) plus the rows to take back or add (analytics_rows).
-- Distinct users of a cell change by, per user with rows added or taken
-- away there: [has rows in events now] - [had before], where "before" is
-- "now" minus the user's net change ("now" counted by one index probe of
-- events per touched user and cell, which stops at |net| + 1 rows: that is
-- enough to tell both [now > 0] and [now - net > 0], and a user's rows in a
-- window already full of them are not read again at every round; for a
-- round that touches a big part of events the applier swaps in
-- present_scan.sql between the markers). That
-- holds because the lane folds every change between its last snapshot and
-- this one: the batches committed since, and the edits by hand, which only
-- a whole round folds (a lane that sees one gives way to it).
WITH s AS (SELECT make_interval(secs => window_seconds) AS width FROM analytics_settings),
r AS (
    SELECT date_bin(s.width, a.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS window_start, a.product_category,
           a.user_id, a.sign, a.event_type, a.product_price
    FROM analytics_rows a, s
    WHERE coalesce(a.batch_seq, 0) NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 1)),
d AS NOT MATERIALIZED (SELECT * FROM metrics_delta WHERE batch_seq NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 1)),
cells AS (
    SELECT window_start, product_category, sum(views) AS views, sum(purchases) AS purchases, sum(revenue) AS revenue
    FROM (SELECT window_start, product_category, views, purchases, revenue FROM d
          UNION ALL
          SELECT window_start, product_category,
                 CASE WHEN event_type = 'view' THEN sign ELSE 0 END,
                 CASE WHEN event_type = 'purchase' THEN sign ELSE 0 END,
                 CASE WHEN event_type = 'purchase' THEN sign * product_price ELSE 0 END
          FROM r) x
    GROUP BY 1, 2),
nets AS (
    SELECT window_start, product_category, user_id, sum(n) AS net
    FROM (SELECT d.window_start, d.product_category, u.user_id, u.n
          FROM d, unnest(d.user_ids, d.user_rows) AS u(user_id, n)
          UNION ALL
          SELECT window_start, product_category, user_id, sign FROM r) x
    GROUP BY 1, 2, 3
    HAVING sum(n) <> 0),
-- <present>
-- MATERIALIZED: `users` reads `now` twice, and an inlined CTE would run
-- each probe twice (seen in the plan: the second run of the subquery took
-- a quarter of the fold).
present AS MATERIALIZED (
    SELECT g.window_start, g.product_category, g.net,
           (SELECT count(*) FROM (
                SELECT 1 FROM events e
                WHERE e.user_id = g.user_id AND e.event_time >= g.window_start
                  AND e.event_time < g.window_start + (SELECT width FROM s)
                  AND e.product_category = g.product_category
                LIMIT abs(g.net) + 1) x) AS now
    FROM nets g),
users AS (
    SELECT window_start, product_category, sum((now > 0)::int - (now - net > 0)::int) AS users
    FROM present GROUP BY 1, 2),
-- </present>
changes AS (
    SELECT window_start, product_category, coalesce(c.views, 0) AS views, coalesce(c.purchases, 0) AS purchases,
           coalesce(u.users, 0) AS users, coalesce(c.revenue, 0) AS revenue
    FROM cells c FULL JOIN users u USING (window_start, product_category))
INSERT INTO event_metrics_minute AS m (window_start, product_category, views, purchases, users, revenue)
SELECT window_start, product_category, views, purchases, users, revenue FROM changes
WHERE views <> 0 OR purchases <> 0 OR users <> 0 OR revenue <> 0
ORDER BY 1, 2
ON CONFLICT (window_start, product_category) DO UPDATE
SET views = m.views + EXCLUDED.views, purchases = m.purchases + EXCLUDED.purchases,
    users = m.users + EXCLUDED.users, revenue = m.revenue + EXCLUDED.revenue;

-- Cells left at zero can only be ones rows were taken away from.
DELETE FROM event_metrics_minute m
USING (SELECT DISTINCT date_bin(s.width, a.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS window_start,
              a.product_category
       FROM analytics_rows a, (SELECT make_interval(secs => window_seconds) AS width FROM analytics_settings) s
       WHERE a.sign < 0) t
WHERE m.window_start = t.window_start AND m.product_category = t.product_category
  AND m.views = 0 AND m.purchases = 0;
