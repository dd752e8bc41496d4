-- 011: a batch's counters in parts small enough to stay on the page.
--
-- A batch's loader merges its chunks' counters and writes each kind's
-- pairs at the end, each pair once and sorted (db/010). Written as one row
-- per kind, a batch of 1 500 events is a row of arrays of about 30 kB:
-- PostgreSQL compresses each array, fails to shrink it much, and stores it
-- in the TOAST table, a chunk of 2 kB at a time, each with its index entry.
-- The loader now cuts each kind's pairs into parts of 64 (about 1.5 kB a
-- row: under the TOAST threshold) and numbers each write of its batch
-- (`flush`: 0 at the end, or 0, 1, … when its pairs outgrew its cap and it
-- wrote them out part way). The parts of one write hold each pair once:
-- the applier folds them as written; a batch of several writes, or of rows
-- without a number (written before this migration), is grouped first.
-- Measured with psql's binary COPY of the same pairs: 1 500 pairs a kind,
-- 1.4 ms as two rows, 0.95 ms in parts of 100; 100 000 pairs a kind, 90–108
-- ms against 56–60 ms in parts of 64.

ALTER TABLE counters_delta ADD COLUMN flush INTEGER;
