//! A data directory holds cores, environments and logs of every process that crashed on
//! the machine, so it is its owner's (root's) alone: the directory and every directory
//! in it `0700`, every file `0600`. The store creates what it writes that way
//! ([`crate::fs::PRIVATE_DIR_MODE`], [`crate::fs::PRIVATE_FILE_MODE`]); [`make_private`]
//! tightens a data dir an older version (or another tool) left readable.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fs::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};

/// Entries [`make_private`] looks at, at most (the rest is left for the next start).
pub const PRIVATE_WALK_ENTRIES_MAX: usize = 4_000_000;

/// What [`make_private`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tightened {
    /// Directories and files whose mode was narrowed.
    pub changed: usize,
    /// Symlinks found (left alone, never followed).
    pub symlinks: Vec<PathBuf>,
}

/// Creates `data_dir` (`0700`) when missing, then narrows it and everything below it:
/// group and others lose every permission (directories end `0700` or narrower, files
/// `0600` or narrower). The top directory is narrowed first, so no other user can change
/// what is below it while the walk runs; symlinks are not followed.
pub fn make_private(data_dir: &Path) -> io::Result<Tightened> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(data_dir)?;
    let mut tightened = Tightened::default();
    let mut pending = vec![data_dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)?;
        let kind = metadata.file_type();
        if kind.is_symlink() {
            tightened.symlinks.push(path);
            continue;
        }
        let mode = metadata.mode() & 0o7777;
        let wanted = if kind.is_dir() {
            mode & PRIVATE_DIR_MODE
        } else {
            mode & PRIVATE_FILE_MODE
        };
        if wanted != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))?;
            tightened.changed += 1;
        }
        if kind.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                seen += 1;
                if seen > PRIVATE_WALK_ENTRIES_MAX {
                    return Ok(tightened);
                }
                pending.push(entry?.path());
            }
        }
    }
    Ok(tightened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_readable_data_dir_is_narrowed_and_links_are_not_followed() {
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("data");
        let outside = parent.path().join("outside");
        std::fs::create_dir_all(data.join("spool/new/entry")).unwrap();
        std::fs::write(data.join("spool/new/entry/core.zst"), b"core").unwrap();
        std::fs::write(data.join("index.redb"), b"index").unwrap();
        std::fs::write(&outside, b"not ours").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        let set = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for dir in ["", "spool", "spool/new", "spool/new/entry"] {
            set(&data.join(dir), 0o755);
        }
        set(&data.join("spool/new/entry/core.zst"), 0o644);
        set(&data.join("index.redb"), 0o640);
        set(&outside, 0o644);

        let tightened = make_private(&data).unwrap();
        assert_eq!(tightened.changed, 6);
        assert_eq!(tightened.symlinks, [data.join("link")]);
        let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().mode() & 0o777;
        for dir in ["", "spool", "spool/new", "spool/new/entry"] {
            assert_eq!(mode(&data.join(dir)), 0o700, "{dir}");
        }
        assert_eq!(mode(&data.join("spool/new/entry/core.zst")), 0o600);
        assert_eq!(mode(&data.join("index.redb")), 0o600);
        assert_eq!(
            mode(&outside),
            0o644,
            "the link's target is not ours to change"
        );
        assert_eq!(make_private(&data).unwrap().changed, 0);

        let fresh = parent.path().join("fresh/data");
        make_private(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
