-- The distinct users' "now" for a round that touches a big part of events (a
-- backlog's, or a batch's windows in a table that holds mostly other times):
-- counted once per touched (user, window), for all its categories at once, by
-- an equi-join on (user, window) that the planner hashes over one scan of the
-- part of events in the round's time range (the width a scalar subquery, a
-- constant for the join). The applier sets that range (pipeline.round_from,
-- pipeline.round_to: the touched windows) and picks this form when the range
-- holds few rows per user entry of the round, but too many for
-- present_recount.sql; with more, it keeps apply_metrics.sql's index probes
-- (see applier.rs). Before events has statistics the applier drops the range
-- lines and the scan reads all of events.
touched AS (SELECT DISTINCT window_start, user_id FROM nets),
have AS (
    SELECT t.window_start, e.product_category, t.user_id, count(*) AS now
    FROM touched t JOIN events e
      ON e.user_id = t.user_id AND e.event_time >= t.window_start
     AND e.event_time < t.window_start + (SELECT width FROM s)
     AND date_bin((SELECT width FROM s), e.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') = t.window_start
-- <range>
    WHERE e.event_time >= current_setting('pipeline.round_from')::timestamptz
      AND e.event_time < current_setting('pipeline.round_to')::timestamptz
-- </range>
    GROUP BY 1, 2, 3),
present AS (
    SELECT g.window_start, g.product_category, g.net, coalesce(h.now, 0) AS now
    FROM nets g LEFT JOIN have h USING (window_start, product_category, user_id)),
users AS (
    SELECT window_start, product_category, sum((now > 0)::int - (now - net > 0)::int) AS users
    FROM present GROUP BY 1, 2),
