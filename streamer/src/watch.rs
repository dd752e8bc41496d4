//! Discovering files in the data folder. The watcher's events (inotify, or
//! polling with `--poll`) are hints: they wake the stream up early and tell
//! which files a writer has finished (close-write, moved-to). The truth is a
//! listing of the folder, made at start, after every hint, and on a timer.
//!
//! A file is *ready* when its last hint says a writer finished it; a file
//! with no hint (there before the watcher, or seen by polling) is ready once
//! it has not changed for the settle time; a file a writer still has open
//! waits for its close, or — a safety net for lost events — for ten settle
//! times without a change. A watcher overflow clears every hint. Which files
//! are considered is the [`Selection`]'s to say (globs, subfolders; hidden,
//! `_*` and `*.tmp` names, links and FIFOs never). Ready files come oldest
//! first (modification time, then name). A file's name is its path inside
//! the data folder.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::checkpoint::FileId;
use crate::select::{walk, Selection};

/// A file a writer still has open is read after this many settle times
/// without a change, should its close never be seen.
pub const WRITING_SETTLE_FACTOR: u32 = 10;

/// A failure to watch the data folder.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Watch { path: PathBuf, source: notify::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

/// What the watcher last said about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// A writer closed it or renamed it into place.
    Complete,
    /// It was created or written to since.
    Writing,
}

/// A ready file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: FileId,
    pub path: PathBuf,
}

/// One look at the folder.
#[derive(Debug, Default)]
pub struct Listing {
    /// Ready files, oldest first.
    pub ready: Vec<Candidate>,
    /// Files present but not ready yet.
    pub waiting: usize,
    /// When the first waiting file will have settled.
    pub next_settle: Option<Duration>,
    /// Names of every eligible file present, ready or not.
    pub present: Vec<String>,
    /// Entries that are never read, and why (see [`crate::select::Walk`]).
    pub skipped: Vec<(String, String)>,
}

/// The identity of a file from its metadata.
pub fn file_id(name: &str, meta: &fs::Metadata) -> FileId {
    FileId { name: name.to_owned(), size: meta.len(), mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec() }
}

/// Watches a folder; see the module docs.
pub struct Discovery {
    dir: PathBuf,
    selection: Arc<Selection>,
    settle: Duration,
    hints: Arc<Mutex<HashMap<String, Hint>>>,
    wake: mpsc::Receiver<()>,
    /// Kept alive (never used again): a `Mutex` makes the stream `Sync`.
    _watcher: Mutex<Box<dyn notify::Watcher + Send>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("dir", &self.dir).field("settle", &self.settle).finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts watching `dir` (and its subfolders if the selection walks
    /// them): with inotify, or by polling every `poll` when given.
    pub fn start(
        dir: &Path,
        selection: Selection,
        settle: Duration,
        poll: Option<Duration>,
    ) -> Result<Self, WatchError> {
        // The watcher names files by absolute paths (a relative folder is
        // joined to the working directory, symbolic links kept); a hint is
        // keyed by the name inside the folder, so both start from the same
        // resolved path. Before this, `--data-dir data` matched no hint and
        // every renamed file waited out the settle time.
        let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let hints: Arc<Mutex<HashMap<String, Hint>>> = Arc::default();
        let (tx, wake) = mpsc::channel(1);
        let handler_hints = hints.clone();
        // Polling sees no closes: its events only wake the stream up.
        let with_hints = poll.is_none();
        let root = dir.to_owned();
        let handler = move |event: notify::Result<Event>| {
            match &event {
                // An open or a read (a loader reading a file, a listing
                // opening the folder: this streamer's or another's) changes
                // nothing; waking on it would make streamers on one folder
                // wake each other for ever.
                Ok(e) if !wakes(&e.kind) => return,
                Ok(e) if e.need_rescan() => clear(&handler_hints),
                Ok(e) if with_hints => record_hint(&handler_hints, &root, e),
                Ok(_) => {}
                Err(_) => clear(&handler_hints),
            }
            // A full channel already holds a wake-up: nothing is lost.
            let _ = tx.try_send(());
        };
        let err = |source| WatchError::Watch { path: dir.to_owned(), source };
        let mut watcher: Box<dyn notify::Watcher + Send> = match poll {
            Some(interval) => Box::new(
                notify::PollWatcher::new(handler, notify::Config::default().with_poll_interval(interval))
                    .map_err(err)?,
            ),
            None => Box::new(notify::RecommendedWatcher::new(handler, notify::Config::default()).map_err(err)?),
        };
        let mode = if selection.recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        watcher.watch(dir, mode).map_err(err)?;
        let selection = Arc::new(selection);
        Ok(Discovery { dir: dir.to_owned(), selection, settle, hints, wake, _watcher: Mutex::new(watcher) })
    }

    /// Waits for the watcher's next hint.
    pub async fn changed(&mut self) {
        if self.wake.recv().await.is_none() {
            // The watcher is gone; the timers still drive the stream.
            std::future::pending::<()>().await;
        }
    }

    /// Lists the folder now (blocking: the folder may hold many files).
    pub fn list(&self) -> Result<Listing, WatchError> {
        list_with_hints(&self.dir, &self.selection, &self.hints, self.settle)
    }

    /// Lists the folder on a blocking thread.
    pub fn list_async(&self) -> impl std::future::Future<Output = Result<Listing, WatchError>> + Send + 'static {
        let (dir, selection, hints, settle) =
            (self.dir.clone(), self.selection.clone(), self.hints.clone(), self.settle);
        async move {
            let path = dir.clone();
            match tokio::task::spawn_blocking(move || list_with_hints(&dir, &selection, &hints, settle)).await {
                Ok(listing) => listing,
                Err(e) => Err(WatchError::List { path, source: io::Error::other(e) }),
            }
        }
    }
}

fn list_with_hints(
    dir: &Path,
    selection: &Selection,
    hints: &Mutex<HashMap<String, Hint>>,
    settle: Duration,
) -> Result<Listing, WatchError> {
    let seen = match hints.lock() {
        Ok(h) => h.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let listing = list_ready(dir, selection, &seen, settle, SystemTime::now())?;
    if let Ok(mut h) = hints.lock() {
        prune(&mut h, &seen, &listing.present);
    }
    Ok(listing)
}

/// Forgets the hints of files that are gone — only hints the listing saw:
/// one recorded while the folder was being listed (a file renamed into place
/// just then) is kept for the next listing.
fn prune(hints: &mut HashMap<String, Hint>, seen: &HashMap<String, Hint>, present: &[String]) {
    hints.retain(|name, hint| present.binary_search(name).is_ok() || seen.get(name) != Some(hint));
}

fn clear(hints: &Mutex<HashMap<String, Hint>>) {
    if let Ok(mut h) = hints.lock() {
        h.clear();
    }
}

/// Whether an event can mean that a file appeared, changed, became ready or
/// went: everything but opens and reads (a close after writing counts).
fn wakes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A path of an event as a name inside the data folder.
fn name_in(root: &Path, path: &Path) -> Option<String> {
    path.strip_prefix(root).ok()?.to_str().map(str::to_owned)
}

fn record_hint(hints: &Mutex<HashMap<String, Hint>>, root: &Path, event: &Event) {
    let hint = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Hint::Complete),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Hint::Complete),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // paths = [from, to]: only the destination is complete.
            if let (Some(to), Ok(mut h)) = (event.paths.get(1), hints.lock()) {
                if let Some(name) = name_in(root, to) {
                    h.insert(name, Hint::Complete);
                }
            }
            None
        }
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Some(Hint::Writing),
        _ => None,
    };
    let Some(hint) = hint else { return };
    if let Ok(mut h) = hints.lock() {
        for path in &event.paths {
            if let Some(name) = name_in(root, path) {
                h.insert(name, hint);
            }
        }
    }
}

fn list_ready(
    dir: &Path,
    selection: &Selection,
    hints: &HashMap<String, Hint>,
    settle: Duration,
    now: SystemTime,
) -> Result<Listing, WatchError> {
    let found = walk(dir, selection).map_err(|source| WatchError::List { path: dir.to_owned(), source })?;
    let mut listing = Listing { skipped: found.skipped, ..Listing::default() };
    for file in found.files {
        let (name, meta) = (file.name, file.meta);
        listing.present.push(name.clone());
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or(Duration::ZERO);
        let wait = match hints.get(&name) {
            Some(Hint::Complete) => Duration::ZERO,
            Some(Hint::Writing) => settle * WRITING_SETTLE_FACTOR,
            None => settle,
        };
        if age >= wait {
            listing.ready.push(Candidate { id: file_id(&name, &meta), path: file.path });
        } else {
            listing.waiting += 1;
            let left = wait - age;
            listing.next_settle = Some(listing.next_settle.map_or(left, |n: Duration| n.min(left)));
        }
    }
    listing.present.sort();
    listing.ready.sort_by(|a, b| (a.id.mtime_ns, &a.id.name).cmp(&(b.id.mtime_ns, &b.id.name)));
    Ok(listing)
}

#[cfg(test)]
mod tests {

    #[test]
    fn opens_and_reads_wake_nothing_and_closes_after_writing_do() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
        assert!(!wakes(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!wakes(&EventKind::Access(AccessKind::Read)));
        assert!(!wakes(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(wakes(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(wakes(&EventKind::Create(CreateKind::File)));
        assert!(wakes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(wakes(&EventKind::Remove(RemoveKind::File)));
        assert!(wakes(&EventKind::Other));
    }
    use super::*;

    #[test]
    fn a_hint_recorded_during_a_listing_survives_it() {
        let seen = HashMap::from([("gone.csv".to_owned(), Hint::Complete), ("x.csv".to_owned(), Hint::Writing)]);
        let mut now = seen.clone();
        // Recorded while the folder was listed: the file is not in the listing yet.
        now.insert("new.csv".to_owned(), Hint::Complete);
        now.insert("x.csv".to_owned(), Hint::Complete);
        prune(&mut now, &seen, &[]);
        let mut kept: Vec<&str> = now.keys().map(String::as_str).collect();
        kept.sort();
        assert_eq!(kept, vec!["new.csv", "x.csv"]);
    }

    #[test]
    fn unsettled_files_wait_unless_a_writer_finished_them() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("a.csv"), b"x")?;
        fs::write(dir.path().join("b.csv"), b"x")?;
        fs::write(dir.path().join("c.csv"), b"x")?;
        fs::create_dir(dir.path().join("d.csv"))?;
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("l.csv"))?;
        let hints = HashMap::from([("b.csv".to_owned(), Hint::Complete), ("c.csv".to_owned(), Hint::Writing)]);
        let names = |l: &Listing| l.ready.iter().map(|c| c.id.name.clone()).collect::<Vec<_>>();
        let settle = Duration::from_secs(60);
        let listing = list_ready(dir.path(), &Selection::default(), &hints, settle, SystemTime::now())
            .map_err(io::Error::other)?;
        assert_eq!(names(&listing), vec!["b.csv"]);
        assert_eq!(listing.waiting, 2);
        assert!(listing.next_settle.is_some_and(|d| d <= settle));
        let later = SystemTime::now() + settle + Duration::from_secs(1);
        let listing = list_ready(dir.path(), &Selection::default(), &hints, settle, later).map_err(io::Error::other)?;
        assert_eq!(names(&listing), vec!["a.csv", "b.csv"], "an open file waits past the settle time");
        let much_later = SystemTime::now() + settle * WRITING_SETTLE_FACTOR + Duration::from_secs(1);
        let listing =
            list_ready(dir.path(), &Selection::default(), &hints, settle, much_later).map_err(io::Error::other)?;
        assert_eq!(listing.ready.len(), 3);
        assert_eq!(listing.present, vec!["a.csv", "b.csv", "c.csv"]);
        let mut skipped: Vec<&str> = listing.skipped.iter().map(|(n, _)| n.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, vec!["d.csv", "l.csv"], "a folder and a link are named, never read");
        Ok(())
    }
}
