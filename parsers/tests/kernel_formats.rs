//! Kernel report formats the ABRT corpus does not cover: modern x86-64 oopses with
//! `<TASK>` sections, hung tasks, OOM kills, soft lockups, lockdep chains, segfault hints,
//! and consequence panics. The texts follow what current kernels print.

use crashmesh_parsers::kernel::parse_kernel_log;
use crashmesh_protocol::model::ProblemKind;

const MODERN_OOPS: &str = "\
[ 8123.456789] BUG: kernel NULL pointer dereference, address: 0000000000000008
[ 8123.456801] #PF: supervisor read access in kernel mode
[ 8123.456805] #PF: error_code(0x0000) - not-present page
[ 8123.456809] PGD 0 P4D 0
[ 8123.456815] Oops: 0000 [#1] PREEMPT SMP NOPTI
[ 8123.456820] CPU: 5 PID: 31337 Comm: ceph-osd Tainted: G           OE      6.8.0-45-generic #45-Ubuntu
[ 8123.456826] Hardware name: Supermicro SYS-1029U-TRT/X11DPU, BIOS 3.4 11/03/2020
[ 8123.456830] RIP: 0010:blk_mq_dispatch_rq_list+0x1a4/0x8e0
[ 8123.456836] Code: 48 8b 45 c8 48 8b 50 08 <48> 8b 42 08 48 85 c0 74 0b
[ 8123.456840] RSP: 0018:ffffb1b2c3d3fbd8 EFLAGS: 00010246
[ 8123.456845] RAX: 0000000000000000 RBX: ffff9a0c4e2b8000 RCX: 0000000000000001
[ 8123.456850] Call Trace:
[ 8123.456852]  <IRQ>
[ 8123.456855]  ? show_regs+0x6d/0x80
[ 8123.456860]  ? __die+0x24/0x80
[ 8123.456865]  nvme_irq+0x5e/0x90 [nvme]
[ 8123.456870]  </IRQ>
[ 8123.456872]  <TASK>
[ 8123.456875]  __blk_mq_sched_dispatch_requests+0x10c/0x160
[ 8123.456880]  blk_mq_sched_dispatch_requests+0x2c/0x70
[ 8123.456885]  bluestore_flush+0x1d/0x40 [ceph_helper 0123456789abcdef0123456789abcdef01234567]
[ 8123.456890]  ret_from_fork_asm+0x1b/0x30
[ 8123.456895]  </TASK>
[ 8123.456897] Modules linked in: nvme_tcp(E) ceph_helper(OE) xfs nvme
[ 8123.456899]  nvme_core
[ 8123.456900] CR2: 0000000000000008
[ 8123.456905] ---[ end trace 0000000000000000 ]---
[ 8123.456910] RIP: 0010:blk_mq_dispatch_rq_list+0x1a4/0x8e0
[ 8123.456915] Kernel panic - not syncing: Fatal exception
[ 8123.456920] Kernel Offset: 0x1c000000 from 0xffffffff81000000
[ 8123.456925] ---[ end Kernel panic - not syncing: Fatal exception ]---
";

#[test]
fn modern_oops_with_task_sections_and_a_consequence_panic() {
    let problems = parse_kernel_log(MODERN_OOPS);
    // The panic only says the oops was fatal: one problem, not two.
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let oops = &problems[0];
    assert_eq!(oops.kind, ProblemKind::KernelOops);
    assert_eq!(
        oops.reason,
        "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    );
    assert_eq!(oops.version.as_deref(), Some("6.8.0-45-generic"));
    assert_eq!(
        oops.taint_flags,
        Some(vec!["O".to_string(), "E".to_string()])
    );
    assert_eq!(oops.process.as_deref(), Some("ceph-osd[31337]"));
    assert_eq!(
        oops.hardware.as_deref(),
        Some("Supermicro SYS-1029U-TRT/X11DPU, BIOS 3.4 11/03/2020")
    );
    assert_eq!(
        oops.modules,
        Some(vec![
            "nvme_tcp".to_string(),
            "ceph_helper".to_string(),
            "xfs".to_string(),
            "nvme".to_string(),
            "nvme_core".to_string()
        ])
    );
    let names: Vec<&str> = oops
        .frames
        .iter()
        .map(|f| f.function.as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "blk_mq_dispatch_rq_list",
            "show_regs",
            "__die",
            "nvme_irq",
            "__blk_mq_sched_dispatch_requests",
            "blk_mq_sched_dispatch_requests",
            "bluestore_flush",
            "ret_from_fork_asm"
        ]
    );
    let stacks: Vec<Option<&str>> = oops.frames.iter().map(|f| f.stack.as_deref()).collect();
    assert_eq!(
        stacks,
        [
            None,
            Some("irq"),
            Some("irq"),
            Some("irq"),
            Some("task"),
            Some("task"),
            Some("task"),
            Some("task")
        ]
    );
    assert!(!oops.frames[1].reliable && !oops.frames[2].reliable && oops.frames[3].reliable);
    assert_eq!(oops.frames[0].offset, Some(0x1a4));
    assert_eq!(oops.frames[0].length, Some(0x8e0));
    assert_eq!(oops.frames[3].module.as_deref(), Some("nvme"));
    assert_eq!(
        oops.frames[6].build_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef01234567")
    );
    assert!(
        oops.text
            .as_deref()
            .unwrap()
            .ends_with("CR2: 0000000000000008")
    );

    // The same crash on another node, at other addresses and times, is the same problem.
    let elsewhere = MODERN_OOPS
        .replace("31337", "4242")
        .replace("ffffb1b2c3d3fbd8", "ffffb1b2c3d3aaaa")
        .replace("[ 8123.", "[ 9999.");
    assert_eq!(parse_kernel_log(&elsewhere)[0].signature, oops.signature);
}

#[test]
fn a_panic_of_its_own_is_reported() {
    let log = "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n\
CPU: 0 PID: 1 Comm: swapper/0 Not tainted 5.14.0-362.el9.x86_64 #1\n\
Call Trace:\n\
 <TASK>\n\
 dump_stack_lvl+0x34/0x48\n\
 panic+0x107/0x2bb\n\
 mount_block_root+0x1cf/0x1e2\n\
 prepare_namespace+0x136/0x165\n\
 </TASK>\n\
---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---\n";
    let problems = parse_kernel_log(log);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::KernelPanic);
    assert_eq!(problems[0].crash_function(), Some("dump_stack_lvl"));
}

#[test]
fn hung_tasks_are_one_problem_each() {
    let log = "\
[  984.123456] INFO: task jbd2/sda1-8:412 blocked for more than 120 seconds.
[  984.123460]       Not tainted 5.15.0-91-generic #101-Ubuntu
[  984.123462] \"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.
[  984.123463] task:jbd2/sda1-8     state:D stack:    0 pid:  412 ppid:     2 flags:0x00004000
[  984.123467] Call Trace:
[  984.123468]  <TASK>
[  984.123470]  __schedule+0x24e/0x590
[  984.123474]  schedule+0x69/0x110
[  984.123476]  jbd2_journal_commit_transaction+0x2d6/0x1920
[  984.123480]  kjournald2+0xa9/0x280
[  984.123482]  </TASK>
[  984.123490] INFO: task kworker/u16:3:1234 blocked for more than 120 seconds.
[  984.123491]       Not tainted 5.15.0-91-generic #101-Ubuntu
[  984.123492] Call Trace:
[  984.123493]  <TASK>
[  984.123494]  __schedule+0x24e/0x590
[  984.123495]  io_schedule+0x46/0x80
[  984.123496]  </TASK>
[  990.000000] e1000e: eno1 NIC Link is Up
";
    let problems = parse_kernel_log(log);
    assert_eq!(problems.len(), 2);
    assert!(problems.iter().all(|p| p.kind == ProblemKind::HungTask));
    assert_eq!(problems[0].process.as_deref(), Some("jbd2/sda1-8[412]"));
    assert_eq!(problems[1].process.as_deref(), Some("kworker/u16:3[1234]"));
    assert_eq!(problems[0].version.as_deref(), Some("5.15.0-91-generic"));
    assert_eq!(problems[0].taint_flags, Some(vec![]));
    assert_eq!(problems[0].frames.len(), 4);
    assert!(!problems[1].text.as_deref().unwrap().contains("e1000e"));
}

#[test]
fn oom_kill_keeps_the_trace_and_names_the_victim() {
    let log = "\
[ 5000.000001] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[ 5000.000002] CPU: 2 PID: 7001 Comm: stress Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1
[ 5000.000003] Call Trace:
[ 5000.000004]  <TASK>
[ 5000.000005]  dump_stack_lvl+0x44/0x5c
[ 5000.000006]  dump_header+0x4a/0x211
[ 5000.000007]  oom_kill_process.cold+0xb/0x10
[ 5000.000008]  out_of_memory+0x1fd/0x4c0
[ 5000.000009]  __alloc_pages_slowpath.constprop.0+0xc3a/0xd30
[ 5000.000010]  </TASK>
[ 5000.000011] Mem-Info:
[ 5000.000012] active_anon:1 inactive_anon:2 isolated_anon:0
[ 5000.000013] [  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name
[ 5000.000014] [   7001]     0  7001   528401   500000  4100000        0             0 stress
[ 5000.000015] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=stress,pid=7001,uid=0
[ 5000.000016] Out of memory: Killed process 7001 (stress) total-vm:2113604kB, anon-rss:2000000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:4004kB oom_score_adj:0
[ 5000.100000] usb 1-1: new high-speed USB device
[ 6000.000000] Out of memory: Killed process 8123 (stress) total-vm:2113604kB, anon-rss:1999000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4004kB oom_score_adj:0
";
    let problems = parse_kernel_log(log);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let first = &problems[0];
    assert_eq!(first.kind, ProblemKind::OomKill);
    assert!(
        first
            .reason
            .starts_with("Out of memory: Killed process 7001 (stress)")
    );
    assert_eq!(first.process.as_deref(), Some("stress[7001]"));
    assert_eq!(first.frames.len(), 5);
    // The memory report and task table are skipped, not kept.
    assert!(!first.text.as_deref().unwrap().contains("Mem-Info"));
    // Killing the same program again is the same problem, whatever its pid and sizes.
    assert_eq!(problems[1].kind, ProblemKind::OomKill);
    assert_eq!(problems[1].process.as_deref(), Some("stress[8123]"));
    assert_eq!(problems[0].signature, problems[1].signature);
}

#[test]
fn soft_lockup_and_its_panic() {
    let log = "\
watchdog: BUG: soft lockup - CPU#3 stuck for 26s! [spinner:4711]
Modules linked in: spin(OE)
CPU: 3 PID: 4711 Comm: spinner Tainted: G           OEL    6.1.0 #1
RIP: 0010:spin_forever+0x5/0x10 [spin]
Call Trace:
 <IRQ>
 ? watchdog_timer_fn+0x1b4/0x210
 </IRQ>
 <TASK>
 spin_write+0x20/0x30 [spin]
 vfs_write+0xb4/0x3a0
 </TASK>
Kernel panic - not syncing: softlockup: hung tasks
CPU: 3 PID: 4711 Comm: spinner Tainted: G           OEL    6.1.0 #1
Call Trace:
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
";
    let problems = parse_kernel_log(log);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].kind, ProblemKind::SoftLockup);
    assert_eq!(problems[0].process.as_deref(), Some("spinner[4711]"));
    assert_eq!(
        problems[0].taint_flags,
        Some(vec!["O".to_string(), "E".to_string(), "L".to_string()])
    );
    assert_eq!(problems[0].crash_function(), Some("spin_forever"));
}

#[test]
fn lockdep_circular_dependency_with_a_long_chain() {
    let mut log = String::from(
        "======================================================\n\
WARNING: possible circular locking dependency detected\n\
6.6.0-rc1 #1 Not tainted\n\
------------------------------------------------------\n\
kworker/0:1/17 is trying to acquire lock:\n\
ffff888100a1b2c8 (&dev->mutex){+.+.}-{3:3}, at: device_del+0x40/0x3c0\n\
\n\
but task is already holding lock:\n\
the existing dependency chain (in reverse order) is:\n",
    );
    // A long chain (more header lines than a plain oops would wait for).
    for index in 0..30 {
        log.push_str(&format!("-> #{index} (&lock{index}){{+.+.}}-{{3:3}}:\n       lock_acquire+0xc8/0x2c0\n       __mutex_lock+0x9a/0x8e0\n"));
    }
    log.push_str(
        "stack backtrace:\n\
CPU: 0 PID: 17 Comm: kworker/0:1 Not tainted 6.6.0-rc1 #1\n\
Call Trace:\n\
 <TASK>\n\
 dump_stack_lvl+0x57/0x90\n\
 check_noncircular+0x120/0x140\n\
 __lock_acquire+0x14cf/0x2350\n\
 lock_acquire+0xc8/0x2c0\n\
 device_del+0x40/0x3c0\n\
 </TASK>\n",
    );
    let problems = parse_kernel_log(&log);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::Lockdep);
    // The chain's indented `lock_acquire+…` lines are header, not trace frames.
    assert_eq!(problems[0].frames.len(), 5);
    assert_eq!(problems[0].version.as_deref(), Some("6.6.0-rc1"));
}

#[test]
fn segfault_hints_point_at_their_core() {
    let log = "\
[12345.678901] ceph-osd[2211]: segfault at 18 ip 000055d5c3a1b2c4 sp 00007f1b2c3d4e50 error 4 in ceph-osd[55d5c2e00000+1a00000] likely on CPU 7 (core 3, socket 0)
[12345.678950] Code: 48 8b 47 18 <48> 8b 00 c3 0f 1f 44 00 00
[12345.700000] traps: radosgw[3310] general protection fault ip:7f0a1b2c3d4e sp:7ffd0a0b0c0d error:0 in libc.so.6[7f0a1b200000+195000]
[12346.000000] ceph-osd[9999]: segfault at 18 ip 000055aaaaa1b2c4 sp 00007f1b2c3d0000 error 4 in ceph-osd[55aaa9e00000+1a00000] likely on CPU 1 (core 1, socket 0)
";
    let problems = parse_kernel_log(log);
    assert_eq!(problems.len(), 3);
    assert!(problems.iter().all(|p| p.kind == ProblemKind::SegfaultHint));
    assert_eq!(problems[0].process.as_deref(), Some("ceph-osd[2211]"));
    assert_eq!(problems[0].signal, Some(11));
    assert_eq!(problems[0].frames[0].address, Some(0x55d5c3a1b2c4));
    assert_eq!(problems[0].frames[0].module.as_deref(), Some("ceph-osd"));
    assert_eq!(problems[0].frames[0].offset, Some(0xc1b2c4));
    assert_eq!(problems[0].text.as_deref().unwrap().lines().count(), 2);
    assert_eq!(problems[1].frames[0].module.as_deref(), Some("libc.so.6"));
    // Same program, same offset, another pid and load address: the same problem.
    assert_eq!(problems[0].signature, problems[2].signature);
    assert_ne!(problems[0].signature, problems[1].signature);
}

#[test]
fn machine_check_blocks_group_their_lines() {
    let log = "\
mce: [Hardware Error]: CPU 2: Machine Check: 0 Bank 5: be00000000800400
mce: [Hardware Error]: RIP !INEXACT! 10:<ffffffff8103d8b6> {native_safe_halt+0x6/0x10}
mce: [Hardware Error]: TSC 7d6e4a2b1c ADDR 1234567000 MISC 86
mce: [Hardware Error]: PROCESSOR 0:50654 TIME 1700000000 SOCKET 0 APIC 4 microcode 2006e05
mce: [Hardware Error]: Machine check: Processor context corrupt
Kernel panic - not syncing: Fatal machine check
";
    let problems = parse_kernel_log(log);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::MachineCheck);
    assert_eq!(problems[0].text.as_deref().unwrap().lines().count(), 6);
    let other_cpu = log.replace("CPU 2", "CPU 9");
    assert_eq!(
        parse_kernel_log(&other_cpu)[0].signature,
        problems[0].signature
    );
}

#[test]
fn journal_and_syslog_forms_give_the_same_problem() {
    let dmesg = "[  100.000001] WARNING: CPU: 1 PID: 9 at fs/xfs/xfs_log.c:42 xlog_verify+0x10/0x20 [xfs]\n\
[  100.000002] CPU: 1 PID: 9 Comm: xfsaild Not tainted 6.1.0 #1\n\
[  100.000003] Call Trace:\n\
[  100.000004]  xlog_sync+0x1/0x2 [xfs]\n\
[  100.000005] ---[ end trace 0000000000000000 ]---\n";
    let journal: String = dmesg
        .lines()
        .map(|line| format!("Jan 01 00:00:01 node1 kernel: {}\n", &line[15..]))
        .collect();
    let iso: String = dmesg
        .lines()
        .map(|line| format!("2024-01-01T00:00:01.000000+00:00 node1 kernel: {line}\n"))
        .collect();
    let a = parse_kernel_log(dmesg);
    assert_eq!(a.len(), 1);
    assert_eq!(a, parse_kernel_log(&journal));
    assert_eq!(a, parse_kernel_log(&iso));
}
