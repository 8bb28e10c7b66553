//! What the handlers share ([`AppState`]) and what they ask of it: who a request speaks
//! for, its body within its limits, early refusals before the committer's.
//!
//! Invariants: a body is read only through `read_body` (or, for a chunk, within
//! `with_body_deadline` after its bytes were reserved), which handlers call after the
//! request's token was checked; every early refusal here (term, report owner) is checked
//! again by the committer in the transaction that would write, so these answer sooner,
//! never differently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, web};
use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{ReportManifest, UploadReply, is_hex_id};
use futures_util::StreamExt;

use crate::error::EndpointError;
use crate::http::Limits;
use crate::http::auth::{Auth, Credential};
use crate::http::inflight::{BodyBudget, Reservation};
use crate::http::pending::Pending;
use crate::http::ratelimit::{CLUSTERS_TRACKED_MAX, RateLimiter};
use crate::http::request::{bearer, content_length, same_origin, session_cookie};
use crate::recording::ingest::Committer;
use crate::recording::metrics::Metrics;
use crate::recording::record::{check_owner, check_term_step};
use crate::recording::symbolize::{self, Symbolizer};
use crate::storage::blobs::Blobs;
use crate::storage::db::{Db, ReportRow, Viewer};
use crate::time::now_secs;

/// Everything the handlers share.
pub struct AppState {
    /// The limits on every input.
    pub limits: Limits,
    pub db: Arc<Db>,
    pub blobs: Blobs,
    pub auth: Auth,
    pub pending: Pending,
    /// Body bytes being read, per cluster and over all.
    pub bodies: BodyBudget,
    pub rate: RateLimiter,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    pub symbolizer: Option<Arc<Symbolizer>>,
    pub public_url: String,
    /// The highest term admitted per cluster (as the committer answered), for early
    /// refusals.
    pub terms: Mutex<HashMap<String, u64>>,
    /// Session cookies get `Secure` (served over TLS, or behind an `https` public URL).
    pub secure_cookies: bool,
}

/// Reads a request's body, at most `bytes_max` (413 above, refused from `Content-Length`
/// before reading when it says so), within the body deadline (408), its bytes reserved
/// against `owner`'s share of [`BodyBudget`] while the reservation given back is held (429
/// when they do not fit). Handlers call it only after they checked the request's token:
/// nothing of a body is read for a request that would be refused for its token.
pub(crate) async fn read_body<'a>(
    state: &'a AppState,
    request: &HttpRequest,
    mut payload: web::Payload,
    what: &'static str,
    bytes_max: usize,
    owner: &str,
) -> Result<(web::Bytes, Reservation<'a>), EndpointError> {
    let too_large = |value: u64| EndpointError::TooLarge {
        what,
        value,
        limit: bytes_max as u64,
    };
    let announced = content_length(request);
    if let Some(announced) = announced.filter(|len| *len > bytes_max as u64) {
        return Err(too_large(announced));
    }
    let reservation = state
        .bodies
        .reserve(owner, announced.map_or(bytes_max, |len| len as usize))?;
    let mut body =
        web::BytesMut::with_capacity(announced.map_or(0, |len| len as usize).min(bytes_max));
    with_body_deadline(state, async {
        while let Some(piece) = payload.next().await {
            let piece = piece
                .map_err(|error| EndpointError::BadRequest(format!("reading {what}: {error}")))?;
            if body.len() + piece.len() > bytes_max {
                return Err(too_large((body.len() + piece.len()) as u64));
            }
            body.extend_from_slice(&piece);
        }
        Ok(())
    })
    .await??;
    Ok((body.freeze(), reservation))
}

/// Runs a body's reading within [`Limits::body_read_secs_max`]: a client
/// that sends its body too slowly (or stops) is answered 408 and its connection closed,
/// rather than holding the buffer and the worker for as long as it likes.
pub(crate) async fn with_body_deadline<T>(
    state: &AppState,
    reading: impl std::future::Future<Output = T>,
) -> Result<T, EndpointError> {
    let secs = state.limits.body_read_secs_max.max(1);
    tokio::time::timeout(Duration::from_secs(secs), reading)
        .await
        .map_err(|_| EndpointError::BodyTimeout { secs })
}

impl AppState {
    /// The cluster of the request's bearer token, charged against its rate when `rated`.
    pub(crate) fn cluster(
        &self,
        request: &HttpRequest,
        rated: bool,
    ) -> Result<String, EndpointError> {
        let cluster = self.auth.cluster(bearer(request))?;
        if rated && !self.rate.allow(&cluster, Instant::now()) {
            return Err(EndpointError::TooMany(format!(
                "cluster {cluster:?} is over {} reports per second",
                self.limits.cluster_reports_per_sec_max
            )));
        }
        Ok(cluster)
    }

    /// Who the request speaks for, and how it said so: its bearer token, else the
    /// dashboard's session cookie (a bearer header that does not verify is refused, not
    /// passed over for the cookie).
    pub(crate) fn caller(
        &self,
        request: &HttpRequest,
    ) -> Result<(Viewer, Credential), EndpointError> {
        if request.headers().contains_key("authorization") {
            return Ok((self.auth.viewer(bearer(request))?, Credential::Bearer));
        }
        let cookie = session_cookie(request).ok_or(EndpointError::Unauthorized)?;
        Ok((self.auth.session(cookie, now_secs())?, Credential::Session))
    }

    /// Ok when the request speaks for the admin, by its bearer token or (from the
    /// dashboard's own pages only, [`same_origin`]) its session.
    pub(crate) fn admin_form(&self, request: &HttpRequest) -> Result<(), EndpointError> {
        let (viewer, credential) = self.caller(request)?;
        if !viewer.is_admin() {
            return Err(EndpointError::Forbidden(
                "this needs the admin token".into(),
            ));
        }
        if credential == Credential::Session {
            same_origin(request)?;
        }
        Ok(())
    }

    /// The highest term admitted for the cluster, from memory or the database.
    fn highest_term(&self, cluster: &str) -> Result<u64, EndpointError> {
        if let Some(highest) = self.terms.lock().unwrap().get(cluster).copied() {
            return Ok(highest);
        }
        let highest = self.db.term(cluster)?;
        self.note_term(cluster, highest);
        Ok(highest)
    }

    /// Remembers a term the committer admitted for the cluster.
    pub(crate) fn note_term(&self, cluster: &str, term: u64) {
        let mut terms = self.terms.lock().unwrap();
        if terms.len() >= CLUSTERS_TRACKED_MAX && !terms.contains_key(cluster) {
            terms.clear();
        }
        let highest = terms.entry(cluster.to_string()).or_insert(term);
        *highest = (*highest).max(term);
    }

    /// Refuses a term below the cluster's highest admitted, or too far above it (an early
    /// answer; the committer checks again in the transaction that writes).
    pub(crate) fn check_term(&self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        check_term_step(cluster, term, self.highest_term(cluster)?)
    }

    /// Refuses a report id another cluster stored (an early answer; the committer checks
    /// again in the transaction that writes).
    pub(crate) fn check_report_owner(
        &self,
        cluster: &str,
        report_id: &str,
    ) -> Result<(), EndpointError> {
        match self.db.report(report_id)? {
            Some(stored) => check_owner(&stored, cluster),
            None => Ok(()),
        }
    }

    /// The chunks among `ids` the cluster has not sent (nor named in a report of its own
    /// stored before): whether another cluster stored them is never told, so every cluster
    /// sends (and has verified) the bytes of the chunks it names once.
    pub(crate) fn missing_for(
        &self,
        cluster: &str,
        ids: &[&str],
    ) -> Result<Vec<String>, EndpointError> {
        for id in ids {
            if !is_hex_id(id) {
                return Err(EndpointError::BadRequest(format!("bad chunk id {id:?}")));
            }
        }
        let owned = self.db.cluster_has_chunks(cluster, ids)?;
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .iter()
            .zip(owned)
            .filter(|(id, owned)| !owned && seen.insert(**id))
            .map(|(id, _)| id.to_string())
            .collect())
    }

    /// What is known about a problem now, for a reply before completion.
    pub(crate) fn current_reply(
        &self,
        problem_id: &str,
        missing_chunks: Vec<String>,
    ) -> Result<UploadReply, EndpointError> {
        // A merged problem answers as the problem it was merged into.
        let problem_id = &self.db.resolve(problem_id)?;
        let row = self.db.problem(problem_id)?;
        let bug = match row.as_ref().and_then(|row| row.bug) {
            Some(id) => self.db.bug(id)?,
            None => None,
        };
        Ok(UploadReply {
            problem_id: problem_id.to_string(),
            known: row.is_some(),
            bug: bug.as_ref().map(|bug| bug.to_ref(&self.public_url)),
            workaround: bug.and_then(|bug| bug.workaround),
            missing_chunks,
        })
    }

    /// The analysis to keep when it is not the manifest's problem as sent: that problem
    /// re-symbolized, where symbols are configured and it wants them.
    async fn analysis(&self, manifest: &ReportManifest) -> Result<Option<Problem>, EndpointError> {
        let Some(symbolizer) = &self.symbolizer else {
            return Ok(None);
        };
        if !symbolize::wants_symbols(&manifest.problem) {
            return Ok(None);
        }
        let mut problem = manifest.problem.clone();
        let symbolizer = symbolizer.clone();
        problem = web::block(move || {
            symbolizer.problem(&mut problem);
            problem
        })
        .await
        .map_err(|error| EndpointError::Database(format!("symbolizer: {error}")))?;
        Ok(Some(problem))
    }

    /// Records a report whose chunks are all stored.
    pub(crate) async fn finish(
        &self,
        manifest: Arc<ReportManifest>,
    ) -> Result<UploadReply, EndpointError> {
        let cluster = manifest.cluster_id.as_str();
        let refused_for_good = |result: &Result<UploadReply, EndpointError>| {
            matches!(
                result,
                Ok(_)
                    | Err(EndpointError::StaleTerm { .. })
                    | Err(EndpointError::TermTooFar { .. })
                    | Err(EndpointError::ForeignReport { .. })
            )
        };
        if let Err(error) = self.check_report_owner(cluster, &manifest.report_id) {
            self.pending.remove(cluster, &manifest.report_id);
            return Err(error);
        }
        let analysis = self.analysis(&manifest).await?;
        let result = self.committer.complete(manifest.clone(), analysis).await;
        if result.is_ok() {
            self.note_term(cluster, manifest.term);
        }
        if refused_for_good(&result) {
            self.pending.remove(cluster, &manifest.report_id);
        }
        result
    }
}

/// A stored report `viewer` may see: the admin any, a cluster its own (another's is not
/// found, as one never stored).
pub(crate) fn report_for(
    state: &AppState,
    viewer: &Viewer,
    report_id: &str,
) -> Result<ReportRow, EndpointError> {
    let not_found = || EndpointError::NotFound(format!("report {report_id}"));
    let row = state.db.report(report_id)?.ok_or_else(not_found)?;
    match viewer.cluster() {
        Some(cluster) if row.manifest.cluster_id != cluster => Err(not_found()),
        _ => Ok(row),
    }
}
