-- 006: columns of an input file beyond the contract's nine. A file whose
-- header names the contract's columns in any order, plus others, is read by
-- name; what the contract does not know is kept with the row as one JSON
-- object of text values, keyed by the header's names (NULL when the file had
-- no extra column). The row that wins a key brings its own.
ALTER TABLE events ADD COLUMN _rescued JSONB;

COMMENT ON COLUMN events._rescued IS
    'the row''s columns beyond the contract''s, as {"header name": "text value"}; NULL when its file had none';
