//! `crashmesh endpoint export`: every stored report as plain JSON and its attachments as
//! plain (decompressed, verified) files.
//!
//! ```text
//! OUT/problems.json                       {"problems": [ … ]} with every bug
//! OUT/reports/<report id>/report.json     the manifest, problem id, time received
//! OUT/reports/<report id>/attachments.json   [{"name", "file", "len_bytes", "blob_id"}]
//! OUT/reports/<report id>/attachments/<name>   each attachment, decompressed
//! ```
//! Attachment names were checked to be safe relative paths when the report came in
//! (components of `A-Z a-z 0-9 . _ : -`, none starting with `.`); they are checked again
//! here before they become paths. A name that is also the directory of another attachment
//! of the same report (`a` beside `a/b`) is written with `~` appended to its last
//! component (`attachments/a~`, beside `attachments/a/b`): `~` occurs in no attachment
//! name, so the file cannot meet another attachment's path. `attachments.json` lists where
//! each attachment went. Each file is streamed chunk by chunk and its blake3 checked
//! against the manifest's blob id.
//!
//! Every file is created new, 0600, and no link is followed anywhere under `OUT`
//! (`crashmesh_untrusted::Directory::create_private`): an export into a directory holding an earlier export, or
//! a link planted where a file goes, is refused ([`EndpointError::Exists`]).
//!
//! Only one process may open the database (see [`crate::storage::db`]): with no server running
//! [`export`] opens it; while `crashmesh endpoint run` has it, the CLI asks the server
//! (see [`crate::local`]), which runs [`export_from`] on its own database and storage.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crashmesh_protocol::report::{NAME_BYTES_MAX, is_safe_relative_path};
use serde::{Deserialize, Serialize};

use crate::config::EndpointConfig;
use crate::error::EndpointError;
use crate::http::api::ProblemJson;
use crate::recording::open_database;
use crate::storage::blobs::{Blobs, verify_chunk};
use crate::storage::db::{COMMENTS_PER_BUG_MAX, Db};
use crashmesh_untrusted::Directory as PrivateDir;

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub reports: u64,
    pub attachments: u64,
    pub bytes: u64,
    pub problems: u64,
}

/// Appended to an attachment's last component when its path is another's directory.
pub const CLASH_SUFFIX: char = '~';

fn write_json(dir: &PrivateDir, name: &str, value: &impl Serialize) -> Result<(), EndpointError> {
    let path = dir.path().join(name);
    let text = serde_json::to_vec_pretty(value).map_err(|error| EndpointError::Corrupt {
        what: path.display().to_string(),
        detail: error.to_string(),
    })?;
    dir.create_file(name)?
        .write_all(&text)
        .map_err(|error| EndpointError::io("write", &path, error))
}

/// Where each attachment of a report goes under its `attachments/` directory: its name,
/// or (a name that is also a directory of another) its name with [`CLASH_SUFFIX`].
pub fn attachment_files(names: &[&str]) -> Vec<String> {
    let directories: BTreeSet<&str> = names
        .iter()
        .flat_map(|name| {
            name.match_indices('/')
                .map(move |(slash, _)| &name[..slash])
        })
        .collect();
    names
        .iter()
        .map(|name| {
            if directories.contains(name) {
                format!("{name}{CLASH_SUFFIX}")
            } else {
                name.to_string()
            }
        })
        .collect()
}

/// Creates `relative` (components separated by `/`) under `dir`, its directories included.
fn create_under(dir: &PrivateDir, relative: &str) -> Result<std::fs::File, EndpointError> {
    let mut components: Vec<&str> = relative.split('/').collect();
    let file = components.pop().unwrap_or_default();
    let mut parent = None;
    for component in components {
        let next = parent.as_ref().unwrap_or(dir).private_dir(component)?;
        parent = Some(next);
    }
    Ok(parent.as_ref().unwrap_or(dir).create_file(file)?)
}

/// Writes everything under `out`, opening the database and the blob storage: only with no
/// server running (else [`EndpointError::InUse`]).
pub fn export(config: &EndpointConfig, out: &Path) -> Result<ExportSummary, EndpointError> {
    let (db, _journal) = open_database(&config.data_dir)?;
    let db = Arc::new(db);
    let blobs = Blobs::open(&config.storage, &config.data_dir, db.clone())?;
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
    let root = PrivateDir::create_private(out)?;
    let reports_dir = root.private_dir("reports")?;
    let problems: Vec<serde_json::Value> = db
        .problems()?
        .iter()
        .map(|(row, bug)| {
            serde_json::json!({
                "summary": ProblemJson::new(row, bug.as_ref(), public_url),
                "bug": bug.as_ref().and_then(|bug| {
                    db.bug_view(bug.id, COMMENTS_PER_BUG_MAX).ok().flatten()
                }),
                "analysis": db.analysis(&row.id).ok().flatten(),
            })
        })
        .collect();
    summary.problems = problems.len() as u64;
    write_json(
        &root,
        "problems.json",
        &serde_json::json!({ "problems": problems }),
    )?;
    for report_id in db.report_ids()? {
        let Some(report) = db.report(&report_id)? else {
            continue;
        };
        let dir = reports_dir.private_dir(&report_id)?;
        let attachments_dir = dir.private_dir("attachments")?;
        write_json(
            &dir,
            "report.json",
            &serde_json::json!({
                "report_id": report_id,
                "problem_id": report.problem_id,
                "received_ms": report.received_ms,
                "manifest": report.manifest,
            }),
        )?;
        let names: Vec<&str> = report
            .manifest
            .attachments
            .iter()
            .map(|attachment| attachment.name.as_str())
            .collect();
        let files = attachment_files(&names);
        let mut index = Vec::new();
        for (attachment, file_name) in report.manifest.attachments.iter().zip(&files) {
            if !is_safe_relative_path(&attachment.name, NAME_BYTES_MAX * 4) {
                return Err(EndpointError::Corrupt {
                    what: format!("report {report_id}"),
                    detail: format!("attachment name {:?}", attachment.name),
                });
            }
            let path = attachments_dir.path().join(file_name);
            let mut file = create_under(&attachments_dir, file_name)?;
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
            index.push(serde_json::json!({
                "name": attachment.name,
                "file": format!("attachments/{file_name}"),
                "len_bytes": attachment.blob.len_bytes,
                "blob_id": attachment.blob.blob_id,
            }));
            summary.attachments += 1;
        }
        write_json(&dir, "attachments.json", &index)?;
        summary.reports += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_another_attachments_directory_gets_the_clash_suffix() {
        let names = ["a", "a/b", "a/b/c", "node-1/journal.log", "x", "xy/z"];
        assert_eq!(
            attachment_files(&names),
            ["a~", "a/b~", "a/b/c", "node-1/journal.log", "x", "xy/z"]
        );
        // The suffix is outside every safe name, so a suffixed file meets no attachment.
        for file in attachment_files(&names) {
            assert!(
                file.ends_with(CLASH_SUFFIX) != is_safe_relative_path(&file, 512),
                "{file}"
            );
        }
    }
}
