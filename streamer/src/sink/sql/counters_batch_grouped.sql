-- One batch's counters of one kind ($1: the batch) when it has several
-- writes of the kind: their pairs grouped first (see counters_batch.sql).
INSERT INTO {table} AS c (user_id, {key}, views, purchases)
SELECT u.user_id, u.{key}, sum(u.v), sum(u.p)
FROM counters_delta d, unnest(d.user_ids, d.{keys}, d.views, d.purchases) AS u(user_id, {key}, v, p)
WHERE d.batch_seq = $1 AND d.{keys} IS NOT NULL
GROUP BY 1, 2
HAVING sum(u.v) <> 0 OR sum(u.p) <> 0
ORDER BY 1, 2
ON CONFLICT (user_id, {key}) DO UPDATE
SET views = c.views + EXCLUDED.views, purchases = c.purchases + EXCLUDED.purchases
