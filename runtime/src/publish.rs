//! Atomic publication of a file into a folder another process watches: the
//! bytes go to a hidden temporary name in the same folder, are fsynced, and
//! the file is renamed to its final name, then the folder is fsynced. A reader
//! sees the whole file or nothing; a crash leaves at most a hidden temporary.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name `name` is written under before it is published.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Writes `contents` to `dir/name` atomically and durably.
pub fn publish(dir: &Path, name: &str, contents: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(temp_name(name));
    let target = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_leaves_only_the_final_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = publish(dir.path(), "a.csv", b"x\n")?;
        assert_eq!(fs::read(&path)?, b"x\n");
        let names: Vec<_> = fs::read_dir(dir.path())?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.csv")]);
        Ok(())
    }
}
