//! A snapshot of `/proc/<pid>` taken while the kernel still holds the crashed process
//! (core_pipe_limit > 0 keeps it until the hook exits).
//!
//! Every file is read with a byte cap; a file that cannot be read is noted, never fatal.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spool::{EntryWriter, SpoolError};

/// The /proc files copied as they are.
pub const PROC_FILES: &[&str] = &[
    "cmdline",
    "environ",
    "maps",
    "status",
    "limits",
    "cgroup",
    "mountinfo",
    "auxv",
    "stat",
    "comm",
];
/// How many open file descriptors are listed at most.
pub const FDS_MAX: usize = 4096;

/// The links and lists of the snapshot, written as `proc/links.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcLinks {
    pub exe: Option<String>,
    pub cwd: Option<String>,
    pub root: Option<String>,
    /// Namespace name → `net:[4026531840]`.
    pub namespaces: BTreeMap<String, String>,
    /// File descriptor → what it points to.
    pub fds: BTreeMap<u32, String>,
    /// True when more descriptors were open than [`FDS_MAX`].
    pub fds_truncated: bool,
}

/// What the snapshot saw: the links and the files it copied.
pub struct Snapshot {
    pub links: ProcLinks,
    pub files: Vec<String>,
    pub notes: Vec<String>,
}

fn read_link(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

/// Read at most `bytes_max` bytes of `path`.
pub fn read_capped(path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(bytes_max)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The links of `/proc/<pid>`.
pub fn read_links(proc_dir: &Path) -> ProcLinks {
    let mut links = ProcLinks {
        exe: read_link(&proc_dir.join("exe")),
        cwd: read_link(&proc_dir.join("cwd")),
        root: read_link(&proc_dir.join("root")),
        ..ProcLinks::default()
    };
    if let Ok(entries) = std::fs::read_dir(proc_dir.join("ns")) {
        for entry in entries.filter_map(|entry| entry.ok()) {
            if let Some(target) = read_link(&entry.path()) {
                links
                    .namespaces
                    .insert(entry.file_name().to_string_lossy().into_owned(), target);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(proc_dir.join("fd")) {
        for entry in entries.filter_map(|entry| entry.ok()) {
            if links.fds.len() >= FDS_MAX {
                links.fds_truncated = true;
                break;
            }
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(target) = read_link(&entry.path()) {
                links.fds.insert(fd, target);
            }
        }
    }
    links
}

/// Copy `/proc/<pid>` into `proc/` of the entry being written.
pub fn snapshot(
    pid: u32,
    writer: &EntryWriter,
    file_bytes_max: u64,
) -> Result<Snapshot, SpoolError> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for name in PROC_FILES {
        match read_capped(&proc_dir.join(name), file_bytes_max) {
            Ok(bytes) => {
                if bytes.len() as u64 == file_bytes_max {
                    notes.push(format!("proc/{name} cut at {file_bytes_max} bytes"));
                }
                let relative = format!("proc/{name}");
                writer.write_file(&relative, &bytes)?;
                files.push(relative);
            }
            Err(error) => notes.push(format!("proc/{name}: {error}")),
        }
    }
    let links = read_links(&proc_dir);
    let json = serde_json::to_vec_pretty(&links).expect("links serialize");
    writer.write_file("proc/links.json", &json)?;
    files.push("proc/links.json".to_string());
    Ok(Snapshot {
        links,
        files,
        notes,
    })
}

/// The container id from a `/proc/<pid>/cgroup` text: the 64-hex-digit id that docker,
/// podman, containerd and CRI-O put in their cgroup paths.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for component in path.rsplit('/') {
            let component = component.trim_end_matches(".scope");
            let candidate = component.rsplit(['-', ':']).next().unwrap_or(component);
            if candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(candidate.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_found_in_common_cgroup_layouts() {
        let id = "4f1c2a9e0b7d6c5a4f1c2a9e0b7d6c5a4f1c2a9e0b7d6c5a4f1c2a9e0b7d6c5a";
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("12:memory:/docker/{id}\n"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope\n"),
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&cgroup).as_deref(),
                Some(id),
                "{cgroup}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
    }

    #[test]
    fn own_process_snapshot_has_links_and_files() {
        let links = read_links(Path::new("/proc/self"));
        assert!(links.exe.is_some());
        assert!(links.namespaces.contains_key("pid"));
        assert!(
            links.fds.contains_key(&0) || links.fds.contains_key(&1) || links.fds.contains_key(&2)
        );
    }
}
