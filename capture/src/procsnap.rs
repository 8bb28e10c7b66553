//! A snapshot of `/proc/<pid>` taken while the kernel still holds the crashed process
//! (core_pipe_limit > 0 keeps it until the hook exits).
//!
//! Every file is read with a byte cap; a file that cannot be read is noted, never fatal.

use std::collections::BTreeMap;
use std::io::{self, Read};
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

/// `/proc/<pid>` opened once: everything below is read through this descriptor, which
/// stays bound to the process it was opened for. When the pid is reused by another
/// process, reads through it fail (`ESRCH`) instead of describing the newcomer.
pub struct ProcDir {
    fd: std::os::fd::OwnedFd,
    pid: u32,
}

/// A process's user and group ids, from its `status` (real, effective).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcIds {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

impl ProcDir {
    /// Opens `/proc/<pid>`.
    pub fn open(pid: u32) -> io::Result<ProcDir> {
        Self::open_path(&Path::new("/proc").join(pid.to_string()), pid)
    }

    fn open_path(path: &Path, pid: u32) -> io::Result<ProcDir> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(ProcDir { fd, pid })
    }

    /// The pid it was opened for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// At most `bytes_max` bytes of a file below the directory.
    pub fn read_capped(&self, name: &str, bytes_max: u64) -> io::Result<Vec<u8>> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(bytes_max)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Where a link below the directory points (`exe`, `cwd`, `fd/3`).
    pub fn read_link(&self, name: &str) -> Option<String> {
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .ok()
            .map(|target| target.to_string_lossy().into_owned())
    }

    /// The names in a directory below it (`ns`, `fd`).
    fn list(&self, name: &str) -> Vec<String> {
        use rustix::fs::{Mode, OFlags};
        let Ok(fd) = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) else {
            return Vec::new();
        };
        let Ok(mut dir) = rustix::fs::Dir::new(fd) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        while let Some(Ok(entry)) = dir.read() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names
    }

    /// The process's ids, from its `status`.
    pub fn ids(&self) -> io::Result<ProcIds> {
        let status = self.read_capped("status", 64 * 1024)?;
        parse_ids(&String::from_utf8_lossy(&status))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid/Gid lines in status"))
    }
}

/// Real and effective ids from a `/proc/<pid>/status` text.
fn parse_ids(status: &str) -> Option<ProcIds> {
    let field = |name: &str| -> Option<(u32, u32)> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let mut numbers = line[name.len()..].split_whitespace();
        Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
    };
    let (uid, euid) = field("Uid:")?;
    let (gid, egid) = field("Gid:")?;
    Some(ProcIds {
        uid,
        euid,
        gid,
        egid,
    })
}

/// Read at most `bytes_max` bytes of `path`.
pub fn read_capped(path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(bytes_max)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The links of a process's `/proc` directory.
pub fn read_links(proc_dir: &ProcDir) -> ProcLinks {
    let mut links = ProcLinks {
        exe: proc_dir.read_link("exe"),
        cwd: proc_dir.read_link("cwd"),
        root: proc_dir.read_link("root"),
        ..ProcLinks::default()
    };
    for name in proc_dir.list("ns") {
        if let Some(target) = proc_dir.read_link(&format!("ns/{name}")) {
            links.namespaces.insert(name, target);
        }
    }
    for name in proc_dir.list("fd") {
        if links.fds.len() >= FDS_MAX {
            links.fds_truncated = true;
            break;
        }
        let Ok(fd) = name.parse::<u32>() else {
            continue;
        };
        if let Some(target) = proc_dir.read_link(&format!("fd/{name}")) {
            links.fds.insert(fd, target);
        }
    }
    links
}

/// Copy a process's `/proc` directory into `proc/` of the entry being written.
pub fn snapshot(
    proc_dir: &ProcDir,
    writer: &EntryWriter,
    file_bytes_max: u64,
) -> Result<Snapshot, SpoolError> {
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for name in PROC_FILES {
        match proc_dir.read_capped(name, file_bytes_max) {
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
    let links = read_links(proc_dir);
    let json = serde_json::to_vec_pretty(&links).expect("links serialize");
    writer.write_file("proc/links.json", &json)?;
    files.push("proc/links.json".to_string());
    Ok(Snapshot {
        links,
        files,
        notes,
    })
}

/// The kernel's host name (`uname -n`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
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
    fn ids_come_from_the_status_lines() {
        let status = "Name:\tpython3\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t101\t100\t100\n";
        assert_eq!(
            parse_ids(status),
            Some(ProcIds {
                uid: 1000,
                euid: 1001,
                gid: 100,
                egid: 101
            })
        );
        assert_eq!(parse_ids("Name: x\n"), None);
        let own = ProcDir::open(std::process::id()).unwrap().ids().unwrap();
        // SAFETY: plain getters.
        assert_eq!(own.euid, unsafe { libc::geteuid() });
    }

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
        let links = read_links(&ProcDir::open(std::process::id()).unwrap());
        assert!(links.exe.is_some());
        assert!(links.namespaces.contains_key("pid"));
        assert!(
            links.fds.contains_key(&0) || links.fds.contains_key(&1) || links.fds.contains_key(&2)
        );
    }
}
