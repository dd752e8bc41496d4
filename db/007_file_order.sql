-- 007: the file order between files of one modification time, read by
-- every batch before its merge (streamer/src/sink/sql.rs, SAME_TIME_OLDER)
-- instead of a function call in the merge, which on Citus runs on the
-- workers, where the registry is not. Applied once (schema_migrations).
CREATE INDEX source_files_mtime ON source_files (file_mtime_ns);
