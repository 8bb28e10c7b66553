//! `crashmesh install` / `crashmesh uninstall`: point the kernel's core_pattern at the
//! hook and put back what was there before.
//!
//! The previous values are remembered in `<data dir>/install.json`, written before the
//! kernel setting changes, so an interrupted install can still be undone. Both commands
//! are idempotent and report exactly what they changed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hook::CORE_PATTERN_SPECIFIERS;

/// The kernel's limit on core_pattern, including the terminating NUL.
pub const CORE_PATTERN_BYTES_MAX: usize = 128;
/// core_pipe_limit we set when it is 0: with a non-zero limit the kernel keeps the crashed
/// process (and its /proc) until the hook is done.
pub const CORE_PIPE_LIMIT: u32 = 16;

/// Where the kernel settings live; tests point this at plain files.
#[derive(Clone, Debug)]
pub struct KernelFiles {
    pub core_pattern: PathBuf,
    pub core_pipe_limit: PathBuf,
}

impl Default for KernelFiles {
    fn default() -> KernelFiles {
        KernelFiles {
            core_pattern: PathBuf::from("/proc/sys/kernel/core_pattern"),
            core_pipe_limit: PathBuf::from("/proc/sys/kernel/core_pipe_limit"),
        }
    }
}

/// What install remembered, in `install.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstallState {
    pub previous_core_pattern: String,
    pub previous_core_pipe_limit: String,
    pub core_pattern: String,
    /// The config file the hook reads: core_pattern has no room for it (128 bytes).
    #[serde(default)]
    pub config_file: Option<PathBuf>,
}

/// One change made (or found already made), for the human and `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub setting: String,
    pub from: String,
    pub to: String,
    pub changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("core_pattern would be {length} bytes, the kernel allows {max}: use a shorter binary or data-dir path ({pattern})", max = CORE_PATTERN_BYTES_MAX - 1)]
    PatternTooLong { pattern: String, length: usize },
    #[error("{path}: {source} (install needs root)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read_setting(path: &Path) -> Result<String, InstallError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches('\n').to_string())
        .map_err(|source| InstallError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn write_setting(path: &Path, value: &str) -> Result<(), InstallError> {
    std::fs::write(path, format!("{value}\n")).map_err(|source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The core_pattern that runs `binary` as the hook, with the data dir when it is not the
/// default. The config file's path is kept in the data dir's `install.json` instead,
/// because the kernel cuts core_pattern at 128 bytes.
pub fn hook_pattern(binary: &Path, data_dir: Option<&Path>) -> Result<String, InstallError> {
    let mut pattern = format!("|{} hook core", binary.display());
    if let Some(data_dir) = data_dir {
        pattern.push_str(&format!(" --data-dir {}", data_dir.display()));
    }
    pattern.push(' ');
    pattern.push_str(CORE_PATTERN_SPECIFIERS);
    if pattern.len() >= CORE_PATTERN_BYTES_MAX {
        return Err(InstallError::PatternTooLong {
            length: pattern.len(),
            pattern,
        });
    }
    Ok(pattern)
}

fn is_crashmesh_pattern(pattern: &str) -> bool {
    pattern.starts_with('|') && pattern.contains("crashmesh hook core")
}

/// Set core_pattern to `pattern` and make core_pipe_limit non-zero, remembering the
/// previous values in `state_file` (unless they are ours already).
pub fn install(
    files: &KernelFiles,
    state_file: &Path,
    pattern: &str,
    config_file: Option<&Path>,
) -> Result<Vec<Change>, InstallError> {
    let current_pattern = read_setting(&files.core_pattern)?;
    let current_limit = read_setting(&files.core_pipe_limit)?;
    let previous = read_state(state_file);
    // Reinstalling over our own pattern keeps the original previous values.
    let state = match previous {
        Some(state) if is_crashmesh_pattern(&current_pattern) => InstallState {
            core_pattern: pattern.to_string(),
            config_file: config_file.map(Path::to_path_buf),
            ..state
        },
        _ => InstallState {
            previous_core_pattern: current_pattern.clone(),
            previous_core_pipe_limit: current_limit.clone(),
            core_pattern: pattern.to_string(),
            config_file: config_file.map(Path::to_path_buf),
        },
    };
    write_state(state_file, &state)?;

    let mut changes = Vec::new();
    let pattern_changed = current_pattern != pattern;
    if pattern_changed {
        write_setting(&files.core_pattern, pattern)?;
    }
    changes.push(Change {
        setting: "kernel.core_pattern".into(),
        from: current_pattern,
        to: pattern.into(),
        changed: pattern_changed,
    });
    let limit_changed = current_limit.trim() == "0";
    let new_limit = if limit_changed {
        CORE_PIPE_LIMIT.to_string()
    } else {
        current_limit.clone()
    };
    if limit_changed {
        write_setting(&files.core_pipe_limit, &new_limit)?;
    }
    changes.push(Change {
        setting: "kernel.core_pipe_limit".into(),
        from: current_limit,
        to: new_limit,
        changed: limit_changed,
    });
    Ok(changes)
}

/// Put back what install found, if core_pattern is still ours.
pub fn uninstall(files: &KernelFiles, state_file: &Path) -> Result<Vec<Change>, InstallError> {
    let current_pattern = read_setting(&files.core_pattern)?;
    let current_limit = read_setting(&files.core_pipe_limit)?;
    let Some(state) = read_state(state_file) else {
        return Ok(vec![Change {
            setting: "kernel.core_pattern".into(),
            from: current_pattern.clone(),
            to: current_pattern,
            changed: false,
        }]);
    };
    let mut changes = Vec::new();
    if is_crashmesh_pattern(&current_pattern) {
        write_setting(&files.core_pattern, &state.previous_core_pattern)?;
        changes.push(Change {
            setting: "kernel.core_pattern".into(),
            from: current_pattern,
            to: state.previous_core_pattern.clone(),
            changed: true,
        });
        let limit_changed = current_limit != state.previous_core_pipe_limit;
        if limit_changed {
            write_setting(&files.core_pipe_limit, &state.previous_core_pipe_limit)?;
        }
        changes.push(Change {
            setting: "kernel.core_pipe_limit".into(),
            from: current_limit,
            to: state.previous_core_pipe_limit.clone(),
            changed: limit_changed,
        });
    } else {
        // Somebody else owns core_pattern now; leave it alone.
        changes.push(Change {
            setting: "kernel.core_pattern".into(),
            from: current_pattern.clone(),
            to: current_pattern,
            changed: false,
        });
    }
    std::fs::remove_file(state_file).map_err(|source| InstallError::Io {
        path: state_file.to_path_buf(),
        source,
    })?;
    Ok(changes)
}

/// What install remembered in a data dir, if it was installed from there.
pub fn read_state(path: &Path) -> Option<InstallState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_state(path: &Path, state: &InstallState) -> Result<(), InstallError> {
    let io_error = |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let temporary = path.with_extension("json.tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec_pretty(state).expect("state serializes"),
    )
    .map_err(io_error)?;
    std::fs::rename(&temporary, path).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_kernel(dir: &Path, pattern: &str, limit: &str) -> KernelFiles {
        let files = KernelFiles {
            core_pattern: dir.join("core_pattern"),
            core_pipe_limit: dir.join("core_pipe_limit"),
        };
        std::fs::write(&files.core_pattern, format!("{pattern}\n")).unwrap();
        std::fs::write(&files.core_pipe_limit, format!("{limit}\n")).unwrap();
        files
    }

    #[test]
    fn install_is_idempotent_and_uninstall_restores() {
        let dir = tempfile::tempdir().unwrap();
        let files = fake_kernel(dir.path(), "core", "0");
        let state = dir.path().join("data/install.json");
        let pattern = hook_pattern(Path::new("/usr/bin/crashmesh"), None).unwrap();

        let first = install(&files, &state, &pattern, None).unwrap();
        assert!(first.iter().all(|change| change.changed));
        assert_eq!(read_setting(&files.core_pattern).unwrap(), pattern);
        assert_eq!(read_setting(&files.core_pipe_limit).unwrap(), "16");

        let second = install(&files, &state, &pattern, None).unwrap();
        assert!(second.iter().all(|change| !change.changed), "{second:?}");

        let undone = uninstall(&files, &state).unwrap();
        assert!(undone[0].changed);
        assert_eq!(read_setting(&files.core_pattern).unwrap(), "core");
        assert_eq!(read_setting(&files.core_pipe_limit).unwrap(), "0");
        let again = uninstall(&files, &state).unwrap();
        assert!(!again[0].changed);
    }

    #[test]
    fn uninstall_leaves_a_pattern_somebody_else_set() {
        let dir = tempfile::tempdir().unwrap();
        let files = fake_kernel(dir.path(), "core", "0");
        let state = dir.path().join("install.json");
        install(
            &files,
            &state,
            &hook_pattern(Path::new("/bin/crashmesh"), None).unwrap(),
            None,
        )
        .unwrap();
        std::fs::write(
            &files.core_pattern,
            "|/usr/lib/systemd/systemd-coredump %P\n",
        )
        .unwrap();
        let changes = uninstall(&files, &state).unwrap();
        assert!(!changes[0].changed);
        assert_eq!(
            read_setting(&files.core_pattern).unwrap(),
            "|/usr/lib/systemd/systemd-coredump %P"
        );
    }

    #[test]
    fn too_long_patterns_are_refused() {
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(matches!(
            hook_pattern(&long, None),
            Err(InstallError::PatternTooLong { .. })
        ));
    }
}
