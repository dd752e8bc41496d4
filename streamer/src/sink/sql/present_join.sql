-- The distinct users' "now" on Citus: one join of the touched users and
-- cells with events, counting every row of each (Citus does not run
-- apply_metrics.sql's capped probe, a correlated subquery with a LIMIT, on a
-- distributed table). The applier swaps it in between apply_metrics.sql's
-- markers.
present AS (
    SELECT g.window_start, g.product_category, g.net, count(e.user_id) AS now
    FROM nets g LEFT JOIN events e
      ON e.user_id = g.user_id AND e.event_time >= g.window_start
     AND e.event_time < g.window_start + (SELECT width FROM s)
     AND e.product_category = g.product_category
    GROUP BY g.window_start, g.product_category, g.user_id, g.net),
users AS (
    SELECT window_start, product_category, sum((now > 0)::int - (now - net > 0)::int) AS users
    FROM present GROUP BY 1, 2),
