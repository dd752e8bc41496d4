-- Makes a batch merged chunk by chunk count as if its chunks had been
-- deduplicated together ($1: its batch_seq). Each `superseded` row the trigger
-- logged is a hop: a row of this batch (in old_file) written over by a later
-- chunk's row of the same key (in src_file). The earlier row is a duplicate,
-- and the key's first write, an insert or a write over the row stored before
-- the batch, belongs to its last row: per hop, the old file gives it back
-- and, when it was an insert, the new file's write over becomes the insert.
-- The stored row's log entry (`replaced` or `moved`, written at the first
-- write over it) moves to the last row's file and is decided again against
-- it. Returns per file id the change to its inserted and written-over rows.
WITH hops AS (
    SELECT user_id, event_time, old_file, src_file AS new_file
    FROM analytics_rows WHERE batch_seq = $1 AND kind = 'superseded'),
rebased AS (
    UPDATE analytics_rows a
    SET src_file = e.src_file,
        kind = CASE WHEN (a.user_name, a.user_email, a.event_type, a.product_id, a.product_name,
                          a.product_category, a.product_price)
                         IS DISTINCT FROM
                         (e.user_name, e.user_email, e.event_type, e.product_id, e.product_name,
                          e.product_category, e.product_price)
                    THEN 'replaced' ELSE 'moved' END
    FROM events e
    WHERE a.batch_seq = $1 AND a.kind IN ('replaced', 'moved')
      AND (a.user_id, a.event_time) IN (SELECT user_id, event_time FROM hops)
      AND e.user_id = a.user_id AND e.event_time = a.event_time
    RETURNING a.user_id, a.event_time),
changes AS (
    SELECT h.old_file AS file_id, CASE WHEN b.user_id IS NULL THEN -1 ELSE 0 END AS inserted,
           CASE WHEN b.user_id IS NULL THEN 0 ELSE -1 END AS over
    FROM hops h LEFT JOIN rebased b USING (user_id, event_time)
    UNION ALL
    SELECT h.new_file, 1, -1
    FROM hops h LEFT JOIN rebased b USING (user_id, event_time)
    WHERE b.user_id IS NULL)
SELECT file_id, sum(inserted)::int8, sum(over)::int8 FROM changes GROUP BY file_id
