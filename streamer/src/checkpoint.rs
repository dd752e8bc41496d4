//! The checkpoint in `checkpoints/`: what this streamer did. The truth about
//! the files of the data folder lives in the database's file registry; the
//! checkpoint holds the streamer's identity and its batch log.
//!
//! Layout (every file JSON with a `version`, published atomically: temporary
//! name, fsync, rename, fsync of the folder):
//! - `metadata`: the checkpoint's id (a UUID the database's batches and load
//!   history are keyed by);
//! - `lock`: held (`flock`) by the one process using the folder; it holds
//!   that process's id for the message another one gets;
//! - `offsets/N`: the exact files of batch N (registry ids and identities),
//!   written *before* batch N writes anything to the database;
//! - `commits/N`: written after batch N committed, with each file's outcome;
//! - `progress/`: the progress log (see [`crate::observe::progress`]).
//!
//! Invariants: batch ids only grow; the batches with an `offsets/N` and no
//! `commits/N` (at most one per loader) are re-run or confirmed at start;
//! the log keeps the newest [`KEEP`] entries, so start-up does not grow with
//! the number of batches ever run. A version-1 checkpoint (the release before
//! the registry) is read once: its processed files seed the registry, then
//! its log moves to `legacy-v1/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use runtime::publish::publish;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The format every checkpoint file carries in its `version` field.
pub const FORMAT_VERSION: u32 = 2;
/// Log entries kept (of each kind): older ones are removed.
pub const KEEP: usize = 100;

/// A failure to read or write the checkpoint; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("checkpoint {path} is not readable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("checkpoint {path} has format version {found}; this streamer reads versions 1 and {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "the checkpoint folder {dir} is in use by another streamer{}: one process per checkpoint folder \
         (give each streamer its own CHECKPOINT_DIR; several streamers may share the data folder)",
        .holder.as_ref().map(|h| format!(" (process {h})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, holder: Option<String> },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

/// A file's identity: a file rewritten under the same name is a new file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub name: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// A file of a planned batch: its registry id and identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub file_id: i32,
    #[serde(flatten)]
    pub id: FileId,
}

/// `offsets/N`: the plan of batch N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub version: u32,
    pub batch_id: u64,
    pub planned_at: DateTime<Utc>,
    pub files: Vec<PlannedFile>,
}

/// How a file of a committed batch ended, as its text in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    Loaded,
    Quarantined,
    Missing,
    Changed,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Loaded => "loaded",
            FileStatus::Quarantined => "quarantined",
            FileStatus::Missing => "missing",
            FileStatus::Changed => "changed",
        }
    }
}

impl std::str::FromStr for FileStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<FileStatus, String> {
        match s {
            "loaded" => Ok(FileStatus::Loaded),
            "quarantined" => Ok(FileStatus::Quarantined),
            "missing" => Ok(FileStatus::Missing),
            "changed" => Ok(FileStatus::Changed),
            other => Err(format!("{other:?} is not a file status")),
        }
    }
}

/// One file of a committed batch and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFile {
    #[serde(flatten)]
    pub file: FileId,
    pub status: FileStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `commits/N`: batch N is in the database (or, `abandoned`, was never
/// committed and its files were taken by another streamer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub version: u32,
    pub batch_id: u64,
    pub committed_at: DateTime<Utc>,
    #[serde(default)]
    pub abandoned: bool,
    pub files: Vec<CommittedFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    version: u32,
    id: Uuid,
    created_at: DateTime<Utc>,
}

/// What a version-1 checkpoint knew: the files it had processed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Legacy {
    pub processed: Vec<FileId>,
    /// Its last committed batch.
    pub last_committed: Option<u64>,
}

/// The checkpoint, opened and locked.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    id: Uuid,
    /// Holds the folder's `flock` while open.
    _lock: fs::File,
    pending: BTreeMap<u64, Offsets>,
    last_committed: Option<u64>,
    next_batch: u64,
    legacy: Option<Legacy>,
}

impl Checkpoint {
    /// Opens (or creates) the checkpoint in `dir` and locks it: removes
    /// leftover temporaries and reads the log.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock(dir)?;
        for sub in ["offsets", "commits"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
            remove_temporaries(&path)?;
        }
        remove_temporaries(dir)?;
        let meta_path = dir.join("metadata");
        let (id, legacy) = match read_json::<Metadata>(&meta_path)? {
            Some(meta) if meta.version == FORMAT_VERSION => (meta.id, None),
            Some(meta) if meta.version == 1 => (meta.id, Some(read_legacy(dir)?)),
            Some(meta) => return Err(CheckpointError::Version { path: meta_path, found: meta.version }),
            None => {
                let meta = Metadata { version: FORMAT_VERSION, id: Uuid::new_v4(), created_at: Utc::now() };
                write_json(dir, "metadata", &meta)?;
                (meta.id, None)
            }
        };
        let mut cp = Checkpoint {
            dir: dir.to_owned(),
            id,
            _lock: lock,
            pending: BTreeMap::new(),
            last_committed: None,
            next_batch: 0,
            legacy,
        };
        if let Some(legacy) = &cp.legacy {
            cp.next_batch = legacy.last_committed.map_or(0, |n| n + 1);
            cp.last_committed = legacy.last_committed;
            return Ok(cp);
        }
        let offsets = list_ids(&dir.join("offsets"))?;
        let commits: BTreeSet<u64> = list_ids(&dir.join("commits"))?.into_iter().collect();
        for &n in &offsets {
            if !commits.contains(&n) {
                let path = dir.join("offsets").join(n.to_string());
                cp.pending.insert(n, read_entry(&path)?);
            }
        }
        cp.last_committed = commits.iter().next_back().copied();
        cp.next_batch = offsets.iter().chain(&commits).max().map_or(0, |n| n + 1);
        Ok(cp)
    }

    /// The checkpoint's id, recorded with every batch in the database.
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The planned batches that have no commit marker, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Offsets> {
        self.pending.values()
    }

    pub fn last_committed(&self) -> Option<u64> {
        self.last_committed
    }

    /// The id the next planned batch gets.
    pub fn next_batch_id(&self) -> u64 {
        self.next_batch
    }

    /// What a version-1 checkpoint knew, until [`Checkpoint::finish_upgrade`].
    pub fn legacy(&self) -> Option<&Legacy> {
        self.legacy.as_ref()
    }

    /// Batch ids continue after `batch_id` (the database has batches of this
    /// checkpoint its log no longer holds: a checkpoint restored from a copy).
    pub fn continue_after(&mut self, batch_id: u64) {
        self.next_batch = self.next_batch.max(batch_id + 1);
    }

    /// Writes `offsets/N` for a new batch. Nothing of the batch may be
    /// written to the database before this returns.
    pub fn plan(&mut self, files: Vec<PlannedFile>) -> Result<Offsets, CheckpointError> {
        let plan = Offsets { version: FORMAT_VERSION, batch_id: self.next_batch, planned_at: Utc::now(), files };
        write_json(&self.dir.join("offsets"), &plan.batch_id.to_string(), &plan)?;
        self.next_batch += 1;
        self.pending.insert(plan.batch_id, plan.clone());
        Ok(plan)
    }

    /// Rewrites the plan of pending batch N with fewer files (nothing of it
    /// committed; it runs again without the others).
    pub fn replan(&mut self, batch_id: u64, files: Vec<PlannedFile>) -> Result<Offsets, CheckpointError> {
        let plan = Offsets { version: FORMAT_VERSION, batch_id, planned_at: Utc::now(), files };
        write_json(&self.dir.join("offsets"), &batch_id.to_string(), &plan)?;
        self.pending.insert(batch_id, plan.clone());
        Ok(plan)
    }

    /// Writes `commits/N` for a pending batch.
    pub fn commit(&mut self, commit: &Commit) -> Result<(), CheckpointError> {
        write_json(&self.dir.join("commits"), &commit.batch_id.to_string(), commit)?;
        self.pending.remove(&commit.batch_id);
        self.last_committed = self.last_committed.max(Some(commit.batch_id));
        Ok(())
    }

    /// Removes all but the newest [`KEEP`] log entries of each kind (a
    /// pending batch's plan always stays).
    pub fn compact(&mut self) -> Result<(), CheckpointError> {
        for sub in ["offsets", "commits"] {
            let path = self.dir.join(sub);
            let ids = list_ids(&path)?;
            for old in ids.iter().take(ids.len().saturating_sub(KEEP)) {
                if sub == "offsets" && self.pending.contains_key(old) {
                    continue;
                }
                let p = path.join(old.to_string());
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        Ok(())
    }

    /// Ends the upgrade of a version-1 checkpoint: its log moves to
    /// `legacy-v1/` and the metadata says version 2.
    pub fn finish_upgrade(&mut self) -> Result<(), CheckpointError> {
        if self.legacy.is_none() {
            return Ok(());
        }
        let legacy = self.dir.join("legacy-v1");
        fs::create_dir_all(&legacy).map_err(io_err(&legacy))?;
        for sub in ["offsets", "commits", "compact"] {
            let from = self.dir.join(sub);
            if from.exists() {
                let to = legacy.join(sub);
                fs::rename(&from, &to).map_err(io_err(&from))?;
            }
        }
        for sub in ["offsets", "commits"] {
            let path = self.dir.join(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let meta = Metadata { version: FORMAT_VERSION, id: self.id, created_at: Utc::now() };
        write_json(&self.dir, "metadata", &meta)?;
        self.legacy = None;
        Ok(())
    }
}

/// Takes the folder's lock, or says who holds it.
/// The lock is held on a read-only descriptor, so that the checkpoint's
/// filesystem can still be remounted read-only under a running streamer
/// (which then waits with its batches until it is writable again).
fn lock(dir: &Path) -> Result<fs::File, CheckpointError> {
    use rustix::fs::{flock, FlockOperation};
    let path = dir.join("lock");
    if !path.exists() {
        fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).map_err(io_err(&path))?;
    }
    let mut held = fs::File::open(&path).map_err(io_err(&path))?;
    if flock(&held, FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = held.read_to_string(&mut holder);
        let holder = holder.trim().to_owned();
        return Err(CheckpointError::Locked { dir: dir.to_owned(), holder: (!holder.is_empty()).then_some(holder) });
    }
    let me = format!("{} on {}\n", std::process::id(), hostname());
    let mut file = fs::OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
    let write = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(me.as_bytes()));
    write.map_err(io_err(&path))?;
    Ok(held)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "this host".into())
}

/// The processed files of a version-1 checkpoint: its newest snapshot plus
/// the commits after it (what that release's `Checkpoint::open` computed).
fn read_legacy(dir: &Path) -> Result<Legacy, CheckpointError> {
    #[derive(Deserialize)]
    struct V1File {
        name: String,
        size: u64,
        mtime_ns: i64,
    }
    #[derive(Deserialize)]
    struct V1Compact {
        files: Vec<V1File>,
    }
    #[derive(Deserialize)]
    struct V1Commit {
        files: Vec<V1File>,
    }
    let mut processed: HashMap<String, (u64, i64)> = HashMap::new();
    let mut last = None;
    let compact_dir = dir.join("compact");
    let mut after = None;
    if compact_dir.is_dir() {
        if let Some(&n) = list_ids(&compact_dir)?.last() {
            let snapshot: V1Compact =
                read_json(&compact_dir.join(n.to_string()))?.unwrap_or(V1Compact { files: vec![] });
            processed.extend(snapshot.files.into_iter().map(|f| (f.name, (f.size, f.mtime_ns))));
            last = Some(n);
            after = Some(n);
        }
    }
    for n in list_ids(&dir.join("commits"))? {
        if after.is_some_and(|a| n <= a) {
            continue;
        }
        if let Some(commit) = read_json::<V1Commit>(&dir.join("commits").join(n.to_string()))? {
            processed.extend(commit.files.into_iter().map(|f| (f.name, (f.size, f.mtime_ns))));
            last = last.max(Some(n));
        }
    }
    let mut files: Vec<FileId> =
        processed.into_iter().map(|(name, (size, mtime_ns))| FileId { name, size, mtime_ns }).collect();
    files.sort();
    Ok(Legacy { processed: files, last_committed: last })
}

/// Reads a log entry a listing has just shown, refusing another version.
fn read_entry<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CheckpointError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let version = read_json::<Version>(path)?
        .ok_or_else(|| CheckpointError::Corrupt { path: path.to_owned(), reason: "vanished while reading".into() })?;
    if version.version != FORMAT_VERSION {
        return Err(CheckpointError::Version { path: path.to_owned(), found: version.version });
    }
    read_json(path)?
        .ok_or_else(|| CheckpointError::Corrupt { path: path.to_owned(), reason: "vanished while reading".into() })
}

/// Numeric file names in `dir`, ascending; other names are ignored.
fn list_ids(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            ids.push(n);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn remove_temporaries(dir: &Path) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, CheckpointError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt { path: path.to_owned(), reason: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CheckpointError::Io { path: path.to_owned(), source: e }),
    }
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), CheckpointError> {
    let path = dir.join(name);
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| CheckpointError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    publish(dir, name, &bytes).map_err(io_err(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> PlannedFile {
        PlannedFile { file_id: size as i32, id: FileId { name: name.to_owned(), size, mtime_ns: 1 } }
    }

    fn commit_of(plan: &Offsets) -> Commit {
        Commit {
            version: FORMAT_VERSION,
            batch_id: plan.batch_id,
            committed_at: Utc::now(),
            abandoned: false,
            files: plan
                .files
                .iter()
                .map(|f| CommittedFile { file: f.id.clone(), status: FileStatus::Loaded, reason: None })
                .collect(),
        }
    }

    #[test]
    fn planned_batches_without_commit_are_pending_after_reopen() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let (id, p1, p2) = {
            let mut cp = Checkpoint::open(dir.path())?;
            let p0 = cp.plan(vec![file("a.csv", 1)])?;
            let p1 = cp.plan(vec![file("b.csv", 2)])?;
            let p2 = cp.plan(vec![file("c.csv", 3)])?;
            cp.commit(&commit_of(&p0))?;
            (cp.id(), p1, p2)
        };
        let cp = Checkpoint::open(dir.path())?;
        assert_eq!(cp.id(), id);
        assert_eq!(cp.pending().cloned().collect::<Vec<_>>(), vec![p1, p2]);
        assert_eq!(cp.last_committed(), Some(0));
        assert_eq!(cp.next_batch_id(), 3);
        Ok(())
    }

    #[test]
    fn a_second_process_is_refused_with_the_holder_named() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let _held = Checkpoint::open(dir.path())?;
        match Checkpoint::open(dir.path()) {
            Err(CheckpointError::Locked { holder: Some(h), .. }) => {
                assert!(h.starts_with(&std::process::id().to_string()), "{h}")
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn compaction_keeps_the_newest_entries_and_every_pending_plan() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let mut cp = Checkpoint::open(dir.path())?;
        let pending = cp.plan(vec![file("p.csv", 1)])?;
        for i in 0..(KEEP as u64 + 20) {
            let p = cp.plan(vec![file(&format!("f{i}.csv"), i)])?;
            cp.commit(&commit_of(&p))?;
        }
        cp.compact()?;
        let offsets = list_ids(&dir.path().join("offsets"))?;
        assert_eq!(offsets.len(), KEEP + 1, "the newest and the pending one");
        assert!(offsets.contains(&pending.batch_id));
        assert_eq!(list_ids(&dir.path().join("commits"))?.len(), KEEP);
        drop(cp);
        let cp = Checkpoint::open(dir.path())?;
        assert_eq!(cp.next_batch_id(), KEEP as u64 + 21);
        assert_eq!(cp.pending().count(), 1);
        Ok(())
    }

    #[test]
    fn a_version_1_checkpoint_gives_its_processed_files_then_moves_aside() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let d = dir.path();
        for sub in ["offsets", "commits", "compact"] {
            fs::create_dir_all(d.join(sub)).map_err(io_err(d))?;
        }
        let w = |path: PathBuf, text: &str| fs::write(&path, text).map_err(io_err(&path));
        w(
            d.join("metadata"),
            r#"{"version":1,"id":"6f1d6c4e-3c59-4c64-9d2f-2d1f0e1b2a3c","created_at":"2026-01-01T00:00:00Z"}"#,
        )?;
        w(d.join("compact/3"), r#"{"version":1,"batch_id":3,"files":[{"name":"a.csv","size":1,"mtime_ns":5}]}"#)?;
        w(
            d.join("commits/4"),
            r#"{"version":1,"batch_id":4,"committed_at":"2026-01-01T00:00:00Z","files":[{"name":"b.csv","size":2,"mtime_ns":6,"action":"keep"}]}"#,
        )?;
        w(d.join("offsets/4"), r#"{"version":1,"batch_id":4,"planned_at":"2026-01-01T00:00:00Z","files":[]}"#)?;
        let mut cp = Checkpoint::open(d)?;
        let legacy = cp.legacy().cloned().expect("a version-1 checkpoint");
        let names: Vec<&str> = legacy.processed.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["a.csv", "b.csv"]);
        assert_eq!((legacy.last_committed, cp.next_batch_id()), (Some(4), 5));
        cp.finish_upgrade()?;
        drop(cp);
        let cp = Checkpoint::open(d)?;
        assert!(cp.legacy().is_none());
        assert_eq!(cp.id().to_string(), "6f1d6c4e-3c59-4c64-9d2f-2d1f0e1b2a3c");
        assert!(d.join("legacy-v1/compact/3").exists());
        Ok(())
    }

    #[test]
    fn leftover_temporaries_are_removed_and_a_newer_version_is_refused() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        drop(Checkpoint::open(dir.path())?);
        let tmp = dir.path().join("offsets").join(".3.tmp");
        fs::write(&tmp, b"{").map_err(io_err(&tmp))?;
        drop(Checkpoint::open(dir.path())?);
        assert!(!tmp.exists());
        let meta = dir.path().join("metadata");
        let text = fs::read_to_string(&meta).map_err(io_err(&meta))?.replace("\"version\": 2", "\"version\": 9");
        fs::write(&meta, text).map_err(io_err(&meta))?;
        assert!(matches!(Checkpoint::open(dir.path()), Err(CheckpointError::Version { found: 9, .. })));
        Ok(())
    }
}
