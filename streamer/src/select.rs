//! Which files of the data folder are the stream's ([`Selection`]), and the
//! walk that finds them ([`walk`]).
//!
//! A file is read when its path inside the folder matches an `--include`
//! glob and no `--exclude` glob. A glob without a `/` is matched against
//! the file's name, one with a `/` against its path from the data folder
//! (`*` stays inside one folder, `**` crosses folders). Subfolders are
//! walked with `--recursive`. Whatever the globs say, a name or folder
//! starting with `.` or `_` (the generator's temporary files, `_archive/`,
//! `_rejected/`) and a name ending in `.tmp` are never read, and symbolic
//! links are never followed, to a file or to a folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// The default `--include`: plain, gzip and zstd CSV files.
pub const DEFAULT_INCLUDE: &str = "*.csv,*.csv.gz,*.csv.zst";

/// The files of the data folder the stream reads.
#[derive(Debug, Clone)]
pub struct Selection {
    include: Globs,
    exclude: Globs,
    pub recursive: bool,
    /// The globs as given, for messages.
    include_text: String,
}

/// Globs split by what they are matched against.
#[derive(Debug, Clone)]
struct Globs {
    by_name: GlobSet,
    by_path: GlobSet,
    empty: bool,
}

impl Globs {
    fn new(patterns: &[String]) -> Result<Globs, String> {
        let (mut by_name, mut by_path) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let mut empty = true;
        for pattern in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            empty = false;
            let glob = |p: &str| -> Result<Glob, String> {
                GlobBuilder::new(p).literal_separator(true).build().map_err(|e| format!("`{p}` is not a glob: {e}"))
            };
            match pattern.strip_prefix('/') {
                Some(anchored) => by_path.add(glob(anchored)?),
                None if pattern.contains('/') => by_path.add(glob(pattern)?),
                None => by_name.add(glob(pattern)?),
            };
        }
        let built = |b: GlobSetBuilder| b.build().map_err(|e| e.to_string());
        Ok(Globs { by_name: built(by_name)?, by_path: built(by_path)?, empty })
    }

    fn matches(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        self.by_name.is_match(name) || self.by_path.is_match(path)
    }
}

impl Default for Selection {
    fn default() -> Self {
        let include: Vec<String> = DEFAULT_INCLUDE.split(',').map(str::to_owned).collect();
        Selection::new(&include, &[], false).unwrap_or_else(|_| unreachable!("the default globs are valid"))
    }
}

impl Selection {
    pub fn new(include: &[String], exclude: &[String], recursive: bool) -> Result<Selection, String> {
        let include_globs = Globs::new(include)?;
        if include_globs.empty {
            return Err("no glob given: nothing would ever be read".into());
        }
        Ok(Selection {
            include: include_globs,
            exclude: Globs::new(exclude)?,
            recursive,
            include_text: include.join(","),
        })
    }

    /// Whether the file at `path` (inside the data folder, `/`-separated)
    /// is the stream's.
    pub fn matches(&self, path: &str) -> bool {
        self.verdict(path).is_ok()
    }

    /// [`Selection::matches`], with why not.
    pub fn verdict(&self, path: &str) -> Result<(), String> {
        if path.split('/').any(never_read) {
            Err("a hidden, `_` or `.tmp` name: never read".into())
        } else if !self.include.matches(path) {
            Err(format!("matches no --include glob ({})", self.include_text))
        } else if self.exclude.matches(path) {
            Err("matches an --exclude glob".into())
        } else {
            Ok(())
        }
    }

    /// The include globs, as given.
    pub fn include_text(&self) -> &str {
        &self.include_text
    }
}

/// Names never read, whatever the globs: hidden, `_`-prefixed, `.tmp`.
pub fn never_read(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_') || name.ends_with(".tmp") || name.is_empty()
}

/// A regular file of the stream's, found by [`walk`].
#[derive(Debug)]
pub struct Found {
    /// Its path inside the data folder, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub meta: fs::Metadata,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<Found>,
    /// Entries that are never read, and why: a name that is not UTF-8, a
    /// folder, link or FIFO where a file would match, a file that matches
    /// no glob.
    pub skipped: Vec<(String, String)>,
}

/// Walks the data folder (and its subfolders with `recursive`) and
/// returns the stream's files. Hidden and `_` entries are passed over in
/// silence: they are the pipeline's own.
pub fn walk(dir: &Path, selection: &Selection) -> io::Result<Walk> {
    let mut out = Walk::default();
    let mut folders = vec![(dir.to_owned(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            // A subfolder that went away or cannot be read: said, not fatal.
            Err(e) if !prefix.is_empty() => {
                out.skipped
                    .push((prefix.trim_end_matches('/').to_owned(), format!("a folder that cannot be read: {e}")));
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let raw = entry.file_name();
            let Some(name) = raw.to_str() else {
                let lossy = raw.to_string_lossy();
                if !never_read(&lossy) {
                    let path = format!("{prefix}{lossy}");
                    out.skipped.push((path, "its name is not UTF-8 (rename it to load it)".into()));
                }
                continue;
            };
            if never_read(name) {
                continue;
            }
            let path = format!("{prefix}{name}");
            // symlink_metadata: a link is never followed, whatever it points at.
            let Ok(meta) = fs::symlink_metadata(entry.path()) else { continue };
            let kind = meta.file_type();
            let verdict = selection.verdict(&path);
            if kind.is_dir() && selection.recursive {
                folders.push((entry.path(), format!("{path}/")));
            } else if kind.is_symlink() {
                if verdict.is_ok() || selection.recursive {
                    out.skipped.push((path, "a symbolic link, never followed".into()));
                }
            } else if let Err(why) = verdict {
                if kind.is_file() {
                    out.skipped.push((path, why));
                }
            } else if kind.is_file() {
                out.files.push(Found { name: path, path: entry.path(), meta });
            } else {
                out.skipped.push((path, "not a regular file (a folder or a FIFO)".into()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(include: &str, exclude: &str, recursive: bool) -> Selection {
        let split = |s: &str| s.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        Selection::new(&split(include), &split(exclude), recursive).expect("valid globs")
    }

    #[test]
    fn globs_match_names_or_paths_and_pipeline_names_never() {
        let s = Selection::default();
        for good in ["events_1.csv", "a b'c;--.csv", "événements.csv", "x.csv.gz", "x.csv.zst", "2026/12/01/x.csv"] {
            assert!(s.matches(good), "{good}");
        }
        for bad in [".events_1.csv.tmp", ".hidden.csv", "_archive.csv", "x.csv.tmp", "x.txt", "x.CSV", "_archive/x.csv"]
        {
            assert!(!s.matches(bad), "{bad}");
        }
        let s = selection("2026/*/*.csv", "", true);
        assert!(s.matches("2026/12/x.csv"));
        assert!(!s.matches("2026/12/01/x.csv"), "* stays inside one folder");
        assert!(!s.matches("x.csv"));
        let s = selection("**/*.csv,*.tsv", "*_test.csv,2025/**", true);
        assert!(s.matches("a/b/c.csv") && s.matches("c.csv") && s.matches("x.tsv"));
        assert!(!s.matches("a/b_test.csv") && !s.matches("2025/01/x.csv"));
        assert!(Selection::new(&["[".to_owned()], &[], false).expect_err("refused").contains("not a glob"));
        assert!(Selection::new(&[" ".to_owned()], &[], false).expect_err("refused").contains("nothing"));
    }

    #[test]
    fn the_walk_goes_into_subfolders_only_when_asked_and_never_through_links() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        fs::create_dir_all(d.join("2026/12/01"))?;
        fs::create_dir_all(d.join("_archive"))?;
        fs::create_dir_all(d.join(".hidden"))?;
        for f in ["a.csv", "2026/12/01/b.csv", "2026/c.csv.gz", "_archive/old.csv", ".hidden/h.csv", "notes.txt"] {
            fs::write(d.join(f), b"x")?;
        }
        let outside = tempfile::tempdir()?;
        fs::write(outside.path().join("secret.csv"), b"x")?;
        std::os::unix::fs::symlink(outside.path(), d.join("linked"))?;
        let names = |w: &Walk| {
            let mut n: Vec<&str> = w.files.iter().map(|f| f.name.as_str()).collect();
            n.sort();
            n.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let flat = walk(d, &Selection::default())?;
        assert_eq!(names(&flat), ["a.csv"]);
        let deep = walk(d, &selection(DEFAULT_INCLUDE, "", true))?;
        assert_eq!(names(&deep), ["2026/12/01/b.csv", "2026/c.csv.gz", "a.csv"]);
        let skipped: Vec<&str> = deep.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert!(skipped.contains(&"notes.txt") && skipped.contains(&"linked"), "{skipped:?}");
        Ok(())
    }
}
