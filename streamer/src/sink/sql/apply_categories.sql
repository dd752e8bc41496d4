-- Lane 1's counters: folds every delta visible in the applier's snapshot
-- that lane 1 has not folded yet (its batches have no lane-1 mark; edits by
-- hand have no batch) into user_category_counts: the batches' per-user
-- Polars deltas (counters_delta) plus the rows to take back or add
-- (analytics_rows). Pairs left at zero are deleted.
INSERT INTO user_category_counts AS c (user_id, product_category, views, purchases)
SELECT user_id, product_category, sum(v), sum(p)
FROM (SELECT u.user_id, u.product_category, u.v, u.p
      FROM counters_delta d, unnest(d.user_ids, d.categories, d.views, d.purchases) AS u(user_id, product_category, v, p)
      WHERE d.categories IS NOT NULL AND d.batch_seq NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 1)
      UNION ALL
      SELECT user_id, product_category, CASE WHEN event_type = 'view' THEN sign ELSE 0 END,
             CASE WHEN event_type = 'purchase' THEN sign ELSE 0 END
      FROM analytics_rows a WHERE coalesce(a.batch_seq, 0) NOT IN (SELECT batch_seq FROM applier_marks WHERE lane = 1)) x
GROUP BY 1, 2
HAVING sum(v) <> 0 OR sum(p) <> 0
ORDER BY 1, 2
ON CONFLICT (user_id, product_category) DO UPDATE
SET views = c.views + EXCLUDED.views, purchases = c.purchases + EXCLUDED.purchases;

DELETE FROM user_category_counts c
USING (SELECT DISTINCT user_id, product_category FROM analytics_rows WHERE sign < 0) d
WHERE c.user_id = d.user_id AND c.product_category = d.product_category AND c.views = 0 AND c.purchases = 0;
