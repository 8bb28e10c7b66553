//! Files the endpoint writes for a person (exports, its token and key files): created
//! new, owner-only, never through a symbolic link.
//!
//! Invariants: a file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, so an
//! existing path — a file, a FIFO, or a link planted where the file goes — is refused with
//! [`EndpointError::Exists`] rather than written through; a directory below the root of a
//! [`PrivateDir`] is made 0700 and opened `O_NOFOLLOW | O_DIRECTORY` relative to its parent
//! (`mkdirat`/`openat`), so no link in the tree the endpoint walks is followed either.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::EndpointError;

/// Mode of the files made here.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories made here.
pub const DIR_MODE: u32 = 0o700;

fn c_name(path: &Path) -> Result<CString, EndpointError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| EndpointError::BadRequest(format!("{} has a NUL byte", path.display())))
}

/// The error for a failed create: an existing path (or a link) is [`EndpointError::Exists`].
fn create_error(what: &'static str, path: &Path, error: std::io::Error) -> EndpointError {
    match error.raw_os_error() {
        Some(libc::EEXIST) | Some(libc::ELOOP) | Some(libc::ENOTDIR) => EndpointError::Exists {
            path: path.display().to_string(),
        },
        _ => EndpointError::io(what, path, error),
    }
}

/// Creates a new file at `path`, 0600, refusing an existing path or a symbolic link there.
pub fn create_private(path: &Path) -> Result<File, EndpointError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| create_error("create", path, error))
}

/// Reads a small file, refusing a symbolic link in its place.
pub fn read_no_follow(path: &Path, bytes_max: u64) -> Result<Option<Vec<u8>>, EndpointError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(create_error("open", path, error)),
    };
    let mut bytes = Vec::new();
    file.take(bytes_max + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| EndpointError::io("read", path, error))?;
    if bytes.len() as u64 > bytes_max {
        return Err(EndpointError::TooLarge {
            what: "file bytes",
            value: bytes.len() as u64,
            limit: bytes_max,
        });
    }
    Ok(Some(bytes))
}

/// A directory the endpoint writes under, held open: everything below it is made
/// relative to it, no link followed.
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl PrivateDir {
    /// Opens `path` as the root (made 0700 when absent; its parents as `create_dir_all`
    /// makes them), refusing a link in its place.
    pub fn open_root(path: &Path) -> Result<PrivateDir, EndpointError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .map_err(|error| EndpointError::io("create", parent, error))?;
        }
        let name = c_name(path)?;
        // SAFETY: `name` is a NUL-terminated path.
        if unsafe { libc::mkdir(name.as_ptr(), DIR_MODE) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(EndpointError::io("create", path, error));
            }
        }
        // SAFETY: as above; the flags open a directory only, never through a link.
        let fd = unsafe {
            libc::open(
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        PrivateDir::from_fd(fd, path.to_path_buf())
    }

    fn from_fd(fd: libc::c_int, path: PathBuf) -> Result<PrivateDir, EndpointError> {
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            return Err(create_error("open", &path, error));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PrivateDir { fd, path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn component(name: &str) -> Result<CString, EndpointError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(EndpointError::BadRequest(format!(
                "{name:?} is not one path component"
            )));
        }
        CString::new(name)
            .map_err(|_| EndpointError::BadRequest(format!("{name:?} has a NUL byte")))
    }

    /// The directory `name` in this one, made 0700 when absent; a link there is refused.
    pub fn dir(&self, name: &str) -> Result<PrivateDir, EndpointError> {
        let c_name = PrivateDir::component(name)?;
        let path = self.path.join(name);
        // SAFETY: `self.fd` is an open directory, `c_name` one NUL-terminated component.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c_name.as_ptr(), DIR_MODE) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(EndpointError::io("create", &path, error));
            }
        }
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        PrivateDir::from_fd(fd, path)
    }

    /// A new file `name` in this directory, 0600; an existing path or a link there is
    /// refused ([`EndpointError::Exists`]).
    pub fn create_file(&self, name: &str) -> Result<File, EndpointError> {
        let c_name = PrivateDir::component(name)?;
        let path = self.path.join(name);
        // SAFETY: `self.fd` is an open directory, `c_name` one NUL-terminated component.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                FILE_MODE as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(create_error(
                "create",
                &path,
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn files_are_new_owner_only_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(
            create_private(&link),
            Err(EndpointError::Exists { .. })
        ));
        assert!(matches!(
            create_private(&victim),
            Err(EndpointError::Exists { .. })
        ));
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(matches!(
            create_private(&dangling),
            Err(EndpointError::Exists { .. })
        ));
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let new = dir.path().join("new");
        drop(create_private(&new).unwrap());
        assert_eq!(
            std::fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            read_no_follow(&link, 16),
            Err(EndpointError::Exists { .. })
        ));
        assert_eq!(read_no_follow(&victim, 16).unwrap().unwrap(), b"keep");
        assert_eq!(
            read_no_follow(&dir.path().join("absent"), 16).unwrap(),
            None
        );
    }

    #[test]
    fn a_private_dir_follows_no_link_below_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let root = PrivateDir::open_root(&dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.path().join("reports")).unwrap();
        assert!(matches!(
            root.dir("reports"),
            Err(EndpointError::Exists { .. })
        ));
        let sub = root.dir("sub").unwrap();
        assert_eq!(
            std::fs::metadata(sub.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(sub.create_file("a").unwrap());
        assert!(matches!(
            sub.create_file("a"),
            Err(EndpointError::Exists { .. })
        ));
        std::os::unix::fs::symlink(elsewhere.join("f"), sub.path().join("b")).unwrap();
        assert!(matches!(
            sub.create_file("b"),
            Err(EndpointError::Exists { .. })
        ));
        assert!(!elsewhere.join("f").exists());
        assert!(sub.create_file("../x").is_err());
        // The root itself may not be a link either.
        let linked_root = dir.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked_root).unwrap();
        assert!(PrivateDir::open_root(&linked_root).is_err());
    }
}
