//! Similar problems on a labelled set: crashes whose label says which bug they are, in the
//! shapes that split one bug into several signatures (another caller, a frame more or
//! less, recursion, a different path into the same fault) and that put different bugs
//! close together (the same crashing function reached from unrelated code, a shared
//! `main`). Precision and recall of "similar" (an index key shared and the distance at
//! most `SIMILAR_DISTANCE_MAX`) over every pair.
//!
//! `cargo nextest run -p crashmesh-protocol --test similarity --no-capture` prints them.

use crashmesh_protocol::similarity::{SIMILAR_DISTANCE_MAX, distance, frame_keys, index_keys};
use crashmesh_protocol::{Frame, Problem, ProblemKind};

struct Crash {
    /// The bug it is, by a person's judgement.
    bug: &'static str,
    kind: ProblemKind,
    frames: &'static [&'static str],
}

const THREAD: &[&str] = &["start_thread", "clone3"];

const SET: &[Crash] = &[
    // A use-after-free in the chunk map, reached from three request handlers.
    Crash {
        bug: "chunk-map-uaf",
        kind: ProblemKind::Core,
        frames: &[
            "chunk_map_lookup",
            "cs_read_chunk",
            "handle_read",
            "worker_loop",
            "start_thread",
            "clone3",
        ],
    },
    Crash {
        bug: "chunk-map-uaf",
        kind: ProblemKind::Core,
        frames: &[
            "chunk_map_lookup",
            "cs_read_chunk",
            "handle_readv",
            "worker_loop",
            "start_thread",
            "clone3",
        ],
    },
    Crash {
        bug: "chunk-map-uaf",
        kind: ProblemKind::Core,
        frames: &[
            "chunk_map_lookup",
            "cs_read_chunk",
            "repl_sync_chunk",
            "repl_loop",
            "start_thread",
            "clone3",
        ],
    },
    // The same with the lookup inlined differently in a later build (one frame less).
    Crash {
        bug: "chunk-map-uaf",
        kind: ProblemKind::Core,
        frames: &[
            "chunk_map_lookup",
            "handle_read",
            "worker_loop",
            "start_thread",
            "clone3",
        ],
    },
    // An assertion in the journal, through abort's machinery, from two sync paths.
    Crash {
        bug: "journal-assert",
        kind: ProblemKind::Core,
        frames: &[
            "__pthread_kill_implementation",
            "raise",
            "abort",
            "__assert_fail",
            "journal_append",
            "journal_commit",
            "fs_sync",
            "main",
        ],
    },
    Crash {
        bug: "journal-assert",
        kind: ProblemKind::Core,
        frames: &[
            "__pthread_kill_implementation",
            "raise",
            "abort",
            "__assert_fail",
            "journal_append",
            "journal_commit",
            "fs_flush",
            "fs_sync",
            "main",
        ],
    },
    Crash {
        bug: "journal-assert",
        kind: ProblemKind::Core,
        frames: &[
            "raise",
            "abort",
            "__assert_fail",
            "journal_append",
            "journal_commit",
            "fs_fsync_dir",
            "main",
        ],
    },
    // A stack overflow in a recursive tree walk: the depth differs, recursion counts once.
    Crash {
        bug: "tree-walk-overflow",
        kind: ProblemKind::Core,
        frames: &[
            "btree_walk",
            "btree_walk",
            "btree_walk",
            "btree_walk",
            "index_scan",
            "query_run",
            "main",
        ],
    },
    Crash {
        bug: "tree-walk-overflow",
        kind: ProblemKind::Core,
        frames: &[
            "btree_walk",
            "btree_walk",
            "index_scan",
            "query_run",
            "main",
        ],
    },
    // Two different bugs that both die in strlen: a NULL log argument and a NULL path.
    Crash {
        bug: "log-null-arg",
        kind: ProblemKind::Core,
        frames: &[
            "__strlen_avx2",
            "vfprintf",
            "log_format",
            "log_error",
            "mds_handle_open",
            "worker_loop",
        ],
    },
    Crash {
        bug: "log-null-arg",
        kind: ProblemKind::Core,
        frames: &[
            "__strlen_sse2",
            "vfprintf",
            "log_format",
            "log_error",
            "mds_handle_unlink",
            "worker_loop",
        ],
    },
    Crash {
        bug: "path-null",
        kind: ProblemKind::Core,
        frames: &[
            "__strlen_avx2",
            "path_split",
            "path_resolve",
            "mds_lookup",
            "mds_handle_open",
            "worker_loop",
        ],
    },
    // Two different bugs in one memcpy call site's caller family.
    Crash {
        bug: "msg-pack-overrun",
        kind: ProblemKind::Core,
        frames: &[
            "__memmove_avx_unaligned_erms",
            "msg_pack",
            "rpc_send",
            "rpc_call",
            "client_write",
            "main",
        ],
    },
    Crash {
        bug: "msg-pack-overrun",
        kind: ProblemKind::Core,
        frames: &[
            "__memmove_avx_unaligned_erms",
            "msg_pack",
            "rpc_send",
            "rpc_reply",
            "server_loop",
            "main",
        ],
    },
    Crash {
        bug: "replica-copy-overrun",
        kind: ProblemKind::Core,
        frames: &[
            "__memmove_avx_unaligned_erms",
            "replica_copy",
            "repl_sync_chunk",
            "repl_loop",
            THREAD[0],
            THREAD[1],
        ],
    },
    // Kernel: one NULL dereference in a driver's completion path, from two interrupts.
    Crash {
        bug: "nvme-complete-null",
        kind: ProblemKind::KernelOops,
        frames: &[
            "nvme_complete_rq",
            "nvme_irq",
            "__handle_irq_event_percpu",
            "handle_irq_event",
            "handle_edge_irq",
            "__common_interrupt",
        ],
    },
    Crash {
        bug: "nvme-complete-null",
        kind: ProblemKind::KernelOops,
        frames: &[
            "nvme_complete_rq",
            "nvme_poll_cq",
            "nvme_poll",
            "blk_mq_poll",
            "iomap_dio_rw",
            "xfs_file_read_iter",
        ],
    },
    Crash {
        bug: "xfs-log-hang",
        kind: ProblemKind::HungTask,
        frames: &[
            "__schedule",
            "schedule",
            "xlog_grant_head_wait",
            "xlog_grant_head_check",
            "xfs_log_reserve",
            "xfs_trans_reserve",
        ],
    },
    // Python: one KeyError in a config lookup from two commands.
    Crash {
        bug: "config-keyerror",
        kind: ProblemKind::Python,
        frames: &["config.py:get", "backup.py:run", "cli.py:main"],
    },
    Crash {
        bug: "config-keyerror",
        kind: ProblemKind::Python,
        frames: &["config.py:get", "restore.py:run", "cli.py:main"],
    },
    Crash {
        bug: "restore-typeerror",
        kind: ProblemKind::Python,
        frames: &["restore.py:apply", "restore.py:run", "cli.py:main"],
    },
];

fn problem(crash: &Crash) -> Problem {
    let mut problem = Problem::new(crash.kind, crash.bug);
    problem.frames = crash
        .frames
        .iter()
        .map(|name| {
            let (file, function) = match (crash.kind, name.split_once(':')) {
                (ProblemKind::Python, Some((file, function))) => {
                    (Some(format!("/opt/tool/{file}")), function.to_string())
                }
                _ => (None, name.to_string()),
            };
            Frame {
                function: Some(function),
                file,
                reliable: true,
                ..Frame::default()
            }
        })
        .collect();
    problem
}

/// Whether the endpoint would list `b` as similar to `a`: an index key shared, the same
/// kind, and near enough.
fn found_similar(a: &Crash, b: &Crash) -> bool {
    if a.kind != b.kind {
        return false;
    }
    let (keys_a, keys_b) = (frame_keys(&problem(a)), frame_keys(&problem(b)));
    let shares_a_key = index_keys(&keys_a)
        .iter()
        .any(|key| index_keys(&keys_b).contains(key));
    shares_a_key && distance(&keys_a, &keys_b) <= SIMILAR_DISTANCE_MAX
}

#[test]
fn similar_problems_on_the_labelled_set_are_precise_and_find_most_of_each_bug() {
    let (mut true_positive, mut false_positive, mut false_negative) = (0u32, 0u32, 0u32);
    let mut mistakes = Vec::new();
    for (i, a) in SET.iter().enumerate() {
        for b in &SET[i + 1..] {
            let same_bug = a.bug == b.bug;
            match (same_bug, found_similar(a, b)) {
                (true, true) => true_positive += 1,
                (false, true) => {
                    false_positive += 1;
                    mistakes.push(format!("found alike: {:?} and {:?}", a.frames, b.frames));
                }
                (true, false) => {
                    false_negative += 1;
                    mistakes.push(format!("missed: {:?} and {:?}", a.frames, b.frames));
                }
                (false, false) => {}
            }
        }
    }
    let precision = f64::from(true_positive) / f64::from(true_positive + false_positive);
    let recall = f64::from(true_positive) / f64::from(true_positive + false_negative);
    println!(
        "similar problems, {} crashes, {} pairs of one bug: precision {precision:.2}, recall \
         {recall:.2} (threshold {SIMILAR_DISTANCE_MAX})\n{}",
        SET.len(),
        true_positive + false_negative,
        mistakes.join("\n")
    );
    assert_eq!(false_positive, 0, "{mistakes:#?}");
    assert!(recall >= 0.8, "recall {recall:.2}: {mistakes:#?}");
}

#[test]
fn a_problem_is_not_similar_to_one_of_another_kind() {
    let python = &SET[SET.len() - 1];
    let native = Crash {
        bug: python.bug,
        kind: ProblemKind::Core,
        frames: python.frames,
    };
    assert!(!found_similar(python, &native));
}
