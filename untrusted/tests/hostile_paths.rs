//! What an attacker plants where root will read: symlinks (last component and earlier
//! ones), FIFOs, devices, hard links, files of the wrong owner, escapes from a container
//! root. Each is refused with its own error, and nothing blocks.

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use crashmesh_untrusted::{
    Directory, EntryKind, OpenError, Owner, Resolve, Rules, create_private, open_file, read_file,
};

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .expect("mkfifo");
}

#[test]
fn a_symlink_in_any_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"root's secret").unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::fs::write(dir.path().join("real/log"), b"a log").unwrap();
    symlink(&secret, dir.path().join("real/link")).unwrap();
    symlink(dir.path().join("real"), dir.path().join("linked-dir")).unwrap();

    let (bytes, _) = read_file(
        &dir.path().join("real/log"),
        Resolve::NoSymlinks,
        Rules::REGULAR,
        1024,
    )
    .unwrap();
    assert_eq!(bytes, b"a log");
    for planted in ["real/link", "linked-dir/log"] {
        let error = open_file(
            &dir.path().join(planted),
            Resolve::NoSymlinks,
            Rules::REGULAR,
        )
        .unwrap_err();
        assert!(
            matches!(error, OpenError::Symlink { .. }),
            "{planted}: {error}"
        );
    }
    // Root's own configuration may name a path through links.
    let (bytes, _) = read_file(
        &dir.path().join("real/link"),
        Resolve::FollowSymlinks,
        Rules::REGULAR,
        1024,
    )
    .unwrap();
    assert_eq!(bytes, b"root's secret");
}

#[test]
fn a_fifo_or_a_device_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("hs_err_pid1.log");
    mkfifo(&fifo);
    // A plain open for reading would wait here for a writer that never comes.
    let error = open_file(&fifo, Resolve::NoSymlinks, Rules::REGULAR).unwrap_err();
    assert!(
        matches!(error, OpenError::NotRegular { kind: "a FIFO", .. }),
        "{error}"
    );
    let error = open_file(Path::new("/dev/null"), Resolve::NoSymlinks, Rules::REGULAR).unwrap_err();
    assert!(
        matches!(
            error,
            OpenError::NotRegular {
                kind: "a character device",
                ..
            }
        ),
        "{error}"
    );
    let error = open_file(dir.path(), Resolve::NoSymlinks, Rules::REGULAR).unwrap_err();
    assert!(matches!(error, OpenError::NotRegular { .. }), "{error}");
}

#[test]
fn owner_and_link_count_come_from_the_opened_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmcore-dmesg.txt");
    std::fs::write(&file, b"log").unwrap();
    let me = std::fs::metadata(&file).unwrap().uid();
    let opened = open_file(&file, Resolve::NoSymlinks, Rules::ANY_SINGLE_LINK).unwrap();
    assert_eq!(opened.uid(), me);

    std::fs::hard_link(&file, dir.path().join("second-name")).unwrap();
    let error = open_file(&file, Resolve::NoSymlinks, Rules::ANY_SINGLE_LINK).unwrap_err();
    assert!(
        matches!(error, OpenError::Links { links: 2, .. }),
        "{error}"
    );

    let someone_else = me.wrapping_add(4242);
    let rules = Rules {
        owner: Owner::RootOr(someone_else),
        single_link: false,
    };
    let result = open_file(&file, Resolve::NoSymlinks, rules);
    if me == 0 {
        assert!(result.is_ok());
        std::os::unix::fs::chown(&file, Some(someone_else.wrapping_add(1)), None).unwrap();
        let error = open_file(&file, Resolve::NoSymlinks, rules).unwrap_err();
        assert!(matches!(error, OpenError::Owner { .. }), "{error}");
        let error = open_file(&file, Resolve::NoSymlinks, Rules::ROOT_SINGLE_LINK).unwrap_err();
        assert!(matches!(error, OpenError::Owner { .. }), "{error}");
    } else {
        assert!(matches!(result.unwrap_err(), OpenError::Owner { .. }));
    }
}

#[test]
fn inside_a_container_root_links_resolve_inside_it() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("host-secret"), b"host").unwrap();
    let root = host.path().join("container");
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::write(root.join("usr/lib/libc.so.6"), b"container libc").unwrap();
    // A merged-/usr layout: /lib -> usr/lib, which must keep working.
    symlink("usr/lib", root.join("lib")).unwrap();
    // An escape attempt: absolute and relative links pointing out of the root.
    symlink(
        host.path().join("host-secret"),
        root.join("usr/lib/absolute"),
    )
    .unwrap();
    symlink("../../../host-secret", root.join("usr/lib/relative")).unwrap();

    let in_root = Resolve::InRoot(&root);
    let (bytes, _) = read_file(Path::new("/lib/libc.so.6"), in_root, Rules::REGULAR, 1024).unwrap();
    assert_eq!(bytes, b"container libc");
    for escape in ["/usr/lib/absolute", "/usr/lib/relative", "/../host-secret"] {
        match read_file(Path::new(escape), in_root, Rules::REGULAR, 1024) {
            Ok((bytes, _)) => panic!("{escape} read {:?} from outside the root", bytes),
            Err(error) => assert!(error.is_not_found(), "{escape}: {error}"),
        }
    }
}

#[test]
fn a_directory_reaches_its_children_by_descriptor_only() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("vmcore-dmesg.txt"), b"not from kdump").unwrap();
    std::fs::create_dir(dir.path().join("127.0.0.1-2026-12-04")).unwrap();
    std::fs::write(
        dir.path().join("127.0.0.1-2026-12-04/vmcore-dmesg.txt"),
        b"kdump",
    )
    .unwrap();
    symlink(outside.path(), dir.path().join("planted-crash")).unwrap();
    mkfifo(&dir.path().join("fifo"));

    let crashes = Directory::open(dir.path()).unwrap();
    let entries = crashes.entries().unwrap();
    assert_eq!(
        entries,
        [
            ("127.0.0.1-2026-12-04".to_string(), EntryKind::Directory),
            ("fifo".to_string(), EntryKind::Other),
            ("planted-crash".to_string(), EntryKind::Other),
        ]
    );
    let crash = crashes.open_dir(Path::new("127.0.0.1-2026-12-04")).unwrap();
    let mut log = crash
        .open_file(Path::new("vmcore-dmesg.txt"), Rules::REGULAR)
        .unwrap();
    assert_eq!(log.read_capped(100).unwrap(), b"kdump");
    let error = crashes.open_dir(Path::new("planted-crash")).unwrap_err();
    assert!(matches!(error, OpenError::Symlink { .. }), "{error}");
    let error = crashes
        .open_file(Path::new("planted-crash/vmcore-dmesg.txt"), Rules::REGULAR)
        .unwrap_err();
    assert!(matches!(error, OpenError::Symlink { .. }), "{error}");
    let error = crashes
        .open_file(Path::new("../escape"), Rules::REGULAR)
        .unwrap_err();
    assert!(matches!(error, OpenError::Io { .. }), "{error}");
}

#[test]
fn private_output_is_new_owner_only_and_never_written_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("core");
    create_private(&out).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
    let error = create_private(&out).unwrap_err();
    assert!(matches!(error, OpenError::Exists { .. }), "{error}");

    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let planted = dir.path().join("planted");
    symlink(&victim, &planted).unwrap();
    let error = create_private(&planted).unwrap_err();
    assert!(matches!(error, OpenError::Exists { .. }), "{error}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

#[test]
fn a_private_output_tree_is_made_without_following_anything_planted_in_it() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("export");
    let root = Directory::create_private(&out).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o700);
    let reports = root.private_dir("reports").unwrap();
    std::io::Write::write_all(&mut reports.create_file("a").unwrap(), b"a file").unwrap();
    // A directory where a file already is, or a second file of the same name: refused.
    assert!(matches!(
        reports.private_dir("a").unwrap_err(),
        OpenError::Exists { .. }
    ));
    assert!(matches!(
        reports.create_file("a").unwrap_err(),
        OpenError::Exists { .. }
    ));
    // Links planted in the tree (to a directory or to a file elsewhere) are not followed.
    let elsewhere = tempfile::tempdir().unwrap();
    symlink(elsewhere.path(), out.join("reports/linked-dir")).unwrap();
    symlink(
        elsewhere.path().join("victim"),
        out.join("reports/linked-file"),
    )
    .unwrap();
    assert!(matches!(
        reports.private_dir("linked-dir").unwrap_err(),
        OpenError::Exists { .. }
    ));
    assert!(matches!(
        reports.create_file("linked-file").unwrap_err(),
        OpenError::Exists { .. }
    ));
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none()
    );
    // Names are single components.
    assert!(reports.create_file("../escape").is_err());
    // The root itself may not be a link either.
    symlink(elsewhere.path(), parent.path().join("linked-export")).unwrap();
    assert!(Directory::create_private(&parent.path().join("linked-export")).is_err());
}

#[test]
fn only_links_nobody_but_root_could_make_are_followed_when_asked() {
    use std::os::unix::fs::PermissionsExt;
    // Tests run as root: the temp dir and what is made in it are root's.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("lib.so"), b"\x7fELF").unwrap();
    let open = |path: &Path| open_file(path, Resolve::RootOwnedSymlinks, Rules::REGULAR);

    // root's link in root's 0755 directory: followed, relative and absolute, `..` too.
    let safe = dir.path().join("safe");
    std::fs::create_dir(&safe).unwrap();
    std::fs::set_permissions(&safe, std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink("../real", safe.join("relative")).unwrap();
    symlink(&target, safe.join("absolute")).unwrap();
    symlink(target.join("lib.so"), safe.join("file")).unwrap();
    for path in [
        "relative/lib.so",
        "absolute/lib.so",
        "file",
        "relative/../real/lib.so",
    ] {
        let opened = open(&safe.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"));
        assert_eq!(opened.metadata.len(), 4, "{path}");
    }
    assert!(matches!(
        open(Path::new("relative/lib.so")),
        Err(OpenError::Io { .. })
    ));

    // The same links where someone else could have made them are refused.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    symlink(&target, shared.join("link")).unwrap();
    let users = dir.path().join("users");
    std::fs::create_dir(&users).unwrap();
    symlink(&target, users.join("link")).unwrap();
    std::os::unix::fs::lchown(&users, Some(65534), Some(65534)).unwrap();
    let theirs = safe.join("theirs");
    symlink(&target, &theirs).unwrap();
    std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
    for path in [
        shared.join("link/lib.so"),
        users.join("link/lib.so"),
        theirs.join("lib.so"),
    ] {
        let error = open(&path).expect_err(&path.display().to_string());
        assert!(
            error
                .to_string()
                .contains("a symbolic link where none is allowed"),
            "{}: {error}",
            path.display()
        );
    }

    // A loop ends.
    symlink(safe.join("loop"), safe.join("loop")).unwrap();
    assert!(open(&safe.join("loop")).is_err());

    // The system's own merged-/usr links resolve (where /lib is one).
    if std::fs::symlink_metadata("/lib").is_ok_and(|meta| meta.file_type().is_symlink()) {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        if std::fs::metadata(libc).is_ok() {
            open(libc).unwrap();
            assert!(open_file(libc, Resolve::NoSymlinks, Rules::REGULAR).is_err());
        }
    }
}
