-- Lane 2: the same as apply_categories.sql for user_product_counts, over
-- the deltas lane 2 has not folded yet.
INSERT INTO user_product_counts AS c (user_id, product_id, views, purchases)
SELECT user_id, product_id, sum(v), sum(p)
FROM (SELECT u.user_id, u.product_id, u.v, u.p
      FROM counters_delta d, unnest(d.user_ids, d.product_ids, d.views, d.purchases) AS u(user_id, product_id, v, p)
      WHERE d.product_ids IS NOT NULL AND d.batch_seq NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 2)
      UNION ALL
      SELECT user_id, product_id, CASE WHEN event_type = 'view' THEN sign ELSE 0 END,
             CASE WHEN event_type = 'purchase' THEN sign ELSE 0 END
      FROM analytics_rows a WHERE coalesce(a.batch_seq, 0) NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 2)) x
GROUP BY 1, 2
HAVING sum(v) <> 0 OR sum(p) <> 0
ORDER BY 1, 2
ON CONFLICT (user_id, product_id) DO UPDATE
SET views = c.views + EXCLUDED.views, purchases = c.purchases + EXCLUDED.purchases;

DELETE FROM user_product_counts c
USING (SELECT DISTINCT user_id, product_id FROM analytics_rows WHERE sign < 0) d
WHERE c.user_id = d.user_id AND c.product_id = d.product_id AND c.views = 0 AND c.purchases = 0;
