//! Helpers for the end-to-end suites: the real `crashmesh` binary, data dirs with their
//! own configuration, a guard that always restores core_pattern, real programs to crash,
//! and gdb as the reference for frames.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `crashmesh` binary, built on first use (a no-op when `./test` built it already).
pub fn crashmesh_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(binary) = std::env::var_os("CRASHMESH_BIN") {
                return PathBuf::from(binary);
            }
            // target/<profile>/deps/<test binary> → target/<profile>/crashmesh
            let test_binary = std::env::current_exe().expect("current exe");
            let profile_dir = test_binary
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>");
            let target_dir = profile_dir.parent().expect("target dir");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.current_dir(workspace_root()).args([
                "build",
                "--quiet",
                "-p",
                "crashmesh",
                "--bin",
                "crashmesh",
            ]);
            build.env("CARGO_TARGET_DIR", target_dir);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "cargo build of crashmesh failed");
            let binary = profile_dir.join("crashmesh");
            assert!(binary.exists(), "{} missing after build", binary.display());
            binary
        })
        .clone()
}

/// A node's data dir and config file, in a temporary directory removed on drop.
pub struct NodeDir {
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

impl NodeDir {
    /// A data dir whose config is `config_toml`. The directory lives under /var/tmp
    /// rather than a tmpfs so that free-space guards see a real disk.
    /// A directory with `config_toml`. A node's config (one with a `[node]` table) without
    /// a `[store]` table of its own gets `keep_free_percent = 0`: what a suite sees must
    /// not depend on how full this machine's disk is (with the default 15 % reserve, a
    /// disk under 15 % free evicts every core at once). Endpoint and CA directories are
    /// written as given.
    pub fn new(config_toml: &str) -> NodeDir {
        let root = tempfile::Builder::new()
            .prefix("cm-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let data_dir = root.path().join("d");
        let config = root.path().join("c.toml");
        let has_table = |name: &str| config_toml.lines().any(|line| line.trim() == name);
        let config_toml = if !has_table("[node]") || has_table("[store]") {
            config_toml.to_string()
        } else {
            format!("{config_toml}\n[store]\nkeep_free_percent = 0\n")
        };
        std::fs::write(&config, config_toml).expect("write config");
        NodeDir {
            root,
            data_dir,
            config,
        }
    }

    /// `crashmesh --data-dir D --config C <args>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(crashmesh_binary());
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config)
            .args(args);
        command
    }

    /// Run a command to completion; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("run crashmesh");
        assert!(
            output.status.success(),
            "crashmesh {args:?} failed: {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Run a command with `--json` and parse its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let output = self.run(&with_json);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "{args:?}: not JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Like [`NodeDir::json`], but `None` instead of a panic when the command fails (for
    /// polling while a daemon starts or works).
    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let output = self.command(&with_json).output().ok()?;
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Start `crashmesh node run`; it is killed when the returned guard drops.
    pub fn start_daemon(&self) -> Daemon {
        // The caller's filter (or info), plus the detectors' per-poll line that
        // [`NodeDir::wait_for_fresh_polls`] counts.
        let filter = format!(
            "{},crashmesh_detect::detector=trace",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
        );
        let child = self
            .command(&["node", "run"])
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.root.path().join("daemon.log")).expect("log"),
            ))
            .spawn()
            .expect("start daemon");
        Daemon { child }
    }

    /// The daemon's log so far (for failure messages).
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    /// The polls detector `name` (its `Detector::NAME`) has finished so far, from the
    /// daemon's log.
    pub fn polls_of(&self, detector: &str) -> usize {
        let field = format!("detector=\"{detector}\"");
        self.daemon_log()
            .lines()
            .filter(|line| line.contains("poll done") && line.contains(&field))
            .count()
    }

    /// Waits until detector `name` has finished two more polls than it had, so that one
    /// whole poll began after the call (it has seen whatever the caller changed before),
    /// and then until the spool is empty (whatever it spooled is in the store). After
    /// this, what the detector did not report, it did not find.
    pub fn wait_for_fresh_polls(&self, detector: &str) {
        let before = self.polls_of(detector);
        assert!(
            wait_until(Duration::from_secs(60), || self.polls_of(detector)
                >= before + 2),
            "detector {detector} did not poll: {}",
            self.daemon_log()
        );
        self.wait_for_empty_spool();
    }

    /// Waits until `status` says no spool entry waits (every entry spooled so far is in
    /// the store).
    pub fn wait_for_empty_spool(&self) {
        let mut last = Value::Null;
        let empty = wait_until(Duration::from_secs(60), || {
            last = self.try_json(&["status"]).unwrap_or(Value::Null);
            last["spool_pending"] == 0
        });
        assert!(
            empty,
            "the spool never emptied: {last}\n{}",
            self.daemon_log()
        );
    }
}

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// kill -9, as a crash or an operator would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `condition` until it holds or `timeout` passes; gives back whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Saves the kernel's core_pattern and core_pipe_limit and puts them back on drop,
/// also when the test panics.
pub struct KernelCoreSettings {
    core_pattern: String,
    core_pipe_limit: String,
}

impl KernelCoreSettings {
    pub fn save() -> KernelCoreSettings {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this suite changes core_pattern and needs root"
        );
        KernelCoreSettings {
            core_pattern: std::fs::read_to_string("/proc/sys/kernel/core_pattern")
                .expect("read core_pattern"),
            core_pipe_limit: std::fs::read_to_string("/proc/sys/kernel/core_pipe_limit")
                .expect("read core_pipe_limit"),
        }
    }

    pub fn core_pattern(&self) -> &str {
        self.core_pattern.trim_end()
    }
}

impl Drop for KernelCoreSettings {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/core_pattern", &self.core_pattern);
        let _ = std::fs::write("/proc/sys/kernel/core_pipe_limit", &self.core_pipe_limit);
    }
}

/// Compile a C program with gcc; gives back the binary's path inside `dir`.
pub fn compile_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let source_path = dir.join(format!("{name}.c"));
    std::fs::write(&source_path, source).expect("write source");
    let binary = dir.join(name);
    let output = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&source_path)
        .output()
        .expect("run gcc");
    assert!(
        output.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// Run `command` with cores enabled and expect it to die of a signal.
pub fn crash(command: &mut Command) -> i32 {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    // SAFETY: setrlimit between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
            Ok(())
        });
    }
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run program");
    status
        .signal()
        .unwrap_or_else(|| panic!("{command:?} did not die of a signal: {status}"))
}

/// One physical frame as gdb sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GdbFrame {
    pub pc: u64,
    pub function: Option<String>,
}

/// gdb's physical frames of the crashing thread of `core`: inline frames and the tail
/// calls gdb reconstructs from DWARF call-site information are not on the stack.
pub fn gdb_frames(executable: &Path, core: &Path) -> Vec<GdbFrame> {
    let script = r#"python
import gdb
f = gdb.newest_frame()
while f is not None:
    if f.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):
        print('FRAME %x %s' % (f.pc(), f.name()))
    f = f.older()
end
"#;
    let script_path =
        std::env::temp_dir().join(format!("gdb-frames-{}.py.gdb", std::process::id()));
    std::fs::write(&script_path, script).expect("write gdb script");
    let output = Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-ex",
            "set pagination off",
            "-ex",
            "set debuginfod enabled off",
            "-ex",
            "set backtrace past-main on",
            "-x",
        ])
        .arg(&script_path)
        .arg(executable)
        .arg(core)
        .output()
        .expect("run gdb");
    let _ = std::fs::remove_file(&script_path);
    let frames: Vec<GdbFrame> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("FRAME "))
        .filter_map(|rest| {
            let (pc, name) = rest.split_once(' ')?;
            Some(GdbFrame {
                pc: u64::from_str_radix(pc, 16).ok()?,
                function: (name != "None").then(|| name.to_string()),
            })
        })
        .collect();
    assert!(
        !frames.is_empty(),
        "gdb found no frames in {} ({}):\n{}\n{}",
        core.display(),
        executable.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    frames
}

/// The frames of a problem's JSON as (address, function).
pub fn json_frames(problem: &Value) -> Vec<(u64, Option<String>)> {
    problem["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|frame| {
                    let address = frame["address"]
                        .as_str()
                        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
                    (
                        address.unwrap_or(0),
                        frame["function"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Lets tests write as many records into /dev/kmsg as they need: the kernel rate-limits
/// user writes (`printk_devkmsg = ratelimit`, 10 lines per 5 s). Restored on drop.
pub struct DevKmsgUnlimited {
    previous: String,
}

impl DevKmsgUnlimited {
    pub fn new() -> DevKmsgUnlimited {
        let path = "/proc/sys/kernel/printk_devkmsg";
        let previous = std::fs::read_to_string(path).expect("read printk_devkmsg");
        std::fs::write(path, "on\n").expect("write printk_devkmsg (needs root)");
        DevKmsgUnlimited { previous }
    }
}

impl Default for DevKmsgUnlimited {
    fn default() -> Self {
        DevKmsgUnlimited::new()
    }
}

impl Drop for DevKmsgUnlimited {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", &self.previous);
    }
}

/// `crashmesh install` for a node, undone by `crashmesh uninstall` on drop (also when the
/// test fails), so no hook outlives its test.
pub struct Installed<'a> {
    node: &'a NodeDir,
}

impl<'a> Installed<'a> {
    pub fn new(node: &'a NodeDir) -> (Installed<'a>, Value) {
        let changes = node.json(&["install"]);
        (Installed { node }, changes)
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let _ = self.node.command(&["uninstall"]).output();
    }
}

/// `count` distinct UDP ports on 127.0.0.1 that were free a moment ago: each is bound to
/// port 0, read and released (the sockets are held until all are chosen, so no port comes
/// twice). Another process may still take one before its daemon binds it: rare on loopback.
pub fn free_udp_ports(count: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
        .collect();
    sockets
        .iter()
        .map(|socket| socket.local_addr().expect("local address").port())
        .collect()
}

/// Leaves a spool entry exactly as the Python hook does when the daemon is down: an
/// uncaught `RuntimeError` in `/opt/csd/tool.py` (the same problem wherever it is left).
pub fn spool_python_entry(node: &NodeDir, id: &str, time_ms: u64) {
    let dir = node.data_dir.join("spool/new").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("traceback.txt"),
        "Traceback (most recent call last):\n  File \"/opt/csd/tool.py\", line 3, in <module>\n    main()\n  File \"/opt/csd/tool.py\", line 2, in main\n    raise RuntimeError(\"replica lost\")\nRuntimeError: replica lost\n",
    )
    .unwrap();
    let meta = serde_json::json!({
        "format_version": 1, "id": id, "source": "python", "time_ms": time_ms, "pid": 4242,
        "executable": "/usr/bin/python3", "proc_files": ["traceback.txt"],
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A mesh node's config for the suites: every detector that would read this machine off,
/// no log gathering, and `[cluster]` with the cluster CA's files and the node's issued
/// certificate and key (as `cluster issue --json` printed them).
pub struct MeshNodeConfig<'a> {
    /// The node's name (its certificate's).
    pub name: &'a str,
    /// `host:port` its QUIC endpoint binds.
    pub listen: String,
    /// Every member as `(name, host:port)`, this node included.
    pub members: Vec<(String, String)>,
    /// The data dir of `cluster init`, whose `cluster/` holds `ca.pem` and `cluster.json`.
    pub ca_data_dir: &'a Path,
    /// `cluster issue NAME --json` of this node.
    pub issued: &'a serde_json::Value,
    /// More `[cluster]` keys, one per line (`log_wait_secs = 3`).
    pub cluster_extra: &'a str,
    /// Where it uploads: `(endpoint URL, token)`.
    pub upload: Option<(String, String)>,
}

impl MeshNodeConfig<'_> {
    /// The config file's text.
    pub fn to_toml(&self) -> String {
        let cluster_dir = self.ca_data_dir.join("cluster");
        let members: Vec<String> = self
            .members
            .iter()
            .map(|(name, address)| format!("{{ name = \"{name}\", address = \"{address}\" }}"))
            .collect();
        let mut text = format!(
            "[node]\nname = \"{name}\"\n[detect.kmsg]\nenabled = false\n[detect.kdump]\nenabled = false\n\
             [detect.pstore]\nenabled = false\n[detect.hs_err]\nenabled = false\n\
             [detect.vm_guest]\nenabled = false\n[gather]\nenabled = false\n\
             [cluster]\nenabled = true\nlisten = \"{listen}\"\nmembers = [{members}]\n\
             ca_cert = \"{ca_cert}\"\ncluster_file = \"{cluster_file}\"\n\
             node_cert = \"{cert}\"\nnode_key = \"{key}\"\n{extra}",
            name = self.name,
            listen = self.listen,
            members = members.join(", "),
            ca_cert = cluster_dir.join("ca.pem").display(),
            cluster_file = cluster_dir.join("cluster.json").display(),
            cert = self.issued["cert"].as_str().expect("issued cert path"),
            key = self.issued["key"].as_str().expect("issued key path"),
            extra = self.cluster_extra,
        );
        if let Some((endpoint, token)) = &self.upload {
            text.push_str(&format!(
                "[upload]\nendpoint = \"{endpoint}\"\ntoken = \"{token}\"\n"
            ));
        }
        text
    }
}

/// A consolidated report's manifest as the endpoint receives it (JSON, every field written
/// out: the protocol's JSON skips none): a core problem of `signature` from cluster
/// `cluster` (term 1), with `frames`, `incidents` and `attachments` as given.
pub struct CoreManifest<'a> {
    pub report_id: &'a str,
    pub cluster: &'a str,
    pub signature: &'a str,
    pub reason: &'a str,
    pub executable: &'a str,
    pub frames: Value,
    pub incidents: Value,
    pub attachments: Value,
}

impl CoreManifest<'_> {
    pub fn json(self) -> Value {
        serde_json::json!({
            "format_version": 1,
            "report_id": self.report_id,
            "cluster_id": self.cluster,
            "term": 1,
            "customer_id": null,
            "problem": {
                "kind": "core",
                "reason": self.reason,
                "signature": self.signature,
                "frames": self.frames,
                "signal": 11,
                "executable": self.executable,
                "package": null,
                "threads": null,
                "modules": null,
                "taint_flags": null,
                "version": null,
                "hardware": null,
                "process": null,
                "exception_type": null,
                "message": null,
                "text": null,
                "analysis_error": null,
            },
            "signature": self.signature,
            "kind": "core",
            "incidents": self.incidents,
            "attachments": self.attachments,
            "scrub": null,
            "created_ms": 1_790_000_000_000u64,
        })
    }
}

/// An unprivileged local user for attacker probes, made with `useradd` the first time (a
/// system account without a home or a login shell), and commands run as it with
/// `setpriv` (its uid and gid, no supplementary groups, no capabilities).
pub struct Probe {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

impl Probe {
    /// The probe user; made once per machine (parallel tests may race to make it, which
    /// `useradd` answers with "exists").
    pub fn user() -> &'static Probe {
        static PROBE: OnceLock<Probe> = OnceLock::new();
        PROBE.get_or_init(|| {
            const NAME: &str = "crashmesh-probe";
            let id = |flag: &str| -> Option<u32> {
                let output = Command::new("id").args([flag, NAME]).output().ok()?;
                String::from_utf8_lossy(&output.stdout).trim().parse().ok()
            };
            if id("-u").is_none() {
                let output = Command::new("useradd")
                    .args([
                        "--system",
                        "--no-create-home",
                        "--shell",
                        "/usr/sbin/nologin",
                    ])
                    .arg(NAME)
                    .output()
                    .expect("useradd (package passwd) is needed for the attacker probes");
                // 9: the user exists (another test made it meanwhile).
                assert!(
                    output.status.success() || output.status.code() == Some(9),
                    "useradd {NAME}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Probe {
                name: NAME,
                uid: id("-u").expect("probe uid"),
                gid: id("-g").expect("probe gid"),
            }
        })
    }

    /// `program` run as the probe user.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(program)
            .env("HOME", "/")
            .current_dir("/");
        command
    }
}

impl NodeDir {
    /// Lets other users walk into the node's temporary root (its own mode is 0700), as
    /// they can walk into `/var/lib` on a real machine; the data dir keeps its own mode.
    pub fn let_others_walk_in(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.root.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod the node's root");
    }

    /// The socket every user's Python hook reports to (`<data dir>-public/python.sock`).
    pub fn python_socket(&self) -> PathBuf {
        let mut name = self.data_dir.as_os_str().to_owned();
        name.push("-public");
        PathBuf::from(name).join("python.sock")
    }
}

/// Established TCP connections process `pid` holds to remote port `port` (from its
/// descriptors and /proc/net/tcp, tcp6).
pub fn tcp_connections_to(pid: u32, port: u16) -> usize {
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let sockets: std::collections::HashSet<String> = descriptors
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    const ESTABLISHED: &str = "01";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|remote| remote.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            remote_port == Some(port)
                && fields.get(3) == Some(&ESTABLISHED)
                && fields.get(9).is_some_and(|inode| sockets.contains(*inode))
        })
        .count()
}
