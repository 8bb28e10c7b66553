//! Print what crashmesh-coredump finds in a core: `analyze_core CORE [--json] [--root DIR]`.
//! Used by hand and by the benchmark against `eu-stack`.

use std::path::PathBuf;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let mut core = None;
    let mut json = false;
    let mut options = crashmesh_coredump::AnalyzeOptions::default();
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--json" => json = true,
            "--decompress" => options.decompress_debug_info = true,
            "--root" => options.root = arguments.next().map(PathBuf::from),
            _ => core = Some(PathBuf::from(argument)),
        }
    }
    let Some(core) = core else {
        eprintln!("usage: analyze_core CORE [--json] [--root DIR]");
        std::process::exit(2);
    };
    let analysis = match crashmesh_coredump::analyze_core(&core, &options) {
        Ok(analysis) => analysis,
        Err(error) => {
            eprintln!("analyze_core: {error}");
            std::process::exit(1);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&analysis).expect("serializable")
        );
        return;
    }
    println!(
        "{}  [{}]",
        analysis.problem.reason, analysis.problem.signature
    );
    for thread in analysis.problem.threads.iter().flatten() {
        println!(
            "TID {}{}:",
            thread.tid,
            if thread.crashed { " (crashed)" } else { "" }
        );
        for (index, frame) in thread.frames.iter().enumerate() {
            println!(
                "#{index:<2} {:#018x} {} {}+{:#x} {:?} {}",
                frame.address.unwrap_or(0),
                frame.function.as_deref().unwrap_or("??"),
                frame.module.as_deref().unwrap_or("?"),
                frame.offset.unwrap_or(0),
                frame.found_by,
                match (&frame.file, frame.line) {
                    (Some(file), Some(line)) => format!("{file}:{line}"),
                    _ => String::new(),
                }
            );
        }
        if let Some(error) = &thread.unwind_error {
            println!("   unwinding stopped: {error}");
        }
    }
}
