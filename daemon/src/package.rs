//! Which package owns an executable: the ELF `.note.package` note (systemd's package
//! metadata, JSON) when the binary carries one, else the system's package manager
//! (`dpkg-query -S`, `rpm -qf`), each with a time limit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a package manager may take to answer.
pub const QUERY_TIME_LIMIT_MS: u64 = 3000;

/// `name version` of the package owning `executable`, when one is known.
pub fn owner(executable: &Path) -> Option<String> {
    if let Some(package) = package_note(executable) {
        return Some(package);
    }
    if let Some(text) = run_limited(Command::new("dpkg-query").arg("-S").arg(executable)) {
        // "coreutils: /usr/bin/sleep" (or "a, b: path" for diversions).
        let name = text
            .lines()
            .next()?
            .split(':')
            .next()?
            .split(',')
            .next()?
            .trim()
            .to_string();
        let version = run_limited(Command::new("dpkg-query").args(["-W", "-f=${Version}", &name]))
            .map(|version| version.trim().to_string())
            .unwrap_or_default();
        return Some(format!("{name} {version}").trim().to_string());
    }
    run_limited(
        Command::new("rpm")
            .args(["-qf", "--qf", "%{NAME} %{VERSION}-%{RELEASE}"])
            .arg(executable),
    )
    .map(|text| text.trim().to_string())
}

/// The note type of systemd's package metadata (`FDO` owner, JSON description).
const NT_FDO_PACKAGING_METADATA: u32 = 0xcafe_1a7e;
/// Executables larger than this are not read for their note.
const EXECUTABLE_BYTES_MAX: u64 = 1 << 30;

/// `name version` from the executable's `.note.package` note, if it has one.
pub fn package_note(executable: &Path) -> Option<String> {
    use object::{Object, ObjectSection};
    // The path is the crashed process's: a symlink or a FIFO may stand there now.
    let opened = crashmesh_untrusted::open_file(
        executable,
        crashmesh_untrusted::Resolve::NoSymlinks,
        crashmesh_untrusted::Rules::REGULAR,
    )
    .ok()?;
    if opened.metadata.len() > EXECUTABLE_BYTES_MAX {
        return None;
    }
    // SAFETY: the map is read-only and dropped before returning; a binary changed under
    // us gives garbage at worst, which the parsing below bounds.
    let map = unsafe { memmap2::Mmap::map(&opened.file) }.ok()?;
    let elf = object::File::parse(&*map).ok()?;
    let data = elf.section_by_name(".note.package")?.data().ok()?;
    let descriptor = note_descriptor(data, b"FDO", NT_FDO_PACKAGING_METADATA)?;
    let text = std::str::from_utf8(descriptor).ok()?.trim_end_matches('\0');
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let name = json["name"].as_str()?;
    Some(
        format!("{name} {}", json["version"].as_str().unwrap_or(""))
            .trim()
            .to_string(),
    )
}

/// The descriptor of the first note with this owner and type in an ELF note section
/// (4-byte aligned names and descriptors, as on every Linux architecture).
fn note_descriptor<'a>(mut data: &'a [u8], owner: &[u8], note_type: u32) -> Option<&'a [u8]> {
    let align = |n: usize| n.checked_add(3).map(|n| n & !3);
    while data.len() >= 12 {
        let word =
            |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let (name_size, descriptor_size, this_type) = (word(0), word(4), word(8) as u32);
        let name_end = 12usize.checked_add(align(name_size)?)?;
        let descriptor_end = name_end.checked_add(align(descriptor_size)?)?;
        if descriptor_end > data.len() {
            return None;
        }
        let name = &data[12..12 + name_size];
        if this_type == note_type && name.strip_suffix(b"\0").unwrap_or(name) == owner {
            return Some(&data[name_end..name_end + descriptor_size]);
        }
        data = &data[descriptor_end..];
    }
    None
}

fn run_limited(command: &mut Command) -> Option<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_millis(QUERY_TIME_LIMIT_MS);
    loop {
        match child.try_wait().ok()? {
            Some(status) if status.success() => break,
            Some(_) => return None,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut text).ok()?;
    (!text.trim().is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_notes_are_found_and_bounded() {
        let json = br#"{"type":"deb","name":"vstorage","version":"7.1-3"}"#;
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&(json.len() as u32).to_ne_bytes());
        note.extend_from_slice(&NT_FDO_PACKAGING_METADATA.to_ne_bytes());
        note.extend_from_slice(b"FDO\0");
        note.extend_from_slice(json);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        assert_eq!(
            note_descriptor(&note, b"FDO", NT_FDO_PACKAGING_METADATA),
            Some(&json[..])
        );
        // A size that runs past the section is refused, not followed.
        let mut lying = note.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(
            note_descriptor(&lying, b"FDO", NT_FDO_PACKAGING_METADATA),
            None
        );
        assert_eq!(
            note_descriptor(&note[..10], b"FDO", NT_FDO_PACKAGING_METADATA),
            None
        );
    }

    #[test]
    fn a_fifo_where_the_executable_was_is_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("deleted-server");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(owner(&fifo)).unwrap());
        let found = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the package lookup waited on the FIFO");
        assert_eq!(found, None);
    }

    #[test]
    fn the_package_of_a_system_binary_is_found() {
        // On Debian /bin/sh belongs to dash (or bash); anything without a package manager
        // or without that file has nothing to say, which is a valid answer too.
        if Path::new("/usr/bin/dpkg-query").exists() {
            let package = owner(Path::new("/usr/bin/dpkg-query")).expect("dpkg owns dpkg-query");
            assert!(package.starts_with("dpkg "), "{package}");
        }
        assert_eq!(owner(Path::new("/nonexistent/binary")), None);
    }
}
