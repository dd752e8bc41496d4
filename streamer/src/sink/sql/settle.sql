-- Settles the claimed files of a batch in its own transaction: their state,
-- reason and batch; a file that needs no move is marked disposed at once.
UPDATE source_files f
SET state = u.state, reason = u.reason, settled_at = clock_timestamp(), batch_seq = $1,
    disposed_at = CASE WHEN u.to_move THEN NULL ELSE clock_timestamp() END
FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::bool[]) AS u(file_id, state, reason, to_move)
WHERE f.file_id = u.file_id
