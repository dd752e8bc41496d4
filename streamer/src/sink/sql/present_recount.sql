-- The distinct users of a round whose users have most of the rows in its
-- time range (a backlog's): counted again, from scratch, for the cells the
-- round touches, by one scan of that part of events that hashes each
-- (cell, user) once. A cell's change is that count less the one
-- event_metrics_minute holds: the count as of the lane's last snapshot
-- (db/003), before any of the changes this round folds. No join with the
-- round's users, and no per-user "before" and "now": cheaper than
-- present_scan.sql when most rows of the range are the round's users', and
-- dearer when few are, as it hashes every row (see applier.rs). The applier
-- sets that range (pipeline.round_from, pipeline.round_to: the touched
-- windows, whole) and runs this form with sorts disabled, so that the
-- planner hashes whatever its estimate of the range (a live stream's newest
-- minutes are past its statistics, estimated at a few rows: by hand, 400 000
-- such rows took 780–870 ms sorted, 230 ms hashed). Before events has
-- statistics the applier drops the range lines and the scan reads all of it.
counted AS (
    SELECT window_start, product_category, count(*) AS users
    FROM (SELECT DISTINCT date_bin((SELECT width FROM s), e.event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                     AS window_start, e.product_category, e.user_id
          FROM events e
-- <range>
          WHERE e.event_time >= current_setting('pipeline.round_from')::timestamptz
            AND e.event_time < current_setting('pipeline.round_to')::timestamptz
-- </range>
          ) x
    GROUP BY 1, 2),
users AS (
    SELECT t.window_start, t.product_category, coalesce(c.users, 0) - coalesce(m.users, 0) AS users
    FROM (SELECT DISTINCT window_start, product_category FROM nets) t
    LEFT JOIN counted c USING (window_start, product_category)
    LEFT JOIN event_metrics_minute m USING (window_start, product_category)),
