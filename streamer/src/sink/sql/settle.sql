-- Settles the claimed files of a batch in its own transaction: their state,
-- reason and batch; a file that needs no move is marked disposed at once.
-- (statement_timestamp(), this statement running just before COMMIT, and
-- no function inside the CASE: Citus refuses both in a change of a
-- reference table.)
UPDATE source_files f
SET state = u.state, reason = u.reason, settled_at = statement_timestamp(), batch_seq = $1,
    disposed_at = statement_timestamp() + CASE WHEN u.to_move THEN NULL ELSE interval '0' END
FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::bool[]) AS u(file_id, state, reason, to_move)
WHERE f.file_id = u.file_id
