//! JVM hs_err files and QEMU/libvirt domain logs, written after the formats HotSpot and
//! libvirt print.

use crashmesh_parsers::hs_err::{parse_hs_err, parse_hs_err_frame};
use crashmesh_parsers::vm_guest::parse_vm_guest_log;
use crashmesh_protocol::model::ProblemKind;

const HS_ERR_SIGSEGV: &str = r#"#
# A fatal error has been detected by the Java Runtime Environment:
#
#  SIGSEGV (0xb) at pc=0x00007f3b8c4a1b2e, pid=12345, tid=12346
#
# JRE version: OpenJDK Runtime Environment (17.0.9+9) (build 17.0.9+9-Ubuntu-122.04)
# Java VM: OpenJDK 64-Bit Server VM (17.0.9+9-Ubuntu-122.04, mixed mode, sharing, tiered, compressed oops, compressed class ptrs, g1 gc, linux-amd64)
# Problematic frame:
# C  [libc.so.6+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e
#
# Core dump will be written. Default location: Core dumps may be processed with "/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E" (or dumping to /srv/app/core.12345)
#
# If you would like to submit a bug report, please visit:
#   https://bugs.launchpad.net/ubuntu/+source/openjdk-17
# The crash happened outside the Java Virtual Machine in native code.
# See problematic frame for where to report the bug.
#

---------------  S U M M A R Y ------------

Command Line: -Xmx1g -XX:+UseG1GC com.example.storage.Main --config /etc/app.conf

Host: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz, 80 cores, 376G, Ubuntu 22.04.3 LTS
Time: Tue Jan  9 10:00:00 2024 UTC elapsed time: 12.345678 seconds (0d 0h 0m 12s)

---------------  T H R E A D  ---------------

Current thread (0x00007f3b84012800):  JavaThread "main" [_thread_in_native, id=12346, stack(0x00007f3b8a000000,0x00007f3b8a100000)]

Stack: [0x00007f3b8a000000,0x00007f3b8a100000],  sp=0x00007f3b8a0fe5a8,  free space=1017k
Native frames: (J=compiled Java code, j=interpreted, Vv=VM code, C=native code)
C  [libc.so.6+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e
C  [libstoragejni.so+0x1139]  Java_com_example_storage_Native_copy+0x39
j  com.example.storage.Native.copy([BJI)V+0
j  com.example.storage.Main.run()V+15
J 1234 c2 com.example.storage.Main.loop()V (45 bytes) @ 0x00007f3b7d0a1234 [0x00007f3b7d0a1100+0x0000000000000134]
j  com.example.storage.Main.main([Ljava/lang/String;)V+9
v  ~StubRoutines::call_stub
V  [libjvm.so+0x8a1b2c]  JavaCalls::call_helper(JavaValue*, methodHandle const&, JavaCallArguments*, JavaThread*)+0x2fc
V  [libjvm.so+0x92c3d4]  jni_invoke_static(JNIEnv_*, JavaValue*, _jobject*, JNICallType, _jmethodID*, JNI_ArgumentPusher*, JavaThread*) [clone .constprop.1]+0x364
C  [libjli.so+0x5e2f]  JavaMain+0xd3f
C  [libc.so.6+0x94ac3]

Java frames: (J=compiled Java code, j=interpreted, Vv=VM code)
j  com.example.storage.Native.copy([BJI)V+0
j  com.example.storage.Main.run()V+15
J 1234 c2 com.example.storage.Main.loop()V (45 bytes) @ 0x00007f3b7d0a1234 [0x00007f3b7d0a1100+0x0000000000000134]
j  com.example.storage.Main.main([Ljava/lang/String;)V+9
v  ~StubRoutines::call_stub

siginfo: si_signo: 11 (SIGSEGV), si_code: 1 (SEGV_MAPERR), si_addr: 0x0000000000000000

Registers:
RAX=0x00007f3b74000000, RBX=0x0000000000000000, RCX=0x0000000000001000, RDX=0x0000000000001000
"#;

const HS_ERR_INTERNAL: &str = r#"#
# A fatal error has been detected by the Java Runtime Environment:
#
#  Internal Error (g1ConcurrentMark.cpp:1234), pid=4567, tid=4580
#  guarantee(_finger == _heap.end()) failed: only way to get here: _finger: 0x00000000c0000000, _heap_end: 0x0000000100000000
#
# JRE version: OpenJDK Runtime Environment Temurin-21.0.2+13 (21.0.2+13) (build 21.0.2+13-LTS)
# Java VM: OpenJDK 64-Bit Server VM Temurin-21.0.2+13 (21.0.2+13-LTS, mixed mode, sharing, tiered, compressed oops, compressed class ptrs, g1 gc, linux-amd64)
# Problematic frame:
# V  [libjvm.so+0x6e2f1a]  G1ConcurrentMark::mark_from_roots()+0x3ba
#

---------------  T H R E A D  ---------------

Current thread (0x00007f0d2c0a1b20):  ConcurrentGCThread "G1 Main Marker" [stack: 0x00007f0d0f1fe000,0x00007f0d0f2fe000] [id=4580]

Native frames: (J=compiled Java code, j=interpreted, Vv=VM code, C=native code)
V  [libjvm.so+0x6e2f1a]  G1ConcurrentMark::mark_from_roots()+0x3ba
V  [libjvm.so+0x6f0a2c]  G1ConcurrentMarkThread::phase_mark_loop()+0x8c
V  [libjvm.so+0x6f1b3d]  G1ConcurrentMarkThread::run_service()+0x1cd
V  [libjvm.so+0x5c2d4e]  ConcurrentGCThread::run()+0x1e
V  [libjvm.so+0xe7a5f0]  Thread::call_run()+0xc0
V  [libjvm.so+0xc2b6e1]  thread_native_entry(Thread*)+0xe1
C  [libc.so.6+0x94ac3]
"#;

const HS_ERR_NATIVE_OOM: &str = r#"#
# There is insufficient memory for the Java Runtime Environment to continue.
# Native memory allocation (mmap) failed to map 65536 bytes for committing reserved memory.
# Possible reasons:
#   The system is out of physical RAM or swap space
# Possible solutions:
#   Reduce memory load on the system
#  Out of Memory Error (os_linux.cpp:2749), pid=9001, tid=9002
#
# JRE version: OpenJDK Runtime Environment (11.0.21+9) (build 11.0.21+9-post-Debian-1deb11u1)
#
"#;

#[test]
fn sigsegv_in_native_code() {
    let problem = parse_hs_err(HS_ERR_SIGSEGV).expect("an hs_err file");
    assert_eq!(problem.kind, ProblemKind::Java);
    assert_eq!(
        problem.reason,
        "SIGSEGV in __memmove_avx_unaligned_erms (libc.so.6)"
    );
    assert_eq!(problem.signal, Some(11));
    assert_eq!(problem.exception_type.as_deref(), Some("SIGSEGV"));
    assert_eq!(problem.process.as_deref(), Some("java[12345]"));
    assert_eq!(
        problem.executable.as_deref(),
        Some("com.example.storage.Main")
    );
    assert_eq!(
        problem.version.as_deref(),
        Some("OpenJDK Runtime Environment (17.0.9+9) (build 17.0.9+9-Ubuntu-122.04)")
    );
    // The native frames section: the whole mixed stack, top first.
    assert_eq!(problem.frames.len(), 11);
    let top = &problem.frames[0];
    assert_eq!(
        top.function.as_deref(),
        Some("__memmove_avx_unaligned_erms")
    );
    assert_eq!(top.module.as_deref(), Some("libc.so.6"));
    assert_eq!(top.offset, Some(0x6e));
    assert_eq!(
        problem.frames[2].function.as_deref(),
        Some("com.example.storage.Native.copy([BJI)V")
    );
    assert_eq!(problem.frames[2].offset, Some(0));
    assert_eq!(
        problem.frames[4].function.as_deref(),
        Some("com.example.storage.Main.loop()V")
    );
    assert_eq!(problem.frames[4].address, Some(0x00007f3b7d0a1234));
    assert_eq!(
        problem.frames[6].function.as_deref(),
        Some("~StubRoutines::call_stub")
    );
    assert_eq!(
        problem.frames[8].function.as_deref(),
        Some(
            "jni_invoke_static(JNIEnv_*, JavaValue*, _jobject*, JNICallType, _jmethodID*, JNI_ArgumentPusher*, JavaThread*) [clone .constprop.1]"
        )
    );
    // No symbol: the offset is from the library's start.
    assert_eq!(problem.frames[10].function, None);
    assert_eq!(problem.frames[10].offset, Some(0x94ac3));
    let text = problem.text.as_deref().unwrap();
    assert!(text.contains("Problematic frame"));
    assert!(text.contains("Java frames:"));
    assert!(!text.contains("Registers:"));

    // Another build (other offsets, addresses, pid) crashing the same way: same problem.
    let rebuilt = HS_ERR_SIGSEGV
        .replace(
            "+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e",
            "+0x19f00e]  __memmove_avx_unaligned_erms+0x6e",
        )
        .replace("pid=12345", "pid=777")
        .replace("0x00007f3b7d0a1234", "0x00007f00000a1234")
        .replace("Main.run()V+15", "Main.run()V+21");
    assert_eq!(parse_hs_err(&rebuilt).unwrap().signature, problem.signature);
    let elsewhere = HS_ERR_SIGSEGV.replace(
        "Java_com_example_storage_Native_copy",
        "Java_com_example_storage_Native_fill",
    );
    assert_ne!(
        parse_hs_err(&elsewhere).unwrap().signature,
        problem.signature
    );
}

#[test]
fn internal_error_and_out_of_memory() {
    let problem = parse_hs_err(HS_ERR_INTERNAL).expect("an hs_err file");
    assert_eq!(problem.exception_type.as_deref(), Some("Internal Error"));
    assert!(
        problem
            .reason
            .starts_with("Internal Error: guarantee(_finger == _heap.end()) failed"),
        "{}",
        problem.reason
    );
    assert_eq!(problem.signal, None);
    assert_eq!(problem.frames.len(), 7);
    assert_eq!(
        problem.frames[0].function.as_deref(),
        Some("G1ConcurrentMark::mark_from_roots()")
    );
    // The assertion's addresses and the source line do not split the problem.
    let moved = HS_ERR_INTERNAL
        .replace("g1ConcurrentMark.cpp:1234", "g1ConcurrentMark.cpp:1240")
        .replace("0x00000000c0000000", "0x00000000d0000000");
    assert_eq!(parse_hs_err(&moved).unwrap().signature, problem.signature);

    let oom = parse_hs_err(HS_ERR_NATIVE_OOM).expect("an hs_err file");
    assert_eq!(oom.exception_type.as_deref(), Some("Out of Memory Error"));
    assert!(
        oom.message
            .as_deref()
            .unwrap()
            .starts_with("Native memory allocation (mmap) failed")
    );
    assert_eq!(oom.process.as_deref(), Some("java[9001]"));
    assert!(oom.frames.is_empty());

    let heap = "#\n# A fatal error has been detected by the Java Runtime Environment:\n#\n# java.lang.OutOfMemoryError: Java heap space\n#  Internal Error (debug.cpp:338), pid=1, tid=2\n#  fatal error: OutOfMemory encountered: Java heap space\n#\n";
    let heap = parse_hs_err(heap).expect("an hs_err file");
    assert_eq!(heap.exception_type.as_deref(), Some("Internal Error"));
    assert!(
        heap.reason
            .contains("OutOfMemory encountered: Java heap space")
    );
}

#[test]
fn frame_lines_of_every_type() {
    let frame = parse_hs_err_frame("j  java.lang.Thread.run()V+11 java.base@17.0.9").unwrap();
    assert_eq!(frame.function.as_deref(), Some("java.lang.Thread.run()V"));
    assert_eq!(frame.module.as_deref(), Some("java.base@17.0.9"));
    assert_eq!(frame.offset, Some(11));
    let frame = parse_hs_err_frame(
        "J 2345% c1 java.util.HashMap.get(Ljava/lang/Object;)Ljava/lang/Object; java.base@17.0.9 (23 bytes) @ 0x00007f1234567890 [0x00007f1234567800+0x0000000000000090]",
    )
    .unwrap();
    assert_eq!(
        frame.function.as_deref(),
        Some("java.util.HashMap.get(Ljava/lang/Object;)Ljava/lang/Object;")
    );
    assert_eq!(frame.address, Some(0x00007f1234567890));
    assert!(parse_hs_err_frame("siginfo: si_signo: 11").is_none());
    assert!(parse_hs_err("just some text\nwith SIGSEGV in it").is_none());
    for garbage in [
        "#",
        "# A fatal error has been detected by the Java Runtime Environment:\n# Problematic frame:",
        "Native frames:\nC  [",
        "\u{0}",
    ] {
        let _ = parse_hs_err(garbage);
    }
}

const LIBVIRT_LOG: &str = r#"2024-02-01 08:00:00.123+0000: starting up libvirt version: 8.0.0, package: 1ubuntu7.8 (Ubuntu), qemu version: 6.2.0Debian 1:6.2+dfsg-2ubuntu6.15, kernel: 5.15.0-91-generic, hostname: node3
LC_ALL=C PATH=/usr/local/sbin:/usr/bin HOME=/var/lib/libvirt/qemu/domain-4-win2019 /usr/bin/qemu-system-x86_64 -name guest=win2019,debug-threads=on -S -machine pc-q35-6.2,usb=off -device pvpanic,ioport=1285
2024-02-01T08:00:01.000000Z qemu-system-x86_64: -device pvpanic,ioport=1285: warning: deprecated
2024-02-01 09:13:37.456+0000: panic hyper-v: arg1='0x3b', arg2='0xc0000005', arg3='0xfffff80371a1b2c3', arg4='0xffffd0818e2fe920', arg5='0x0'
2024-02-01 09:13:38.001+0000: shutting down, reason=crashed
2024-02-01 09:20:00.000+0000: starting up libvirt version: 8.0.0, package: 1ubuntu7.8 (Ubuntu), qemu version: 6.2.0Debian 1:6.2+dfsg-2ubuntu6.15, kernel: 5.15.0-91-generic, hostname: node3
2024-02-01 10:00:00.000+0000: panic hyper-v: arg1='0x3b', arg2='0xc0000005', arg3='0xfffff80371a00000', arg4='0xffffd0818e200000', arg5='0x0'
2024-02-01 11:00:00.000+0000: starting up libvirt version: 8.0.0, package: 1ubuntu7.8 (Ubuntu), qemu version: 6.2.0Debian 1:6.2+dfsg-2ubuntu6.15, kernel: 5.15.0-91-generic, hostname: node3
KVM internal error. Suberror: 1
emulation failure
EAX=00000000 EBX=00000000 ECX=00000000 EDX=000306a9
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
2024-02-01 11:00:05.000+0000: shutting down, reason=crashed
"#;

#[test]
fn libvirt_guest_panics() {
    let problems = parse_vm_guest_log("win2019", LIBVIRT_LOG);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems.iter().all(|p| p.kind == ProblemKind::VmGuestPanic));
    assert_eq!(
        problems[0].reason,
        "guest panicked: hyper-v bugcheck 0x3b (0xc0000005)"
    );
    assert_eq!(problems[0].process.as_deref(), Some("win2019"));
    assert_eq!(
        problems[0].version.as_deref(),
        Some("6.2.0Debian 1:6.2+dfsg-2ubuntu6.15")
    );
    assert_eq!(
        problems[0].executable.as_deref(),
        Some("/usr/bin/qemu-system-x86_64")
    );
    // The crash shutdown is the same panic.
    assert_eq!(problems[0].text.as_deref().unwrap().lines().count(), 2);
    // The same bugcheck in the next run is the same problem.
    assert_eq!(problems[0].signature, problems[1].signature);
    // QEMU's own failure, with its register dump and the crash shutdown it caused.
    assert_eq!(problems[2].reason, "QEMU: KVM internal error, suberror 1");
    assert_eq!(problems[2].text.as_deref().unwrap().lines().count(), 5);
    // Another domain with the same bugcheck is another problem.
    let other = parse_vm_guest_log("win2022", LIBVIRT_LOG);
    assert_ne!(other[0].signature, problems[0].signature);
}

#[test]
fn bare_panic_events_and_quiet_logs() {
    let log = "2024-02-01 09:13:37.456+0000: event GUEST_PANICKED received\n\
2024-02-01 09:13:37.500+0000: panic s390: core='0' psw-mask='0x0002000180000000' psw-addr='0x0000000000001234' reason='disabled-wait'\n";
    let problems = parse_vm_guest_log("s390guest", log);
    assert_eq!(problems.len(), 1);
    // The specific line refines the bare event.
    assert_eq!(problems[0].reason, "guest panicked: s390 disabled-wait");
    assert!(parse_vm_guest_log("quiet", "2024-02-01 08:00:00.123+0000: starting up libvirt version: 8.0.0\n2024-02-01 08:10:00.000+0000: shutting down, reason=shutdown\n").is_empty());
    let crashed_only = parse_vm_guest_log(
        "d",
        "2024-02-01 08:10:00.000+0000: shutting down, reason=crashed\n",
    );
    assert_eq!(crashed_only.len(), 1);
    assert!(crashed_only[0].reason.contains("reason=crashed"));
}
