//! The upload protocol (JSON bodies; `Authorization: Bearer <cluster token>`):
//! 1. `POST /api/v1/reports` with a [`ReportManifest`] → `202` and an
//!    [`crashmesh_protocol::report::UploadReply`] whose `missing_chunks` lists what to
//!    send, or `200` and the final reply when nothing is missing (the report is then
//!    recorded at once).
//! 2. `PUT /api/v1/chunks/{id}` per missing chunk: the body is the chunk as the node's
//!    store keeps it, one zstd frame; its decompressed bytes must hash (blake3) to `id`.
//!    `204` stored; `200` already stored.
//! 3. `POST /api/v1/reports/{id}/complete` → `200` and the final reply, or `202` with the
//!    chunks still missing.
//!
//! Later incidents: `POST /api/v1/incidents` with an [`IncidentUpdate`] → `200`.
//!
//! Refusals are JSON `{"error", "code"}`: 400 malformed, 401 token, 403 a manifest naming
//! another cluster than its token's, 404 unknown, 408 a body not received in time, 409
//! stale term, term too far ahead, another cluster's report id, unwanted chunk, 413 over a
//! limit, 429 over the cluster's rate or its (or the global) pending-upload limit.
//!
//! Invariants: the token is checked before the body is read; a chunk is accepted only
//! while a pending report of the same cluster names it ([`crate::http::pending`]), and
//! kept only once verified ([`crate::storage::blobs`]); whether another cluster stored a
//! chunk is never told; a report is recorded by the committer alone
//! ([`crate::recording::ingest`]).

use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use crashmesh_protocol::problem_id_for;
use crashmesh_protocol::report::{IncidentUpdate, ReportManifest, is_hex_id};
use futures_util::StreamExt;

use crate::error::EndpointError;
use crate::http::request::{content_length, parse_json, report_id_of};
use crate::http::state::{AppState, read_body, with_body_deadline};
use crate::recording::metrics::Metrics;
use crate::recording::record::check_owner;
use crate::storage::blobs::check_chunk;
use crate::storage::chunk_buffer::ChunkBuffer;

fn check_cluster(token_cluster: &str, named: &str) -> Result<(), EndpointError> {
    if token_cluster != named {
        return Err(EndpointError::WrongCluster {
            token_cluster: token_cluster.to_string(),
            named: named.to_string(),
        });
    }
    Ok(())
}

pub(crate) async fn post_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "manifest bytes",
        state.limits.manifest_bytes_max,
        &cluster,
    )
    .await?;
    let manifest: ReportManifest = parse_json("the manifest", &body)?;
    manifest.validate()?;
    let chunk_count = manifest.chunk_count();
    if chunk_count > state.limits.chunks_per_report_max {
        return Err(EndpointError::TooLarge {
            what: "chunks per report",
            value: chunk_count as u64,
            limit: state.limits.chunks_per_report_max as u64,
        });
    }
    check_cluster(&cluster, &manifest.cluster_id)?;
    state.check_term(&cluster, manifest.term)?;
    state.check_report_owner(&cluster, &manifest.report_id)?;
    let manifest = Arc::new(manifest);
    // A report already stored has all its chunks: it goes straight to the committer,
    // which answers a repeat without storing anything again.
    let missing = state.missing_for(&cluster, &manifest.chunk_ids())?;
    if missing.is_empty() {
        let reply = state.finish(manifest).await?;
        return Ok(HttpResponse::Ok().json(reply));
    }
    let problem_id = problem_id_for(&manifest.signature, &manifest.report_id);
    state.pending.insert(
        manifest.clone(),
        body.len(),
        missing.clone(),
        Instant::now(),
    )?;
    let reply = state.current_reply(&problem_id, missing)?;
    Ok(HttpResponse::Accepted().json(reply))
}

pub(crate) async fn complete_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let report_id = report_id_of(&path)?;
    if let Some((manifest, missing)) = state.pending.get(&cluster, &report_id) {
        if !missing.is_empty() {
            let problem_id = problem_id_for(&manifest.signature, &manifest.report_id);
            let reply = state.current_reply(&problem_id, missing)?;
            return Ok(HttpResponse::Accepted().json(reply));
        }
        let reply = state.finish(manifest).await?;
        return Ok(HttpResponse::Ok().json(reply));
    }
    match state.db.report(&report_id)? {
        Some(stored) => {
            check_owner(&stored, &cluster)?;
            let mut reply = state.current_reply(&stored.problem_id, Vec::new())?;
            reply.known = true;
            Ok(HttpResponse::Ok().json(reply))
        }
        None => Err(EndpointError::NotFound(format!(
            "report {report_id} (post its manifest first)"
        ))),
    }
}

pub(crate) async fn put_chunk(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, false)?;
    let id = path.into_inner();
    if !is_hex_id(&id) {
        return Err(EndpointError::BadRequest(format!(
            "chunk id {id:?} is not 64 lower-case hex digits"
        )));
    }
    let chunk_bytes_max = state.limits.chunk_body_bytes_max;
    let too_large = |value: u64| EndpointError::TooLarge {
        what: "chunk body bytes",
        value,
        limit: chunk_bytes_max as u64,
    };
    let announced = content_length(&request);
    if let Some(announced) = announced.filter(|len| *len > chunk_bytes_max as u64) {
        return Err(too_large(announced));
    }
    if !state.pending.wants(&cluster, &id) {
        // Answered from what the cluster itself stored, never from whether another did.
        if state.db.cluster_has_chunks(&cluster, &[id.as_str()])?[0] {
            return Ok(HttpResponse::Ok().finish());
        }
        return Err(EndpointError::Conflict(format!(
            "no pending report of cluster {cluster:?} names chunk {id}"
        )));
    }
    let body_bytes = announced.map_or(chunk_bytes_max, |len| len as usize);
    let _held = state.bodies.reserve(&cluster, body_bytes)?;
    // The body goes straight into the buffer its pack record is written from.
    let mut chunk = ChunkBuffer::with_limit(body_bytes);
    with_body_deadline(&state, async {
        while let Some(piece) = payload.next().await {
            let piece = piece.map_err(|error| {
                EndpointError::BadRequest(format!("reading chunk {id}: {error}"))
            })?;
            chunk
                .extend(&piece)
                .map_err(|_| too_large((chunk.frame().len() + piece.len()) as u64))?;
        }
        Ok::<(), EndpointError>(())
    })
    .await??;
    let compressed_len = chunk.frame().len();
    // Stored by another cluster already: this cluster's bytes are verified all the same,
    // and kept once.
    let raw_len = if state.blobs.has(&id).await? {
        check_chunk(&id, chunk.frame())?
    } else {
        state.blobs.put_verified(&id, chunk).await?
    };
    state.pending.arrived(&cluster, &id, Instant::now());
    Metrics::add(&state.metrics.chunks_stored, 1);
    Metrics::add(&state.metrics.chunk_bytes_received, compressed_len as u64);
    Metrics::add(&state.metrics.payload_bytes_stored, raw_len as u64);
    Ok(HttpResponse::NoContent().finish())
}

pub(crate) async fn post_incidents(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "incident update bytes",
        state.limits.update_bytes_max,
        &cluster,
    )
    .await?;
    let update: IncidentUpdate = parse_json("the incident update", &body)?;
    update.validate()?;
    check_cluster(&cluster, &update.cluster_id)?;
    state.check_term(&cluster, update.term)?;
    state.check_report_owner(&cluster, &update.report_id)?;
    let reply = state.committer.update(update.clone()).await?;
    state.note_term(&cluster, update.term);
    Ok(HttpResponse::Ok().json(reply))
}
