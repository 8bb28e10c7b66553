//! Opening what someone else controls.
//!
//! crashmesh runs as root and reads files whose paths a local user or a crashed process
//! can influence: kdump's crash directories in a world-writable `/var/crash`, a JVM's
//! `hs_err_pid*.log` in its working directory, VM logs, the executable and libraries a
//! core names, anything under a container's root. Crash handlers that opened such paths
//! with a plain `open` handed root's reach to whoever planted a symlink, a hard link or a
//! FIFO there (apport's and ABRT's CVE-2015-1325, CVE-2017-14177, CVE-2020-15702 …).
//!
//! # Guarantees
//! - **No symlink is followed where one could be planted.** A path is resolved with
//!   `openat2`: [`Resolve::NoSymlinks`] refuses a symlink in any component,
//!   [`Resolve::InRoot`] resolves inside a container's root as if it were `/` (its own
//!   symlinks stay inside it), [`Directory::open_file`] stays beneath its directory. On a
//!   kernel without `openat2` (before 5.6) the same rules hold through a walk, one
//!   component at a time with `O_NOFOLLOW` (inside a root, symlinks are then refused).
//!   [`Resolve::RootOwnedSymlinks`] follows only links root made in directories only root
//!   can write (`/lib → usr/lib`), never one a user could have planted.
//! - **Nothing blocks and nothing is opened for reading before it is known to be a
//!   regular file.** The path is opened `O_PATH` (which opens nothing: no FIFO waits for a
//!   writer, no device sees an `open`), checked with `fstat` on that descriptor, and only
//!   then reopened for reading through `/proc/self/fd`, which is the same inode.
//! - **The descriptor is judged, not the path.** Owner and link count come from `fstat`
//!   of the opened descriptor ([`Rules`]); the caller gets that `fstat` ([`Opened`]) and
//!   takes credentials from it, never from the file's content or name.
//!
//! The crate has no unsafe code (the workspace lint forbids it here): every system call
//! goes through rustix.
//!
//! Paths named by root's own configuration (the debug directories, `/usr/lib/debug`'s
//! build-id links) may be opened with [`Resolve::FollowSymlinks`]: links are followed, the
//! rest (no blocking, a regular file, [`Rules`]) still holds.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// How many entries [`Directory::entries`] gives at most.
pub const DIRECTORY_ENTRIES_MAX: usize = 65_536;
/// Components a fallback walk follows at most (a path deeper than this is refused).
pub const WALK_COMPONENTS_MAX: usize = 256;

/// Who may own a file for it to be believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Anyone (the owner is reported, and the caller takes it as the file's user).
    Any,
    /// root only: files root's own tools write (kdump, pstore).
    Root,
    /// root or this user (a crashed process's files).
    RootOr(u32),
}

/// What an opened file must be, besides a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub owner: Owner,
    /// Refuse a file with more than one hard link: a link a user made to a file they
    /// cannot read (`/etc/shadow`) has the target's owner, and a link count of two.
    pub single_link: bool,
}

impl Rules {
    /// Any owner, any link count: still a regular file, never a FIFO or a device.
    pub const REGULAR: Rules = Rules {
        owner: Owner::Any,
        single_link: false,
    };
    /// Written by root's tools, and not a hard link to something else.
    pub const ROOT_SINGLE_LINK: Rules = Rules {
        owner: Owner::Root,
        single_link: true,
    };
    /// Anyone's file, but not a hard link to something else (the owner is believed).
    pub const ANY_SINGLE_LINK: Rules = Rules {
        owner: Owner::Any,
        single_link: true,
    };
}

/// How the components of a path are resolved.
#[derive(Clone, Copy, Debug)]
pub enum Resolve<'a> {
    /// No component may be a symlink (`RESOLVE_NO_SYMLINKS`).
    NoSymlinks,
    /// Inside `root`, as if it were `/` (`RESOLVE_IN_ROOT`): `..` and absolute symlinks
    /// stay inside it; `/proc` magic links are refused.
    InRoot(&'a Path),
    /// Symlinks are followed: only for paths root's configuration names.
    FollowSymlinks,
    /// A symlink is followed only where nobody but root could have made it: the link is
    /// root's, in a directory that is root's and writable by no one else (systemd's
    /// "safe" chase). For paths a process's own memory names, where the system's
    /// `/lib → usr/lib` must resolve and a link in `/tmp` or a user's directory must not.
    RootOwnedSymlinks,
}

/// Why a file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: a symbolic link where none is allowed")]
    Symlink { path: PathBuf },
    #[error("{path}: not a regular file ({kind})")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: owned by uid {uid}, which is not trusted for it")]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path}: {links} hard links (a link to another file?)")]
    Links { path: PathBuf, links: u64 },
    #[error("{path}: more than {bytes_max} bytes")]
    TooLarge { path: PathBuf, bytes_max: u64 },
    /// Something is already where a new file or directory was to be made: a file, a
    /// FIFO, or a link planted there.
    #[error("{path} exists (or is a link): output goes to a new path only")]
    Exists { path: PathBuf },
}

impl OpenError {
    fn io(path: &Path, source: io::Error) -> OpenError {
        // ELOOP is what O_NOFOLLOW and RESOLVE_NO_SYMLINKS answer for a symlink.
        if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            return OpenError::Symlink {
                path: path.to_path_buf(),
            };
        }
        OpenError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The error of a failed creation: something already at the path is [`OpenError::Exists`].
    fn creating(path: &Path, source: io::Error) -> OpenError {
        let exists = [
            rustix::io::Errno::EXIST,
            rustix::io::Errno::LOOP,
            rustix::io::Errno::NOTDIR,
        ]
        .iter()
        .any(|errno| source.raw_os_error() == Some(errno.raw_os_error()));
        if exists {
            OpenError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            OpenError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// True when the file was not there (a race with its writer, or never was).
    pub fn is_not_found(&self) -> bool {
        matches!(self, OpenError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A regular file opened for reading, with the `fstat` it was judged by.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub metadata: std::fs::Metadata,
}

impl Opened {
    /// The file's owner, from the kernel.
    pub fn uid(&self) -> u32 {
        self.metadata.uid()
    }

    /// Reads at most `bytes_max` bytes from where the file stands.
    pub fn read_capped(&mut self, bytes_max: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        (&mut self.file).take(bytes_max).read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

fn errno(error: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(error.raw_os_error())
}

fn kind_name(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` (see the crate's guarantees): a regular file that obeys `rules`.
pub fn open_file(path: &Path, resolve: Resolve<'_>, rules: Rules) -> Result<Opened, OpenError> {
    let located = match resolve {
        Resolve::NoSymlinks => locate(
            rustix::fs::CWD,
            path,
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ),
        Resolve::InRoot(root) => {
            let root_fd = open_directory_fd(rustix::fs::CWD, root, ResolveFlags::empty())
                .map_err(|error| OpenError::io(root, error))?;
            locate(
                &root_fd,
                path,
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            )
        }
        Resolve::FollowSymlinks => locate(rustix::fs::CWD, path, ResolveFlags::empty()),
        Resolve::RootOwnedSymlinks => chase_root_owned(path),
    }
    .map_err(|error| OpenError::io(path, error))?;
    judge_and_reopen(path, located, rules)
}

/// Opens `path` and reads all of it, refusing a file longer than `bytes_max`.
pub fn read_file(
    path: &Path,
    resolve: Resolve<'_>,
    rules: Rules,
    bytes_max: u64,
) -> Result<(Vec<u8>, std::fs::Metadata), OpenError> {
    let mut opened = open_file(path, resolve, rules)?;
    if opened.metadata.len() > bytes_max {
        return Err(OpenError::TooLarge {
            path: path.to_path_buf(),
            bytes_max,
        });
    }
    let bytes = opened
        .read_capped(bytes_max)
        .map_err(|error| OpenError::io(path, error))?;
    Ok((bytes, opened.metadata))
}

/// An `O_PATH` descriptor of `path` from `start`, resolved by `resolve`: openat2 where the
/// kernel has it, else the walk.
fn locate<Fd: AsFd>(start: Fd, path: &Path, resolve: ResolveFlags) -> io::Result<OwnedFd> {
    // A trailing symlink is opened as itself (and then refused) only where no symlink may
    // be followed; inside a root it is followed, within the root.
    let flags = if resolve.contains(ResolveFlags::NO_SYMLINKS) {
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
    } else {
        OFlags::PATH | OFlags::CLOEXEC
    };
    match rustix::fs::openat2(&start, path, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOSYS) => walk(start, path, resolve),
        // openat2 returns EAGAIN when a concurrent rename raced a RESOLVE_IN_ROOT or
        // RESOLVE_BENEATH lookup; one more try settles it or reports it.
        Err(rustix::io::Errno::AGAIN) => {
            rustix::fs::openat2(&start, path, flags, Mode::empty(), resolve).map_err(errno)
        }
        Err(error) => Err(errno(error)),
    }
}

/// The fallback for kernels without openat2: one component at a time, each opened
/// `O_PATH | O_NOFOLLOW` from the last, so no symlink is followed anywhere (only the
/// unrestricted mode follows them, through the kernel's own lookup). `..` is refused
/// rather than interpreted.
fn walk<Fd: AsFd>(start: Fd, path: &Path, resolve: ResolveFlags) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if resolve.is_empty() {
        return rustix::fs::openat(&start, path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno);
    }
    let confined = resolve.intersects(ResolveFlags::IN_ROOT | ResolveFlags::BENEATH);
    let mut current: Option<OwnedFd> = None;
    let mut components = 0usize;
    for component in path.components() {
        components += 1;
        if components > WALK_COMPONENTS_MAX {
            return Err(errno(rustix::io::Errno::NAMETOOLONG));
        }
        let name: &Path = match component {
            Component::RootDir if confined => continue,
            Component::RootDir => Path::new("/"),
            Component::CurDir => continue,
            Component::Normal(name) => Path::new(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(errno(rustix::io::Errno::XDEV));
            }
        };
        let next = match &current {
            Some(directory) => rustix::fs::openat(directory, name, flags, Mode::empty()),
            None => rustix::fs::openat(&start, name, flags, Mode::empty()),
        }
        .map_err(errno)?;
        let stat = rustix::fs::fstat(&next).map_err(errno)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink {
            return Err(errno(rustix::io::Errno::LOOP));
        }
        current = Some(next);
    }
    match current {
        Some(fd) => Ok(fd),
        None => rustix::fs::openat(&start, ".", flags, Mode::empty()).map_err(errno),
    }
}

/// Symlinks a chase follows at most (the kernel's own limit).
pub const SYMLINK_HOPS_MAX: usize = 40;

/// [`Resolve::RootOwnedSymlinks`]: an absolute path walked one component at a time, each
/// opened `O_PATH | O_NOFOLLOW` from the last; a symlink is read and its target walked
/// in its place only when the link and its directory are root's and the directory is
/// writable by root alone. `..` goes back up what was walked.
fn chase_root_owned(path: &Path) -> io::Result<OwnedFd> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !path.is_absolute() {
        return Err(errno(rustix::io::Errno::INVAL));
    }
    let open_root = || rustix::fs::openat(rustix::fs::CWD, "/", flags, Mode::empty());
    let names = |path: &Path| -> VecDeque<OsString> {
        path.components()
            .filter_map(|component| match component {
                Component::Normal(name) => Some(name.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let mut pending = names(path);
    // The directories walked so far, `/` first.
    let mut walked: Vec<OwnedFd> = vec![open_root().map_err(errno)?];
    let (mut hops, mut steps) = (0usize, 0usize);
    while let Some(name) = pending.pop_front() {
        steps += 1;
        if steps > WALK_COMPONENTS_MAX * 4 {
            return Err(errno(rustix::io::Errno::NAMETOOLONG));
        }
        if name == ".." {
            if walked.len() > 1 {
                walked.pop();
            }
            continue;
        }
        let directory = walked.last().expect("the root stays");
        let next =
            rustix::fs::openat(directory, name.as_os_str(), flags, Mode::empty()).map_err(errno)?;
        let stat = rustix::fs::fstat(&next).map_err(errno)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Symlink {
            walked.push(next);
            continue;
        }
        hops += 1;
        let parent = rustix::fs::fstat(directory).map_err(errno)?;
        let writable_by_others = parent.st_mode & 0o022 != 0;
        if hops > SYMLINK_HOPS_MAX || stat.st_uid != 0 || parent.st_uid != 0 || writable_by_others {
            return Err(errno(rustix::io::Errno::LOOP));
        }
        let target = rustix::fs::readlinkat(&next, "", Vec::new()).map_err(errno)?;
        let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
        let mut followed = names(&target);
        if target.is_absolute() {
            walked.truncate(1);
        }
        followed.extend(pending);
        pending = followed;
    }
    Ok(walked.pop().expect("the root stays"))
}

/// Judges an `O_PATH` descriptor by its `fstat`, then opens the very same inode for
/// reading through `/proc/self/fd`.
fn judge_and_reopen(path: &Path, located: OwnedFd, rules: Rules) -> Result<Opened, OpenError> {
    let located = File::from(located);
    let metadata = located
        .metadata()
        .map_err(|error| OpenError::io(path, error))?;
    if !metadata.file_type().is_file() {
        if metadata.file_type().is_symlink() {
            return Err(OpenError::Symlink {
                path: path.to_path_buf(),
            });
        }
        return Err(OpenError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(metadata.file_type()),
        });
    }
    let uid = metadata.uid();
    let owner_ok = match rules.owner {
        Owner::Any => true,
        Owner::Root => uid == 0,
        Owner::RootOr(user) => uid == 0 || uid == user,
    };
    if !owner_ok {
        return Err(OpenError::Owner {
            path: path.to_path_buf(),
            uid,
        });
    }
    if rules.single_link && metadata.nlink() != 1 {
        return Err(OpenError::Links {
            path: path.to_path_buf(),
            links: metadata.nlink(),
        });
    }
    let file = reopen_for_reading(&located).map_err(|error| OpenError::io(path, error))?;
    let reopened = file
        .metadata()
        .map_err(|error| OpenError::io(path, error))?;
    // The magic link names the descriptor's inode; this pair of checks says so.
    assert_eq!(
        (reopened.dev(), reopened.ino()),
        (metadata.dev(), metadata.ino())
    );
    Ok(Opened { file, metadata })
}

fn reopen_for_reading(located: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", located.as_raw_fd());
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        link.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(errno)?;
    let file = File::from(fd);
    // A regular file ignores O_NONBLOCK; it is cleared all the same so reads behave as
    // everywhere else.
    let flags = rustix::fs::fcntl_getfl(&file).map_err(errno)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK).map_err(errno)?;
    Ok(file)
}

fn open_directory_fd<Fd: AsFd>(
    start: Fd,
    path: &Path,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if resolve.is_empty() {
        // Root's configuration named it (`/var/crash` may well be a link to a larger
        // disk): followed like any path root gives.
        return rustix::fs::openat(&start, path, flags, Mode::empty()).map_err(errno);
    }
    let located = locate(&start, path, resolve)?;
    let stat = rustix::fs::fstat(&located).map_err(errno)?;
    match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
        rustix::fs::FileType::Directory => {}
        rustix::fs::FileType::Symlink => return Err(errno(rustix::io::Errno::LOOP)),
        _ => return Err(errno(rustix::io::Errno::NOTDIR)),
    }
    rustix::fs::openat(&located, ".", flags, Mode::empty()).map_err(errno)
}

/// Creates a new file only its owner can read (`0600`) for output a user asked for (a
/// core, an export, a token): `O_EXCL | O_NOFOLLOW`, so an existing file or a symlink
/// planted at the path is refused ([`OpenError::Exists`]) rather than written through.
pub fn create_private(path: &Path) -> Result<File, OpenError> {
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(PRIVATE_FILE_MODE),
    )
    .map_err(|error| OpenError::creating(path, errno(error)))?;
    Ok(File::from(fd))
}

/// Opens a file through its parent directory: the parent as root's configuration or
/// code names it (links in it followed), the file itself never a symlink, a FIFO or a
/// device, judged by `rules` (a log in an application's directory, a report a JVM wrote,
/// a token file in a data dir).
pub fn open_in_dir(path: &Path, rules: Rules) -> Result<Opened, OpenError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().map(Path::new).unwrap_or(path);
    Directory::open(parent)?.open_file(name, rules)
}

/// The mode of directories made for private output.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The mode of files made for private output.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

fn private_dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Refuses a name that is not exactly one path component.
fn one_component(name: &str, path: &Path) -> Result<(), OpenError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(OpenError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not one path component"),
        });
    }
    Ok(())
}

/// The kind of a directory entry, as [`Directory::entries`] reports it (from the
/// directory itself, not by following anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Directory,
    Other,
}

/// A directory others can write into (`/var/crash`), opened once; everything below it
/// is reached through its descriptor, never by path, and never through a symlink.
#[derive(Debug)]
pub struct Directory {
    fd: OwnedFd,
    path: PathBuf,
}

impl Directory {
    /// Opens a directory root's configuration names (symlinks in its path are followed:
    /// root chose it; what is below it is reached without following any).
    pub fn open(path: &Path) -> Result<Directory, OpenError> {
        let fd = open_directory_fd(rustix::fs::CWD, path, ResolveFlags::empty())
            .map_err(|error| OpenError::io(path, error))?;
        Ok(Directory {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root of an output tree (an export): made `0700` when missing (its parents as
    /// `create_dir_all` makes them), opened without following a link in its place.
    /// Everything below it is made through [`Directory::private_dir`] and
    /// [`Directory::create_file`].
    pub fn create_private(path: &Path) -> Result<Directory, OpenError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|error| OpenError::io(parent, error))?;
        }
        match rustix::fs::mkdir(path, Mode::from_raw_mode(PRIVATE_DIR_MODE)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(error) => return Err(OpenError::io(path, errno(error))),
        }
        let fd = rustix::fs::open(path, private_dir_flags(), Mode::empty())
            .map_err(|error| OpenError::creating(path, errno(error)))?;
        Ok(Directory {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory `name` (one component) in this one, made `0700` when missing; a
    /// link or a file in its place is refused ([`OpenError::Exists`]).
    pub fn private_dir(&self, name: &str) -> Result<Directory, OpenError> {
        let path = self.path.join(name);
        one_component(name, &path)?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(PRIVATE_DIR_MODE)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(error) => return Err(OpenError::io(&path, errno(error))),
        }
        let fd = rustix::fs::openat(&self.fd, name, private_dir_flags(), Mode::empty())
            .map_err(|error| OpenError::creating(&path, errno(error)))?;
        Ok(Directory { fd, path })
    }

    /// A new file `name` (one component) in this directory, `0600`, `O_EXCL |
    /// O_NOFOLLOW`: whatever is already there (a link included) is refused.
    pub fn create_file(&self, name: &str) -> Result<File, OpenError> {
        let path = self.path.join(name);
        one_component(name, &path)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(PRIVATE_FILE_MODE),
        )
        .map_err(|error| OpenError::creating(&path, errno(error)))?;
        Ok(File::from(fd))
    }

    /// The path it was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a subdirectory by a path relative to this one, no component a symlink.
    pub fn open_dir(&self, relative: &Path) -> Result<Directory, OpenError> {
        let path = self.path.join(relative);
        let fd = open_directory_fd(
            &self.fd,
            relative,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|error| OpenError::io(&path, error))?;
        Ok(Directory { fd, path })
    }

    /// Opens a regular file by a path relative to this directory, beneath it, no
    /// component a symlink, judged by `rules`.
    pub fn open_file(&self, relative: &Path, rules: Rules) -> Result<Opened, OpenError> {
        let path = self.path.join(relative);
        let located = locate(
            &self.fd,
            relative,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|error| OpenError::io(&path, error))?;
        judge_and_reopen(&path, located, rules)
    }

    /// The directory's entries (`.` and `..` left out), sorted by name, at most
    /// [`DIRECTORY_ENTRIES_MAX`]; names that are not UTF-8 are left out.
    pub fn entries(&self) -> Result<Vec<(String, EntryKind)>, OpenError> {
        let io_error = |error| OpenError::io(&self.path, errno(error));
        let fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_error)?;
        let mut dir = rustix::fs::Dir::new(fd).map_err(io_error)?;
        let mut entries = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io_error)?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                rustix::fs::FileType::RegularFile => EntryKind::File,
                rustix::fs::FileType::Directory => EntryKind::Directory,
                rustix::fs::FileType::Unknown => {
                    match rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    {
                        Ok(stat) => match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
                            rustix::fs::FileType::RegularFile => EntryKind::File,
                            rustix::fs::FileType::Directory => EntryKind::Directory,
                            _ => EntryKind::Other,
                        },
                        Err(_) => continue,
                    }
                }
                _ => EntryKind::Other,
            };
            entries.push((name.to_string(), kind));
            if entries.len() >= DIRECTORY_ENTRIES_MAX {
                break;
            }
        }
        entries.sort();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_walk_refuses_what_openat2_refuses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/file"), b"x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let base = File::open(dir.path()).unwrap();
        let strict = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
        assert!(walk(&base, Path::new("real/file"), strict).is_ok());
        let error = walk(&base, Path::new("link/file"), strict).unwrap_err();
        assert_eq!(
            error.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
        let error = walk(&base, Path::new("real/../real/file"), strict).unwrap_err();
        assert_eq!(
            error.raw_os_error(),
            Some(rustix::io::Errno::XDEV.raw_os_error())
        );
        // The same answers from the kernel's openat2.
        assert!(locate(&base, Path::new("real/file"), strict).is_ok());
        let error = locate(&base, Path::new("link/file"), strict).unwrap_err();
        assert_eq!(
            error.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
    }
}
