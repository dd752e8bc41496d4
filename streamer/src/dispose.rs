//! Moving a settled file out of the data folder: archived or deleted
//! (`--clean-source`), or quarantined with a `.reason` beside it. Only the
//! very file that was settled is ever touched, and nothing else is:
//! - the file is first renamed to a private hidden name in the data folder
//!   (hidden names are never read), then its identity is checked there: a
//!   new file renamed onto the name in the meantime is put back, never
//!   archived or deleted unread;
//! - every step works on the open folders (`openat`/`renameat`), links are
//!   never followed (the archive and quarantine folders inside the data
//!   folder must be real folders), a move never replaces an existing file
//!   (`RENAME_NOREPLACE`; `name.1`, `name.2`, … when taken), and the
//!   `.reason` is created exclusively;
//! - across filesystems the file is copied, synced, then removed;
//! - both folders are fsynced afterwards, so a crash cannot bring a file
//!   back that the registry calls moved.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use crate::checkpoint::FileId;

/// What to do with a settled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Archive,
    Delete,
    Quarantine { reason: String },
}

/// What became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Archived or quarantined under this name in its folder, or deleted.
    Done(Option<String>),
    /// Not there any more: nothing to do.
    Gone,
    /// Another file has the name now: left in place.
    Replaced,
}

/// Where files go: the data folder and the two target folders.
#[derive(Debug, Clone)]
pub struct Folders<'a> {
    pub data: &'a Path,
    pub archive: &'a Path,
    pub quarantine: &'a Path,
}

fn open_dir(path: &Path, follow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Opens (creating it if needed) a target folder. One inside the data
/// folder is opened from the data folder without following a link, so a
/// planted `_rejected` link cannot send files elsewhere; one configured
/// elsewhere is the operator's choice and is opened as given.
fn target_dir(data_fd: &OwnedFd, data: &Path, target: &Path) -> io::Result<OwnedFd> {
    match target.strip_prefix(data) {
        Ok(inside) if inside.components().count() == 1 => {
            match rustix::fs::mkdirat(data_fd, inside, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(data_fd, inside, flags, Mode::empty()).map_err(|e| {
                if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                    io::Error::other(format!(
                        "{} is not a folder (a link?): refusing to move files into it",
                        target.display()
                    ))
                } else {
                    e.into()
                }
            })
        }
        _ => {
            std::fs::create_dir_all(target)?;
            open_dir(target, true)
        }
    }
}

fn same_file(st: &rustix::fs::Stat, id: &FileId) -> bool {
    let regular = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    let mtime_ns = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64;
    regular && st.st_size as u64 == id.size && mtime_ns == id.mtime_ns
}

/// The folder holding `name` (a path inside the folder `root` is open
/// on), opened one component at a time without following a link, and the
/// file's own name in it.
pub fn parent_of<'n>(root: &OwnedFd, name: &'n str) -> io::Result<(OwnedFd, &'n str)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::io::dup(root)?;
    let (folders, base) = name.rsplit_once('/').unwrap_or(("", name));
    for part in folders.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return Err(io::Error::other(format!("{name}: not a path inside the data folder")));
        }
        dir = rustix::fs::openat(&dir, part, flags, Mode::empty())?;
    }
    Ok((dir, base))
}

/// Moves `id` (its name relative to the data folder) as `action` says. A
/// file of a subfolder is archived or quarantined by its own name.
pub fn dispose(folders: &Folders<'_>, id: &FileId, action: &Action) -> io::Result<Moved> {
    let root_fd = open_dir(folders.data, true)?;
    let data_fd = &root_fd;
    // The target folder first: if it cannot be used, nothing has moved.
    let target = match action {
        Action::Delete => None,
        Action::Archive => Some(target_dir(data_fd, folders.data, folders.archive)?),
        Action::Quarantine { .. } => Some(target_dir(data_fd, folders.data, folders.quarantine)?),
    };
    let (dir_fd, name) = match parent_of(data_fd, &id.name) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Moved::Gone),
        Err(e) => return Err(e),
    };
    let data_fd = &dir_fd;
    let private = format!(".streamer-moving-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    match rustix::fs::renameat_with(data_fd, name, data_fd, private.as_str(), RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(Moved::Gone),
        Err(e) => return Err(e.into()),
    }
    let st = rustix::fs::statat(data_fd, private.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
    if !same_file(&st, id) {
        // Another file took the name after it was settled: put it back.
        put_back(data_fd, &private, name)?;
        return Ok(Moved::Replaced);
    }
    let result = match (action, &target) {
        (Action::Quarantine { reason }, Some(target)) => move_into(data_fd, &private, name, target).and_then(|moved| {
            write_reason(target, &format!("{moved}.reason"), reason)?;
            rustix::fs::fsync(target)?;
            Ok(Some(moved))
        }),
        (_, Some(target)) => move_into(data_fd, &private, name, target).map(Some),
        (_, None) => {
            rustix::fs::unlinkat(data_fd, private.as_str(), AtFlags::empty()).map(|()| None).map_err(io::Error::from)
        }
    };
    match result {
        Ok(moved) => {
            rustix::fs::fsync(data_fd)?;
            Ok(Moved::Done(moved))
        }
        Err(e) => {
            // Nothing was moved: the file keeps its name.
            let _ = put_back(data_fd, &private, name);
            Err(e)
        }
    }
}

/// Renames the private name back to `name`, or to `name.restored-N` when a
/// newer file has taken it.
fn put_back(data_fd: &OwnedFd, private: &str, name: &str) -> io::Result<()> {
    for n in 0..1000 {
        let target = if n == 0 { name.to_owned() } else { format!("{name}.restored-{n}") };
        match rustix::fs::renameat_with(data_fd, private, data_fd, target.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {
                if n > 0 {
                    tracing::warn!(file = name, kept_as = %target, "a file took the name of one being moved; the moved one is kept beside it");
                }
                return rustix::fs::fsync(data_fd).map_err(io::Error::from);
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("cannot put {name} back: too many names taken")))
}

/// Moves the private file into `target` under `name` (or `name.N` when
/// taken); returns the name it got.
fn move_into(data_fd: &OwnedFd, private: &str, name: &str, target: &OwnedFd) -> io::Result<String> {
    let base = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or(name).to_owned();
    for n in 0..100_000 {
        let candidate = if n == 0 { base.clone() } else { format!("{base}.{n}") };
        match rustix::fs::renameat_with(data_fd, private, target, candidate.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {
                rustix::fs::fsync(target)?;
                return Ok(candidate);
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(rustix::io::Errno::XDEV) => return copy_across(data_fd, private, target, &base),
            Err(rustix::io::Errno::INVAL) => {
                // A filesystem without RENAME_NOREPLACE: a hard link fails
                // when the name is taken, the same guarantee.
                match rustix::fs::linkat(data_fd, private, target, candidate.as_str(), AtFlags::empty()) {
                    Ok(()) => {
                        rustix::fs::unlinkat(data_fd, private, AtFlags::empty())?;
                        rustix::fs::fsync(target)?;
                        return Ok(candidate);
                    }
                    Err(rustix::io::Errno::EXIST) => continue,
                    Err(rustix::io::Errno::XDEV) => return copy_across(data_fd, private, target, &base),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("too many files named {base} in the target folder")))
}

/// Another filesystem: copy into a new file (created exclusively, never
/// through a link), sync it, then remove the private original.
fn copy_across(data_fd: &OwnedFd, private: &str, target: &OwnedFd, base: &str) -> io::Result<String> {
    let from =
        rustix::fs::openat(data_fd, private, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    for n in 0..100_000 {
        let candidate = if n == 0 { base.to_owned() } else { format!("{base}.{n}") };
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let to = match rustix::fs::openat(target, candidate.as_str(), flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        };
        let (mut src, mut dst) = (File::from(rustix::io::dup(&from)?), File::from(to));
        io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        rustix::fs::fsync(target)?;
        rustix::fs::unlinkat(data_fd, private, AtFlags::empty())?;
        return Ok(candidate);
    }
    Err(io::Error::other(format!("too many files named {base} in the target folder")))
}

fn write_reason(dir: &OwnedFd, name: &str, reason: &str) -> io::Result<()> {
    use std::io::Write as _;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir.as_fd(), name, flags, Mode::from_raw_mode(0o644))?;
    let mut file = File::from(fd);
    file.write_all(format!("{reason}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(path: &Path, name: &str) -> FileId {
        crate::watch::file_id(name, &std::fs::symlink_metadata(path).expect("stat"))
    }

    #[test]
    fn archive_delete_and_quarantine_move_only_the_settled_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let (archive, quarantine) = (data.join("_archive"), data.join("_rejected"));
        let folders = Folders { data: &data, archive: &archive, quarantine: &quarantine };
        for name in ["a.csv", "b.csv", "c.csv"] {
            std::fs::write(data.join(name), name)?;
        }
        let a = id_of(&data.join("a.csv"), "a.csv");
        assert_eq!(dispose(&folders, &a, &Action::Archive)?, Moved::Done(Some("a.csv".into())));
        assert!(archive.join("a.csv").exists() && !data.join("a.csv").exists());
        // A second a.csv archived later does not replace the first.
        std::fs::write(data.join("a.csv"), "second")?;
        let a2 = id_of(&data.join("a.csv"), "a.csv");
        assert_eq!(dispose(&folders, &a2, &Action::Archive)?, Moved::Done(Some("a.csv.1".into())));
        let b = id_of(&data.join("b.csv"), "b.csv");
        assert_eq!(dispose(&folders, &b, &Action::Delete)?, Moved::Done(None));
        assert!(!data.join("b.csv").exists());
        let c = id_of(&data.join("c.csv"), "c.csv");
        let q = Action::Quarantine { reason: "wrong header".into() };
        assert_eq!(dispose(&folders, &c, &q)?, Moved::Done(Some("c.csv".into())));
        assert_eq!(std::fs::read_to_string(quarantine.join("c.csv.reason"))?, "wrong header\n");
        assert_eq!(dispose(&folders, &c, &q)?, Moved::Gone);
        let left: Vec<_> = std::fs::read_dir(&data)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "only the two folders: {left:?}");
        Ok(())
    }

    #[test]
    fn a_new_file_under_the_name_is_left_alone() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().to_owned();
        let folders = Folders { data: &data, archive: &data.join("_archive"), quarantine: &data.join("_rejected") };
        std::fs::write(data.join("a.csv"), "old")?;
        let old = id_of(&data.join("a.csv"), "a.csv");
        std::fs::write(data.join("a.csv"), "a newer and longer file")?;
        assert_eq!(dispose(&folders, &old, &Action::Delete)?, Moved::Replaced);
        assert_eq!(std::fs::read_to_string(data.join("a.csv"))?, "a newer and longer file");
        let names: Vec<_> = std::fs::read_dir(&data)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.csv")], "no private name left behind");
        Ok(())
    }

    #[test]
    fn a_planted_link_is_never_followed() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (data, elsewhere) = (dir.path().join("data"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&elsewhere)?;
        std::os::unix::fs::symlink(&elsewhere, data.join("_rejected"))?;
        let folders = Folders { data: &data, archive: &data.join("_archive"), quarantine: &data.join("_rejected") };
        std::fs::write(data.join("x.csv"), "x")?;
        let x = id_of(&data.join("x.csv"), "x.csv");
        let err = dispose(&folders, &x, &Action::Quarantine { reason: "r".into() }).expect_err("refused");
        assert!(err.to_string().contains("not a folder"), "{err}");
        assert!(data.join("x.csv").exists(), "the file stays where it was");
        assert_eq!(std::fs::read_dir(&elsewhere)?.count(), 0, "nothing went through the link");
        Ok(())
    }
}
