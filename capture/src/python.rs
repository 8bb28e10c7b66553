//! The Python interpreter hook, as `crashmesh install` puts it in place: a small module
//! and a `.pth` file that imports it, in the site-packages of each configured
//! interpreter. On an uncaught exception the module sends the traceback to the daemon's
//! socket ([`socket_path`]), whose server is `crashmesh_detect::python`; with the daemon
//! down, a root process's exception goes straight into the spool and other users' are
//! lost (the spool is root's alone).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::spool::Spool;

/// The module's source; `@SOCKET@` and `@SPOOL@` are filled in at install time.
pub const HOOK_MODULE: &str = include_str!("crashmesh_hook.py");
/// The module's file name in site-packages.
pub const MODULE_FILE: &str = "crashmesh_hook.py";
/// The `.pth` file that imports the module at interpreter start.
pub const PTH_FILE: &str = "crashmesh-hook.pth";
/// The socket the hook talks to: the configured one, or `python.sock` in the data dir's
/// public sibling (see [`public_dir`]).
pub fn socket_path(data_dir: &Path, configured: &Path) -> PathBuf {
    if configured.as_os_str().is_empty() {
        public_dir(data_dir).join("python.sock")
    } else {
        configured.to_path_buf()
    }
}

/// `<data dir>-public`: the one directory of the node that other users may enter (to
/// reach the Python socket); the data dir itself is root's alone.
pub fn public_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push("-public");
    PathBuf::from(name)
}

/// The interpreters to hook: the configured ones, or every `python3` on PATH.
pub fn interpreters(configured: &[PathBuf]) -> Vec<PathBuf> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("python3");
        if candidate.is_file() && !found.contains(&candidate) {
            found.push(candidate);
        }
    }
    found
}

/// The directory where an interpreter loads `.pth` files from.
pub fn site_packages(interpreter: &Path) -> Option<PathBuf> {
    let output = Command::new(interpreter)
        .args([
            "-S",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !text.is_empty()).then(|| PathBuf::from(text))
}

/// Write the module and the `.pth` file into each interpreter's site-packages; gives back
/// the files written (remembered for uninstall).
pub fn install(
    interpreters: &[PathBuf],
    data_dir: &Path,
    socket: &Path,
) -> Vec<(PathBuf, Result<(), String>)> {
    let module = HOOK_MODULE
        .replace("@SOCKET@", &socket.to_string_lossy())
        .replace("@SPOOL@", &Spool::new(data_dir).root.to_string_lossy());
    let mut done: Vec<(PathBuf, Result<(), String>)> = Vec::new();
    for interpreter in interpreters {
        let Some(site) = site_packages(interpreter) else {
            done.push((
                interpreter.clone(),
                Err("cannot ask it for its site-packages".into()),
            ));
            continue;
        };
        if done.iter().any(|(path, _)| path == &site) {
            continue;
        }
        // Every user's interpreter imports these: readable by all (the process's umask
        // makes files owner-only otherwise).
        let result = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&site)
            .and_then(|_| write_readable(&site.join(MODULE_FILE), module.as_bytes()))
            .and_then(|_| write_readable(&site.join(PTH_FILE), b"import crashmesh_hook\n"))
            .map_err(|error| error.to_string());
        done.push((site, result));
    }
    done
}

fn write_readable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// Remove the module and `.pth` file from each site-packages directory.
pub fn uninstall(site_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for site in site_dirs {
        for name in [PTH_FILE, MODULE_FILE] {
            let path = site.join(name);
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        let _ = std::fs::remove_dir_all(
            site.join("__pycache__")
                .join("crashmesh_hook.cpython-311.pyc"),
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_dir_sits_beside_the_data_dir() {
        assert_eq!(
            socket_path(Path::new("/var/lib/crashmesh"), Path::new("")),
            Path::new("/var/lib/crashmesh-public/python.sock")
        );
        assert_eq!(
            socket_path(Path::new("/d"), Path::new("/run/crashmesh/py.sock")),
            Path::new("/run/crashmesh/py.sock")
        );
    }
}
