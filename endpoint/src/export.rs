//! `crashmesh endpoint export`: every stored report as plain JSON and its attachments as
//! plain (decompressed, verified) files.
//!
//! ```text
//! OUT/problems.json                       {"problems": [ … ]} with every bug
//! OUT/reports/<report id>/report.json     the manifest, problem id, time received
//! OUT/reports/<report id>/attachments/<name>   each attachment, decompressed
//! ```
//! Attachment names were checked to be safe relative paths when the report came in;
//! they are checked again here before they become paths. Each file is streamed chunk by
//! chunk and its blake3 checked against the manifest's blob id.
//!
//! Only one process may open the database (see [`crate::db`]): with no server running
//! [`export`] opens it; while `crashmesh endpoint run` has it, the CLI asks the server
//! (see [`crate::local`]), which runs [`export_from`] on its own database and storage.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crashmesh_protocol::report::{NAME_BYTES_MAX, is_safe_relative_path};
use serde::{Deserialize, Serialize};

use crate::blobs::{Blobs, verify_chunk};
use crate::config::EndpointConfig;
use crate::db::Db;
use crate::error::EndpointError;

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub reports: u64,
    pub attachments: u64,
    pub bytes: u64,
    pub problems: u64,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), EndpointError> {
    let text = serde_json::to_vec_pretty(value).map_err(|error| EndpointError::Corrupt {
        what: path.display().to_string(),
        detail: error.to_string(),
    })?;
    std::fs::write(path, text).map_err(|error| EndpointError::io("write", path, error))
}

/// Writes everything under `out`, opening the database and the blob storage: only with no
/// server running (else [`EndpointError::InUse`]).
pub fn export(config: &EndpointConfig, out: &Path) -> Result<ExportSummary, EndpointError> {
    let db = Arc::new(Db::open(&config.data_dir)?);
    let blobs = Blobs::open(config, db.clone())?;
    export_from(&db, &blobs, &config.public_url(None), out)
}

/// Writes everything under `out` from an open database and its blob storage; bug links
/// start with `public_url`. Whoever has the database may keep writing meanwhile: the
/// export is of the reports it saw when it listed them.
pub fn export_from(
    db: &Db,
    blobs: &Blobs,
    public_url: &str,
    out: &Path,
) -> Result<ExportSummary, EndpointError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| EndpointError::io("start", Path::new("runtime"), error))?;
    let mut summary = ExportSummary::default();
    std::fs::create_dir_all(out.join("reports"))
        .map_err(|error| EndpointError::io("create", out, error))?;
    let problems: Vec<serde_json::Value> = db
        .problems()?
        .iter()
        .map(|(row, bug)| {
            serde_json::json!({
                "summary": crate::dashboard::ProblemJson::new(row, bug.as_ref(), public_url),
                "bug": bug.as_ref().and_then(|bug| {
                    db.bug_view(bug.id, crate::db::COMMENTS_PER_BUG_MAX).ok().flatten()
                }),
                "analysis": db.analysis(&row.id).ok().flatten(),
            })
        })
        .collect();
    summary.problems = problems.len() as u64;
    write_json(
        &out.join("problems.json"),
        &serde_json::json!({ "problems": problems }),
    )?;
    for report_id in db.report_ids()? {
        let Some(report) = db.report(&report_id)? else {
            continue;
        };
        let dir = out.join("reports").join(&report_id);
        std::fs::create_dir_all(dir.join("attachments"))
            .map_err(|error| EndpointError::io("create", &dir, error))?;
        write_json(
            &dir.join("report.json"),
            &serde_json::json!({
                "report_id": report_id,
                "problem_id": report.problem_id,
                "received_ms": report.received_ms,
                "manifest": report.manifest,
            }),
        )?;
        for attachment in &report.manifest.attachments {
            if !is_safe_relative_path(&attachment.name, NAME_BYTES_MAX * 4) {
                return Err(EndpointError::Corrupt {
                    what: format!("report {report_id}"),
                    detail: format!("attachment name {:?}", attachment.name),
                });
            }
            let path = dir.join("attachments").join(&attachment.name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|error| EndpointError::io("create", parent, error))?;
            }
            let mut file = std::fs::File::create(&path)
                .map_err(|error| EndpointError::io("create", &path, error))?;
            let mut hasher = blake3::Hasher::new();
            for (id, _) in &attachment.blob.chunks {
                let stored = runtime.block_on(blobs.get(id))?;
                let raw = verify_chunk(id, &stored)?;
                hasher.update(&raw);
                file.write_all(&raw)
                    .map_err(|error| EndpointError::io("write", &path, error))?;
                summary.bytes += raw.len() as u64;
            }
            if hasher.finalize().to_hex().as_str() != attachment.blob.blob_id {
                return Err(EndpointError::Corrupt {
                    what: path.display().to_string(),
                    detail: "the chunks do not hash to the blob id".into(),
                });
            }
            summary.attachments += 1;
        }
        summary.reports += 1;
    }
    Ok(summary)
}
