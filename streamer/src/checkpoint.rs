//! The checkpoint log in `checkpoints/`: which files the stream has processed,
//! exactly once.
//!
//! Layout (every file JSON with a `version`, published atomically: temporary
//! name, fsync, rename, fsync of the folder):
//! - `metadata`: the checkpoint's id (a UUID the database's load history is
//!   keyed by, so a reset checkpoint never mistakes old batches for its own);
//! - `offsets/N`: the exact files of batch N, written *before* N touches the
//!   database;
//! - `commits/N`: written after batch N committed, with what is to happen to
//!   each file (archive, delete, quarantine);
//! - `compact/N`: the processed files still present in the data folder after
//!   batch N. Every [`COMPACT_EVERY`] batches it replaces the log up to N, so
//!   start-up reads one snapshot plus a short tail, whatever the history.
//!
//! Invariants: batch ids only grow; at most the newest `offsets/N` lacks its
//! `commits/N` (the pending batch, re-run or confirmed at start); a file is
//! processed when its identity — name, size, modification time — is in the
//! processed set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use runtime::publish::publish;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The format every checkpoint file carries in its `version` field.
pub const FORMAT_VERSION: u32 = 1;
/// Batches between two compactions.
pub const COMPACT_EVERY: u64 = 100;

/// A failure to read or write the checkpoint; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("checkpoint {path} is not readable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("checkpoint {path} has format version {found}; this streamer reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("checkpoint {dir}: batch {pending} is planned but batch {committed} is already committed")]
    Inconsistent { dir: PathBuf, pending: u64, committed: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

/// A file's identity: a file rewritten under the same name is a new file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub name: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// `offsets/N`: the plan of batch N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub version: u32,
    pub batch_id: u64,
    pub planned_at: DateTime<Utc>,
    pub files: Vec<FileId>,
}

/// What happens to a source file after its batch committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum Disposition {
    Keep,
    Archive,
    Delete,
    Quarantine {
        reason: String,
    },
    /// The file was gone when the batch read it.
    Missing,
}

/// One file of a committed batch and what is to happen to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFile {
    #[serde(flatten)]
    pub file: FileId,
    #[serde(flatten)]
    pub disposition: Disposition,
}

/// `commits/N`: batch N is in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub version: u32,
    pub batch_id: u64,
    pub committed_at: DateTime<Utc>,
    pub files: Vec<CommittedFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    version: u32,
    id: Uuid,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Compact {
    version: u32,
    batch_id: u64,
    files: Vec<FileId>,
}

/// The checkpoint, loaded.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    id: Uuid,
    /// name → (size, mtime_ns) of every processed file still tracked.
    processed: HashMap<String, (u64, i64)>,
    last_committed: Option<u64>,
    pending: Option<Offsets>,
    last_commit: Option<Commit>,
    compacted_at: Option<u64>,
}

impl Checkpoint {
    /// Opens (or creates) the checkpoint in `dir`: removes leftover
    /// temporaries, reads the newest snapshot and the log after it.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        for sub in ["offsets", "commits", "compact"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
            remove_temporaries(&path)?;
        }
        remove_temporaries(dir)?;
        let meta_path = dir.join("metadata");
        let id = match read_versioned::<Metadata>(&meta_path)? {
            Some(meta) => meta.id,
            None => {
                let meta = Metadata { version: FORMAT_VERSION, id: Uuid::new_v4(), created_at: Utc::now() };
                write_json(dir, "metadata", &meta)?;
                meta.id
            }
        };

        let mut cp = Checkpoint {
            dir: dir.to_owned(),
            id,
            processed: HashMap::new(),
            last_committed: None,
            pending: None,
            last_commit: None,
            compacted_at: None,
        };
        if let Some(&n) = list_ids(&dir.join("compact"))?.last() {
            let path = dir.join("compact").join(n.to_string());
            let snapshot: Compact = read_entry(&path)?;
            cp.processed = snapshot.files.into_iter().map(|f| (f.name, (f.size, f.mtime_ns))).collect();
            cp.last_committed = Some(n);
            cp.compacted_at = Some(n);
        }
        let after = |n: &u64| cp.compacted_at.is_none_or(|c| *n > c);
        let offsets: Vec<u64> = list_ids(&dir.join("offsets"))?.into_iter().filter(after).collect();
        let commits: HashSet<u64> = list_ids(&dir.join("commits"))?.into_iter().filter(after).collect();
        for n in offsets {
            let path = dir.join("offsets").join(n.to_string());
            let plan: Offsets = read_entry(&path)?;
            if commits.contains(&n) {
                let cpath = dir.join("commits").join(n.to_string());
                let commit: Commit = read_entry(&cpath)?;
                if let Some(pending) = cp.pending.take() {
                    return Err(CheckpointError::Inconsistent {
                        dir: dir.to_owned(),
                        pending: pending.batch_id,
                        committed: n,
                    });
                }
                cp.apply(&commit);
                cp.last_commit = Some(commit);
            } else if let Some(pending) = &cp.pending {
                return Err(CheckpointError::Inconsistent {
                    dir: dir.to_owned(),
                    pending: pending.batch_id,
                    committed: n,
                });
            } else {
                cp.pending = Some(plan);
            }
        }
        Ok(cp)
    }

    /// The checkpoint's id, recorded with every batch in the database.
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The planned batch that has no commit marker, if any.
    pub fn pending(&self) -> Option<&Offsets> {
        self.pending.as_ref()
    }

    /// The newest committed batch, if it is still in the log.
    pub fn last_commit(&self) -> Option<&Commit> {
        self.last_commit.as_ref()
    }

    pub fn last_committed(&self) -> Option<u64> {
        self.last_committed
    }

    /// How many processed files the checkpoint tracks.
    pub fn tracked_files(&self) -> usize {
        self.processed.len()
    }

    /// The id the next planned batch gets.
    pub fn next_batch_id(&self) -> u64 {
        match (&self.pending, self.last_committed) {
            (Some(p), _) => p.batch_id + 1,
            (None, Some(n)) => n + 1,
            (None, None) => 0,
        }
    }

    /// True when this exact file (name, size, mtime) was processed.
    pub fn is_processed(&self, file: &FileId) -> bool {
        self.processed.get(&file.name) == Some(&(file.size, file.mtime_ns))
    }

    /// True when a file of this name was processed before (maybe with other contents).
    pub fn knows_name(&self, name: &str) -> bool {
        self.processed.contains_key(name)
    }

    /// Writes `offsets/N` for the next batch. Nothing of the batch may touch
    /// the database before this returns.
    pub fn plan(&mut self, files: Vec<FileId>) -> Result<Offsets, CheckpointError> {
        if let Some(p) = &self.pending {
            return Err(CheckpointError::Inconsistent {
                dir: self.dir.clone(),
                pending: p.batch_id,
                committed: p.batch_id,
            });
        }
        let plan = Offsets { version: FORMAT_VERSION, batch_id: self.next_batch_id(), planned_at: Utc::now(), files };
        write_json(&self.dir.join("offsets"), &plan.batch_id.to_string(), &plan)?;
        self.pending = Some(plan.clone());
        Ok(plan)
    }

    /// Writes `commits/N` for the pending batch and marks its files processed.
    pub fn commit(&mut self, commit: Commit) -> Result<(), CheckpointError> {
        write_json(&self.dir.join("commits"), &commit.batch_id.to_string(), &commit)?;
        if self.pending.as_ref().is_some_and(|p| p.batch_id == commit.batch_id) {
            self.pending = None;
        }
        self.apply(&commit);
        self.last_commit = Some(commit);
        Ok(())
    }

    fn apply(&mut self, commit: &Commit) {
        for f in &commit.files {
            self.processed.insert(f.file.name.clone(), (f.file.size, f.file.mtime_ns));
        }
        self.last_committed = Some(commit.batch_id);
    }

    /// True when enough batches have passed since the last compaction.
    pub fn wants_compaction(&self) -> bool {
        match (self.last_committed, self.pending.is_some()) {
            (Some(n), false) => n + 1 >= self.compacted_at.map_or(0, |c| c + 1) + COMPACT_EVERY,
            _ => false,
        }
    }

    /// Writes `compact/N` (N the last committed batch) holding the processed
    /// files that `present` still holds, then removes the log up to N.
    /// Files no longer in the data folder are forgotten.
    pub fn compact(&mut self, present: &HashSet<String>) -> Result<(), CheckpointError> {
        let Some(n) = self.last_committed else { return Ok(()) };
        if self.pending.is_some() {
            return Ok(());
        }
        let mut files: Vec<FileId> = self
            .processed
            .iter()
            .filter(|(name, _)| present.contains(*name))
            .map(|(name, (size, mtime_ns))| FileId { name: name.clone(), size: *size, mtime_ns: *mtime_ns })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        write_json(
            &self.dir.join("compact"),
            &n.to_string(),
            &Compact { version: FORMAT_VERSION, batch_id: n, files },
        )?;
        // Only once the snapshot is safe does memory forget the absent files.
        self.processed.retain(|name, _| present.contains(name));
        for sub in ["offsets", "commits", "compact"] {
            let path = self.dir.join(sub);
            for old in list_ids(&path)? {
                let keep = if sub == "compact" { old >= n } else { old > n };
                if !keep {
                    let p = path.join(old.to_string());
                    fs::remove_file(&p).map_err(io_err(&p))?;
                }
            }
        }
        self.compacted_at = Some(n);
        Ok(())
    }
}

/// Every checkpoint file carries its format version.
trait Versioned: for<'de> Deserialize<'de> {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(impl Versioned for $t { fn version(&self) -> u32 { self.version } })*};
}
versioned!(Metadata, Compact, Offsets, Commit);

/// Reads a checkpoint file if it exists, refusing another format version.
fn read_versioned<T: Versioned>(path: &Path) -> Result<Option<T>, CheckpointError> {
    let Some(value) = read_json::<T>(path)? else { return Ok(None) };
    match value.version() {
        FORMAT_VERSION => Ok(Some(value)),
        found => Err(CheckpointError::Version { path: path.to_owned(), found }),
    }
}

/// Reads a log entry that a listing has just shown.
fn read_entry<T: Versioned>(path: &Path) -> Result<T, CheckpointError> {
    read_versioned(path)?
        .ok_or_else(|| CheckpointError::Corrupt { path: path.to_owned(), reason: "vanished while reading".into() })
}

/// Numeric file names in `dir`, ascending; other names are ignored.
fn list_ids(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let mut ids = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            ids.insert(n, ());
        }
    }
    Ok(ids.into_keys().collect())
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

    fn file(name: &str, size: u64) -> FileId {
        FileId { name: name.to_owned(), size, mtime_ns: 1 }
    }

    fn commit_of(plan: &Offsets) -> Commit {
        Commit {
            version: FORMAT_VERSION,
            batch_id: plan.batch_id,
            committed_at: Utc::now(),
            files: plan
                .files
                .iter()
                .map(|f| CommittedFile { file: f.clone(), disposition: Disposition::Keep })
                .collect(),
        }
    }

    #[test]
    fn a_planned_batch_without_commit_is_pending_after_reopen() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let mut cp = Checkpoint::open(dir.path())?;
        let id = cp.id();
        let p0 = cp.plan(vec![file("a.csv", 1)])?;
        cp.commit(commit_of(&p0))?;
        let p1 = cp.plan(vec![file("b.csv", 2), file("c.csv", 3)])?;

        let cp = Checkpoint::open(dir.path())?;
        assert_eq!(cp.id(), id);
        assert_eq!(cp.pending(), Some(&p1));
        assert_eq!(cp.last_committed(), Some(0));
        assert_eq!(cp.next_batch_id(), 2);
        assert!(cp.is_processed(&file("a.csv", 1)));
        assert!(!cp.is_processed(&file("b.csv", 2)));
        Ok(())
    }

    #[test]
    fn a_rewritten_file_is_not_processed_but_its_name_is_known() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let mut cp = Checkpoint::open(dir.path())?;
        let p = cp.plan(vec![file("a.csv", 1)])?;
        cp.commit(commit_of(&p))?;
        assert!(!cp.is_processed(&file("a.csv", 99)));
        assert!(cp.knows_name("a.csv"));
        Ok(())
    }

    #[test]
    fn compaction_keeps_state_and_drops_old_log_and_absent_files() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let mut cp = Checkpoint::open(dir.path())?;
        for i in 0..(COMPACT_EVERY + 5) {
            let p = cp.plan(vec![file(&format!("f{i}.csv"), i)])?;
            cp.commit(commit_of(&p))?;
            if cp.wants_compaction() {
                let present: HashSet<String> = (1..=i).map(|k| format!("f{k}.csv")).collect();
                cp.compact(&present)?;
            }
        }
        let offsets = list_ids(&dir.path().join("offsets"))?;
        assert_eq!(offsets, (COMPACT_EVERY..COMPACT_EVERY + 5).collect::<Vec<_>>());
        let cp = Checkpoint::open(dir.path())?;
        assert_eq!(cp.next_batch_id(), COMPACT_EVERY + 5);
        assert!(!cp.knows_name("f0.csv"), "absent at compaction, forgotten");
        assert!(cp.is_processed(&file("f1.csv", 1)));
        assert!(cp.is_processed(&file(&format!("f{}.csv", COMPACT_EVERY + 4), COMPACT_EVERY + 4)));
        Ok(())
    }

    #[test]
    fn leftover_temporaries_are_removed_and_a_newer_version_is_refused() -> Result<(), CheckpointError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        Checkpoint::open(dir.path())?;
        let tmp = dir.path().join("offsets").join(".3.tmp");
        fs::write(&tmp, b"{").map_err(io_err(&tmp))?;
        Checkpoint::open(dir.path())?;
        assert!(!tmp.exists());
        let meta = dir.path().join("metadata");
        let text = fs::read_to_string(&meta).map_err(io_err(&meta))?.replace("\"version\": 1", "\"version\": 9");
        fs::write(&meta, text).map_err(io_err(&meta))?;
        assert!(matches!(Checkpoint::open(dir.path()), Err(CheckpointError::Version { found: 9, .. })));
        Ok(())
    }
}
