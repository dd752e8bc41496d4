-- After its batches' counters (counters_batch.sql), a fold of one kind
-- takes in the rows to take back or add (analytics_rows) that the lane
-- folding this table ({lane}) has not folded yet, edits by hand (no batch)
-- among them; then deletes the pairs left at zero.
INSERT INTO {table} AS c (user_id, {key}, views, purchases)
SELECT user_id, {key}, sum(v), sum(p)
FROM (SELECT user_id, {key}, CASE WHEN event_type = 'view' THEN sign ELSE 0 END AS v,
             CASE WHEN event_type = 'purchase' THEN sign ELSE 0 END AS p
      FROM analytics_rows a WHERE coalesce(a.batch_seq, 0) NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = {lane})) x
GROUP BY 1, 2
HAVING sum(v) <> 0 OR sum(p) <> 0
ORDER BY 1, 2
ON CONFLICT (user_id, {key}) DO UPDATE
SET views = c.views + EXCLUDED.views, purchases = c.purchases + EXCLUDED.purchases;

DELETE FROM {table} c
USING (SELECT DISTINCT user_id, {key} FROM analytics_rows WHERE sign < 0) d
WHERE c.user_id = d.user_id AND c.{key} = d.{key} AND c.views = 0 AND c.purchases = 0;
