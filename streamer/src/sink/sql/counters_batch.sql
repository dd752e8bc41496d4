-- One batch's counters of one kind ($1: the batch), folded as they are: its
-- loader merged its chunks' counters and wrote them at once, so each (user,
-- key) pair stands once in its counters_delta rows of the kind (the parts of
-- that one write, db/011), sorted, and nothing is grouped or sorted again
-- here. A batch with several writes of the kind (one past the loader's cap,
-- or rows written by a streamer before db/010 or db/011) takes
-- counters_batch_grouped.sql instead. {table}, {key} and {keys} name the
-- derived table, its key column and the delta's key arrays (applier.rs).
INSERT INTO {table} AS c (user_id, {key}, views, purchases)
SELECT u.user_id, u.{key}, u.v, u.p
FROM counters_delta d, unnest(d.user_ids, d.{keys}, d.views, d.purchases) AS u(user_id, {key}, v, p)
WHERE d.batch_seq = $1 AND d.{keys} IS NOT NULL
ON CONFLICT (user_id, {key}) DO UPDATE
SET views = c.views + EXCLUDED.views, purchases = c.purchases + EXCLUDED.purchases
