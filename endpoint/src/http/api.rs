//! The JSON API's reads and the admin's writes: `GET /api/v1/problems[/{id}]`,
//! `GET /api/v1/reports/{id}`, the bug API, core requests, tokens, `GET /metrics`, a
//! chunk (`GET /api/v1/chunks/{id}`, the admin's) and an attachment as the pages link it
//! (`GET /reports/{id}/attachments/{name}`). The problem summaries here are also what
//! the HTML pages show and what an export writes ([`ProblemJson`]).
//!
//! Invariants: every read needs a token and shows that token's view ([`Viewer`]: a
//! cluster sees its own reports, incidents, nodes and counts of a problem, and the
//! problem's bug, never another cluster's names, counts or ids; a problem it has no
//! report in is not found, as one that does not exist); uninteresting problems are hidden
//! unless asked for (`interesting=all` or `false`); lists are bounded (`limit`, at most
//! [`PROBLEMS_SHOWN_MAX`]); writes need the admin's bearer token; `/metrics` has no
//! per-cluster series.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use crashmesh_protocol::Problem;
use crashmesh_protocol::similarity::SIMILAR_DISTANCE_MAX;
use serde::{Deserialize, Serialize};

use crate::error::EndpointError;
use crate::http::auth;
use crate::http::request::{NO_CLUSTER, SMALL_BODY_BYTES_MAX, bearer, parse_json, report_id_of};
use crate::http::state::{AppState, read_body, report_for};
use crate::storage::db::{BugRow, COMMENTS_PER_BUG_MAX, ProblemRow, Viewer};
use crate::time::now_ms;

/// Problems one list shows at most.
pub const PROBLEMS_SHOWN_MAX: usize = 1000;
/// The largest attachment read for a preview or served whole.
pub const ATTACHMENT_SERVED_BYTES_MAX: u64 = 64 << 20;

/// A bug as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BugJson {
    pub id: u64,
    pub status: String,
    pub url: String,
    pub workaround: Option<String>,
    pub regression: bool,
}

/// One problem as `GET /api/v1/problems` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProblemJson {
    pub id: String,
    pub signature: String,
    pub kind: String,
    pub reason: String,
    pub crash_function: Option<String>,
    pub executable: Option<String>,
    pub count: u64,
    pub nodes: Vec<String>,
    pub clusters: Vec<String>,
    pub versions: Vec<String>,
    pub labels: Vec<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    pub interesting: bool,
    pub uninteresting_rule: Option<String>,
    pub bug: Option<BugJson>,
}

impl ProblemJson {
    /// From the stored rows.
    pub fn new(row: &ProblemRow, bug: Option<&BugRow>, public_url: &str) -> ProblemJson {
        ProblemJson {
            id: row.id.clone(),
            signature: row.signature.clone(),
            kind: row.kind.to_string(),
            reason: row.reason.clone(),
            crash_function: row.crash_function.clone(),
            executable: row.executable.clone(),
            count: row.count,
            nodes: row.nodes.iter().cloned().collect(),
            clusters: row.clusters.iter().cloned().collect(),
            versions: row.versions.iter().cloned().collect(),
            labels: row.labels.iter().cloned().collect(),
            first_seen: row.first_seen,
            last_seen: row.last_seen,
            interesting: row.interesting,
            uninteresting_rule: row.uninteresting_rule.clone(),
            bug: bug.map(|bug| BugJson {
                id: bug.id,
                status: bug.status.clone(),
                url: bug.to_ref(public_url).url,
                workaround: bug.workaround.clone(),
                regression: bug.regression,
            }),
        }
    }
}

/// Query parameters of the list (API and dashboard); empty values mean "any".
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    /// A kind (`core`, `kernel_oops`, …).
    pub kind: Option<String>,
    /// Problems seen on this cluster.
    pub cluster: Option<String>,
    /// The bug's status; `none` for problems without a bug.
    pub status: Option<String>,
    /// `true` (default), `false`, or `all`.
    pub interesting: Option<String>,
    /// `key=value`, or `key` for any value.
    pub label: Option<String>,
    /// `last_seen` (default) or `count`.
    pub sort: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

pub(crate) fn given(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

impl Filter {
    fn matches(&self, row: &ProblemRow, bug: Option<&BugRow>) -> bool {
        if let Some(kind) = given(&self.kind)
            && row.kind.as_str() != kind
        {
            return false;
        }
        if let Some(cluster) = given(&self.cluster)
            && !row.clusters.contains(cluster)
        {
            return false;
        }
        if let Some(status) = given(&self.status) {
            let actual = bug.map_or("none", |bug| bug.status.as_str());
            if actual != status {
                return false;
            }
        }
        match given(&self.interesting).unwrap_or("true") {
            "all" => {}
            "false" if row.interesting => return false,
            "true" if !row.interesting => return false,
            _ => {}
        }
        if let Some(label) = given(&self.label) {
            let found = if label.contains('=') {
                row.labels.contains(label)
            } else {
                row.labels
                    .iter()
                    .any(|have| have.split_once('=').is_some_and(|(key, _)| key == label))
            };
            if !found {
                return false;
            }
        }
        true
    }
}

/// The problems `viewer` sees that a filter selects, sorted and bounded.
pub fn select(
    state: &AppState,
    viewer: &Viewer,
    filter: &Filter,
) -> Result<Vec<(ProblemRow, Option<BugRow>)>, EndpointError> {
    let mut problems: Vec<_> = state
        .db
        .problems_view(viewer)?
        .into_iter()
        .filter(|(row, bug)| filter.matches(row, bug.as_ref()))
        .collect();
    match given(&filter.sort).unwrap_or("last_seen") {
        "count" => problems.sort_by(|a, b| {
            b.0.count
                .cmp(&a.0.count)
                .then(b.0.last_seen.cmp(&a.0.last_seen))
        }),
        _ => problems.sort_by(|a, b| {
            b.0.last_seen
                .cmp(&a.0.last_seen)
                .then(b.0.count.cmp(&a.0.count))
        }),
    }
    problems.truncate(
        filter
            .limit
            .unwrap_or(PROBLEMS_SHOWN_MAX)
            .min(PROBLEMS_SHOWN_MAX),
    );
    Ok(problems)
}

/// `GET /api/v1/problems`: the problems the token sees.
pub async fn api_problems(
    state: web::Data<AppState>,
    request: HttpRequest,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let problems: Vec<ProblemJson> = select(&state, &viewer, &filter)?
        .iter()
        .map(|(row, bug)| ProblemJson::new(row, bug.as_ref(), &state.public_url))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "problems": problems })))
}

/// A problem as `viewer` sees it, its bug and analysis; a problem the viewer has no
/// report in is not found (as one that does not exist).
pub(crate) fn load_problem(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
) -> Result<(ProblemRow, Option<BugRow>, Option<Problem>), EndpointError> {
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EndpointError::BadRequest(format!(
            "problem id {id:?} is not hex"
        )));
    }
    // A merged problem's id shows the problem it was merged into.
    let id = &state.db.resolve(id)?;
    let row = state
        .db
        .problem_view(viewer, id)?
        .ok_or_else(|| EndpointError::NotFound(format!("problem {id}")))?;
    let bug = match row.bug {
        Some(bug) => state.db.bug(bug)?,
        None => None,
    };
    let analysis = state.db.analysis_view(viewer, id)?;
    Ok((row, bug, analysis))
}

/// The attachments of a problem's reports: (report id, name, bytes).
pub(crate) fn attachments_of(
    state: &AppState,
    row: &ProblemRow,
) -> Result<Vec<(String, String, u64)>, EndpointError> {
    let mut out = Vec::new();
    for report_id in row.reports.iter().take(16) {
        if let Some(report) = state.db.report(report_id)? {
            for attachment in &report.manifest.attachments {
                out.push((
                    report_id.clone(),
                    attachment.name.clone(),
                    attachment.blob.len_bytes,
                ));
            }
        }
    }
    Ok(out)
}

/// What the reports of a problem say about privacy: per report its customer and what
/// scrubbing did (customer mode), and whether a core is asked for the problem.
#[derive(Debug, Serialize)]
pub struct PrivacyView {
    /// Customers the reports name.
    pub customers: Vec<String>,
    /// Per report: `report_id`, `customer_id`, `scrub` (mode, removed, replaced,
    /// dropped_attachments, rules, cores; null for internal-mode reports).
    pub reports: Vec<serde_json::Value>,
    /// True while a person asks clusters for a core of this problem.
    pub core_requested: bool,
}

pub(crate) fn privacy_of(state: &AppState, row: &ProblemRow) -> Result<PrivacyView, EndpointError> {
    let mut customers = BTreeSet::new();
    let mut reports = Vec::new();
    for report_id in row.reports.iter().take(16) {
        if let Some(report) = state.db.report(report_id)? {
            if let Some(customer) = &report.manifest.customer_id {
                customers.insert(customer.clone());
            }
            reports.push(serde_json::json!({
                "report_id": report_id,
                "customer_id": report.manifest.customer_id,
                "scrub": report.manifest.scrub,
            }));
        }
    }
    Ok(PrivacyView {
        customers: customers.into_iter().collect(),
        reports,
        core_requested: state.db.core_requested(&row.id)?.is_some(),
    })
}

/// The JSON body of an admin's write, at most `bytes_max` ([`read_body`]), read only once
/// the request's bearer token is the admin's (a session is not enough for the JSON API's
/// writes); `what` names it in errors.
async fn admin_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    what: &'static str,
    bytes_max: usize,
) -> Result<T, EndpointError> {
    state.auth.admin(bearer(request))?;
    let (body, _held) = read_body(state, request, payload, what, bytes_max, NO_CLUSTER).await?;
    parse_json(what, &body)
}

/// Asks clusters for a core of a problem, or stops asking (the admin's change, from the
/// API or the problem page's form); gives the problem's id.
pub(crate) async fn set_core_request(
    state: &AppState,
    problem_id: &str,
    requested: bool,
) -> Result<String, EndpointError> {
    let (row, _, _) = load_problem(state, &Viewer::Admin, problem_id)?;
    let db = state.db.clone();
    let id = row.id.clone();
    web::block(move || db.set_core_request(&id, requested, now_ms()))
        .await
        .map_err(|error| EndpointError::Database(error.to_string()))??;
    Ok(row.id)
}

/// The body of `POST /api/v1/problems/{id}/core-request`.
#[derive(Debug, Deserialize)]
pub struct CoreRequestChange {
    pub requested: bool,
}

/// `POST /api/v1/problems/{id}/core-request` (admin token): asks clusters for a core of
/// the problem (`{"requested": true}`) or stops asking. A cluster in customer mode with
/// `cores = "on_request"` sends its withheld core after its next upload of the problem.
pub async fn api_core_request(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let change: CoreRequestChange =
        admin_json(&state, &request, payload, "the core request", 4096).await?;
    let problem_id = set_core_request(&state, &path, change.requested).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "problem_id": problem_id,
        "core_requested": change.requested,
    })))
}

/// `GET /api/v1/problems/{id}`: the summary, the analysis, recent incidents, reports,
/// attachments, the bug with its comments, `privacy` ([`PrivacyView`]) and
/// `core_requested`.
pub async fn api_problem(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let (row, bug, analysis) = load_problem(&state, &viewer, &path)?;
    let attachments: Vec<_> = attachments_of(&state, &row)?
        .into_iter()
        .map(|(report, name, len_bytes)| {
            serde_json::json!({ "report_id": report, "name": name, "len_bytes": len_bytes })
        })
        .collect();
    let mut summary = serde_json::to_value(ProblemJson::new(&row, bug.as_ref(), &state.public_url))
        .map_err(|error| EndpointError::BadRequest(error.to_string()))?;
    let privacy = privacy_of(&state, &row)?;
    let similar: Vec<serde_json::Value> = state
        .db
        .similar_view(&viewer, &row.id, SIMILAR_DISTANCE_MAX)?
        .iter()
        .map(|similar| {
            serde_json::json!({
                "id": similar.row.id,
                "distance": similar.distance,
                "reason": similar.row.reason,
                "count": similar.row.count,
                "signature": similar.row.signature,
            })
        })
        .collect();
    let extra = serde_json::json!({
        "similar": similar,
        "core_requested": privacy.core_requested,
        "privacy": privacy,
        "problem": analysis,
        "incidents": row.recent,
        "reports": row.reports,
        "attachments": attachments,
        "hourly": row.hourly,
        "bug_detail": match &bug {
            Some(bug) => state.db.bug_view_for(&viewer, bug.id, COMMENTS_PER_BUG_MAX)?,
            None => None,
        },
    });
    if let (Some(summary), serde_json::Value::Object(extra)) = (summary.as_object_mut(), extra) {
        summary.extend(extra);
    }
    Ok(HttpResponse::Ok().json(summary))
}

/// `GET /api/v1/bugs/{id}`: the admin any bug; a cluster a bug of a problem it has a report
/// in, as [`crate::storage::db::Db::bug_view_for`] shows it.
pub async fn api_bug(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<u64>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let bug = state
        .db
        .bug_view_for(&viewer, *path, COMMENTS_PER_BUG_MAX)?
        .ok_or_else(|| EndpointError::NotFound(format!("bug {path}")))?;
    Ok(HttpResponse::Ok().json(bug))
}

/// The body of `POST /api/v1/bugs/{id}`.
#[derive(Debug, Deserialize)]
pub struct BugChange {
    pub status: Option<String>,
    /// An empty text removes the workaround.
    pub workaround: Option<String>,
}

pub(crate) async fn set_bug(
    state: &web::Data<AppState>,
    id: u64,
    change: BugChange,
) -> Result<BugRow, EndpointError> {
    let db = state.db.clone();
    web::block(move || {
        db.set_bug(
            id,
            change.status.as_deref().filter(|status| !status.is_empty()),
            change.workaround.as_deref(),
            now_ms(),
        )
    })
    .await
    .map_err(|error| EndpointError::Database(error.to_string()))?
}

/// `POST /api/v1/bugs/{id}` (admin token): `{"status": …, "workaround": …}`.
pub async fn api_set_bug(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<u64>,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let change: BugChange = admin_json(
        &state,
        &request,
        payload,
        "the bug change",
        SMALL_BODY_BYTES_MAX,
    )
    .await?;
    let bug = set_bug(&state, *path, change).await?;
    let view = state.db.bug_view(bug.id, COMMENTS_PER_BUG_MAX)?;
    Ok(HttpResponse::Ok().json(view))
}

/// The body of `POST /api/v1/problems/{id}/merge`.
#[derive(Debug, Deserialize)]
pub struct MergeRequest {
    /// The problem the one in the path joins.
    pub into: String,
}

/// Merges problem `from` into `into` through the committer; `into` as it resolves.
pub(crate) async fn merge_problems(
    state: &web::Data<AppState>,
    from: &str,
    into: &str,
) -> Result<String, EndpointError> {
    for id in [from, into] {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EndpointError::BadRequest(format!(
                "problem id {id:?} is not hex"
            )));
        }
    }
    let reply = state
        .committer
        .merge(from.to_string(), into.to_string())
        .await?;
    Ok(reply.problem_id)
}

/// `POST /api/v1/problems/{id}/merge` (admin token): `{"into": id}` merges the problem
/// into another (one bug under two signatures): `{"merged": id, "into": id}`.
pub async fn api_merge(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let wanted: MergeRequest = admin_json(
        &state,
        &request,
        payload,
        "the merge request",
        SMALL_BODY_BYTES_MAX,
    )
    .await?;
    let into = merge_problems(&state, &path, &wanted.into).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "merged": *path, "into": into })))
}

/// `GET /reports/{report}/attachments/{name}`: an attachment of a report the token sees,
/// decompressed and verified.
pub async fn attachment(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let (report_id, name) = path.into_inner();
    if !crashmesh_protocol::report::is_hex_id(&report_id) {
        return Err(EndpointError::BadRequest("bad report id".into()));
    }
    let report = report_for(&state, &viewer, &report_id)?;
    let attachment = report
        .manifest
        .attachments
        .iter()
        .find(|attachment| attachment.name == name)
        .ok_or_else(|| EndpointError::NotFound(format!("attachment {name:?}")))?;
    let bytes = state
        .blobs
        .read_blob(&attachment.blob, ATTACHMENT_SERVED_BYTES_MAX)
        .await?;
    let content_type = if std::str::from_utf8(&bytes).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Ok(HttpResponse::Ok().content_type(content_type).body(bytes))
}

pub(crate) async fn get_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let report_id = report_id_of(&path)?;
    let row = report_for(&state, &viewer, &report_id)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "report_id": report_id,
        "problem_id": row.problem_id,
        "received_ms": row.received_ms,
        "manifest": row.manifest,
    })))
}

pub(crate) async fn get_chunk(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    state.auth.admin(bearer(&request))?;
    let bytes = state.blobs.get(&path).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/zstd")
        .body(bytes))
}

#[derive(Deserialize)]
struct TokenRequest {
    cluster: String,
}

pub(crate) async fn post_token(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let wanted: TokenRequest =
        admin_json(&state, &request, payload, "the token request", 4096).await?;
    let token = auth::create_cluster_token(&state.db, &wanted.cluster)?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .json(serde_json::json!({ "cluster": wanted.cluster, "token": token })))
}

/// `GET /metrics` (the metrics or the admin token): counters over all clusters, none per
/// cluster.
pub(crate) async fn metrics_text(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, EndpointError> {
    state.auth.metrics(bearer(&request))?;
    let body = state.metrics.render(&[
        (
            "pending_reports",
            "Reports waiting for their chunks",
            state.pending.len() as u64,
        ),
        (
            "pending_manifest_bytes",
            "Manifest bytes held by the reports waiting for their chunks",
            state.pending.manifest_bytes() as u64,
        ),
        (
            "body_bytes_receiving",
            "Body bytes reserved by the requests whose bodies are being read",
            state.bodies.reserved_bytes() as u64,
        ),
        (
            "chunks_writing",
            "Chunks received and not yet written to their pack",
            state.blobs.chunks_writing() as u64,
        ),
        (
            "completions_waiting_for_chunks",
            "Report completions waiting for their chunks to be written to a pack",
            state.blobs.stages_waiting() as u64,
        ),
    ]);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body))
}
