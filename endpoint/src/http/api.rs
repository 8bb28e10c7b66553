//! The read side: `GET /api/v1/problems[/{id}]`, the bug API, and the dashboard — server
//! rendered HTML with inline CSS and SVG, nothing fetched from elsewhere (the machines it
//! runs on may have no internet).
//!
//! Invariants: every value shown is HTML-escaped; uninteresting problems are hidden unless
//! asked for (`interesting=all` or `false`); lists are bounded (`limit`, at most
//! [`PROBLEMS_SHOWN_MAX`]); every read needs a token and shows that token's view
//! ([`Viewer`]: a cluster sees its own reports, incidents, nodes and counts of a problem,
//! and the problem's bug, never another cluster's names, counts or ids); writes need the
//! admin token, and a form relying on the session cookie must come from the dashboard's
//! own pages ([`crate::server::same_origin`]). The pages have no script and no inline
//! style (the Content-Security-Policy allows neither); the browser signs in on
//! `/signin`, which sets the session cookie (`HttpOnly`, `SameSite=Strict`, `Secure`
//! over TLS; see [`crate::auth`]).

use std::collections::BTreeMap;
use std::fmt::Write;

use actix_web::{HttpRequest, HttpResponse, web};
use crashmesh_protocol::{Frame, Problem};
use serde::{Deserialize, Serialize};

use crate::auth::Viewer;
use crate::db::{BUG_STATUSES, BugRow, ProblemRow};
use crate::error::EndpointError;
use crate::server::{AppState, SMALL_BODY_BYTES_MAX, bearer_of, read_body, same_origin};

/// Problems one list shows at most.
pub const PROBLEMS_SHOWN_MAX: usize = 1000;
/// Attachments previewed inline on a problem's page.
pub const PREVIEWS_MAX: usize = 4;
/// Bytes of one attachment shown inline.
pub const PREVIEW_BYTES_MAX: usize = 16 * 1024;
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

fn given(value: &Option<String>) -> Option<&str> {
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
fn load_problem(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
) -> Result<(ProblemRow, Option<BugRow>, Option<Problem>), EndpointError> {
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EndpointError::BadRequest(format!(
            "problem id {id:?} is not hex"
        )));
    }
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
fn attachments_of(
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

fn privacy_of(state: &AppState, row: &ProblemRow) -> Result<PrivacyView, EndpointError> {
    let mut customers = std::collections::BTreeSet::new();
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
    state.auth.admin(bearer_of(&request))?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "core request bytes",
        4096,
        crate::server::NO_CLUSTER,
    )
    .await?;
    let change: CoreRequestChange = serde_json::from_slice(&body)
        .map_err(|error| EndpointError::BadRequest(format!("core request: {error}")))?;
    let (row, _, _) = load_problem(&state, &Viewer::Admin, &path)?;
    let db = state.db.clone();
    let id = row.id.clone();
    web::block(move || db.set_core_request(&id, change.requested, crate::ingest::now_ms()))
        .await
        .map_err(|error| EndpointError::Database(error.to_string()))??;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "problem_id": row.id,
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
    let extra = serde_json::json!({
        "core_requested": privacy.core_requested,
        "privacy": privacy,
        "problem": analysis,
        "incidents": row.recent,
        "reports": row.reports,
        "attachments": attachments,
        "hourly": row.hourly,
        "bug_detail": match &bug {
            Some(bug) => state.db.bug_view_for(&viewer, bug.id, crate::db::COMMENTS_PER_BUG_MAX)?,
            None => None,
        },
    });
    if let (Some(summary), serde_json::Value::Object(extra)) = (summary.as_object_mut(), extra) {
        summary.extend(extra);
    }
    Ok(HttpResponse::Ok().json(summary))
}

/// The problem page's privacy section: customers, whether a core is asked, and per
/// report what scrubbing removed and pseudonymized (counts per rule); for the admin, the
/// form that asks for a core.
fn privacy_section(problem_id: &str, view: &PrivacyView, viewer: &Viewer) -> String {
    let mut html = String::from("<section id=\"privacy\"><h2>privacy</h2>");
    let _ = write!(
        html,
        "<p>customers: <span id=\"customers\">{}</span> — core requested: <span id=\"core-requested\">{}</span></p>\
         <table id=\"scrub\"><tr><th>report</th><th>customer</th><th>mode</th><th>removed</th>\
         <th>pseudonymized</th><th>withheld attachments</th><th>cores</th><th>rules</th></tr>",
        if view.customers.is_empty() {
            "-".to_string()
        } else {
            escape(&view.customers.join(", "))
        },
        if view.core_requested { "yes" } else { "no" },
    );
    for report in &view.reports {
        let scrub = &report["scrub"];
        let rules = scrub["rules"]
            .as_object()
            .map(|rules| {
                rules
                    .iter()
                    .map(|(rule, count)| format!("{rule}: {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let field = |value: &serde_json::Value| match value {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(text) => escape(text),
            other => escape(&other.to_string()),
        };
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            field(&report["report_id"])
                .chars()
                .take(16)
                .collect::<String>(),
            field(&report["customer_id"]),
            if scrub.is_null() {
                "internal".to_string()
            } else {
                field(&scrub["mode"])
            },
            field(&scrub["removed"]),
            field(&scrub["replaced"]),
            field(&scrub["dropped_attachments"]),
            field(&scrub["cores"]),
            escape(&rules),
        );
    }
    html.push_str("</table>");
    if !viewer.is_admin() {
        html.push_str("</section>");
        return html;
    }
    // Clusters in customer mode with `cores = "on_request"` answer this.
    let _ = write!(
        html,
        "<form method=\"post\" action=\"/problems/{}/core-request\"><input type=\"hidden\" \
         name=\"requested\" value=\"{}\"> <button type=\"submit\" id=\"core-request\">{}</button></form>",
        escape(problem_id),
        if view.core_requested { "no" } else { "yes" },
        if view.core_requested {
            "stop asking for a core"
        } else {
            "request a core"
        },
    );
    html.push_str("</section>");
    html
}

/// `GET /api/v1/bugs/{id}`: the admin any bug; a cluster a bug of a problem it has a report
/// in, as [`crate::db::Db::bug_view_for`] shows it.
pub async fn api_bug(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<u64>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let bug = state
        .db
        .bug_view_for(&viewer, *path, crate::db::COMMENTS_PER_BUG_MAX)?
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

async fn set_bug(
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
            crate::ingest::now_ms(),
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
    state.auth.admin(bearer_of(&request))?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "bug change bytes",
        SMALL_BODY_BYTES_MAX,
        crate::server::NO_CLUSTER,
    )
    .await?;
    let change: BugChange = serde_json::from_slice(&body)
        .map_err(|error| EndpointError::BadRequest(format!("bug change: {error}")))?;
    let bug = set_bug(&state, *path, change).await?;
    let view = state.db.bug_view(bug.id, crate::db::COMMENTS_PER_BUG_MAX)?;
    Ok(HttpResponse::Ok().json(view))
}

/// A form's fields, read after the caller was checked, within the body deadline.
async fn read_form<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<T, EndpointError> {
    let (body, _held) = read_body(
        state,
        request,
        payload,
        "form bytes",
        SMALL_BODY_BYTES_MAX,
        crate::server::NO_CLUSTER,
    )
    .await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| EndpointError::BadRequest("the form is not UTF-8".into()))?;
    web::Query::<T>::from_query(text)
        .map(web::Query::into_inner)
        .map_err(|error| EndpointError::BadRequest(format!("the form: {error}")))
}

/// The dashboard's bug form.
#[derive(Debug, Deserialize)]
pub struct BugForm {
    pub status: Option<String>,
    pub workaround: Option<String>,
}

/// `POST /problems/{id}/bug` (the admin: its bearer token, or its session from the
/// dashboard's own page) → back to the problem page.
pub async fn form_set_bug(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    state.admin_form(&request)?;
    let form: BugForm = read_form(&state, &request, payload).await?;
    let (row, _, _) = load_problem(&state, &Viewer::Admin, &path)?;
    let bug = row
        .bug
        .ok_or_else(|| EndpointError::NotFound(format!("a bug for problem {}", row.id)))?;
    set_bug(
        &state,
        bug,
        BugChange {
            status: form.status,
            workaround: form.workaround,
        },
    )
    .await?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("/problems/{}#bug", row.id)))
        .finish())
}

/// The problem page's core request form.
#[derive(Debug, Deserialize)]
pub struct CoreRequestForm {
    /// `yes` asks for a core, anything else stops asking.
    pub requested: String,
}

/// `POST /problems/{id}/core-request` (the admin, as for the bug form) → back to the page.
pub async fn form_core_request(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    state.admin_form(&request)?;
    let form: CoreRequestForm = read_form(&state, &request, payload).await?;
    let (row, _, _) = load_problem(&state, &Viewer::Admin, &path)?;
    let db = state.db.clone();
    let id = row.id.clone();
    let requested = form.requested == "yes";
    web::block(move || db.set_core_request(&id, requested, crate::ingest::now_ms()))
        .await
        .map_err(|error| EndpointError::Database(error.to_string()))??;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("/problems/{}#privacy", row.id)))
        .finish())
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
    let report = crate::server::report_for(&state, &viewer, &report_id)?;
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

// ---------------------------------------------------------------- sign-in

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    pub token: String,
    /// The dashboard page to go back to.
    #[serde(default)]
    pub next: String,
}

/// `next` when it is a path of this server (`/…`, not `//host`), else `/`: signing in never
/// sends the browser elsewhere.
fn local_path(next: &str) -> &str {
    let safe = next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 512
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.?=&%#".contains(&b));
    if safe { next } else { "/" }
}

fn signin_html(next: &str, message: Option<&str>) -> String {
    let mut body = String::from(
        "<h1>sign in</h1><p>Paste a token: a cluster's token shows that cluster's problems \
         only; the admin token (the endpoint's <code>DATA_DIR/admin.token</code>) shows every \
         cluster's and allows changes.</p>",
    );
    if let Some(message) = message {
        let _ = write!(
            body,
            "<p class=\"error\" id=\"signin-error\">{}</p>",
            escape(message)
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/signin\" id=\"signin-form\"><input type=\"hidden\" \
         name=\"next\" value=\"{}\"><label>token <input type=\"password\" name=\"token\" \
         id=\"token\" size=\"72\" autocomplete=\"off\"></label> <button type=\"submit\" \
         id=\"signin\">sign in</button></form>",
        escape(local_path(next))
    );
    page_html("sign in", &body, None)
}

/// The sign-in page, answered with `status` (401 where a page needed a session).
fn signin_response(
    status: actix_web::http::StatusCode,
    next: &str,
    message: Option<&str>,
) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(signin_html(next, message))
}

/// `GET /signin`.
pub async fn signin_page(request: HttpRequest) -> HttpResponse {
    let next =
        web::Query::<std::collections::HashMap<String, String>>::from_query(request.query_string())
            .ok()
            .and_then(|query| query.get("next").cloned())
            .unwrap_or_default();
    signin_response(actix_web::http::StatusCode::OK, &next, None)
}

/// The session cookie's header: `value` for `max_age_secs` (0 ends it).
fn session_cookie_header(state: &AppState, value: &str, max_age_secs: u64) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        crate::auth::SESSION_COOKIE,
        if state.secure_cookies { "; Secure" } else { "" }
    )
}

/// `POST /signin`: a token pasted in the form becomes a session cookie (see
/// [`crate::auth`]); from the dashboard's own page only.
pub async fn signin(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    same_origin(&request)?;
    let form: SignInForm = read_form(&state, &request, payload).await?;
    match state
        .auth
        .new_session(form.token.trim(), crate::server::now_secs())
    {
        Ok(session) => Ok(HttpResponse::SeeOther()
            .insert_header(("Location", local_path(&form.next)))
            .insert_header((
                "Set-Cookie",
                session_cookie_header(&state, &session, crate::auth::SESSION_SECS_MAX),
            ))
            .finish()),
        Err(EndpointError::Unauthorized) => Ok(signin_response(
            actix_web::http::StatusCode::UNAUTHORIZED,
            &form.next,
            Some("unknown token"),
        )),
        Err(error) => Err(error),
    }
}

/// `POST /signout`: ends the browser's session (the cookie is cleared).
pub async fn signout(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, EndpointError> {
    same_origin(&request)?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", "/signin"))
        .insert_header(("Set-Cookie", session_cookie_header(&state, "", 0)))
        .finish())
}

/// `GET /static/dashboard.css`: the pages' only style (no inline style: see the
/// Content-Security-Policy).
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLE)
}

/// Who a dashboard page is for; `None` without a session (or token).
fn page_viewer(state: &AppState, request: &HttpRequest) -> Option<Viewer> {
    state.caller(request).ok().map(|(viewer, _)| viewer)
}

/// The sign-in page (401) for a page asked without a session; it comes back there after.
fn signin_instead(request: &HttpRequest) -> HttpResponse {
    let next = match request.query_string() {
        "" => request.path().to_string(),
        query => format!("{}?{query}", request.path()),
    };
    signin_response(actix_web::http::StatusCode::UNAUTHORIZED, &next, None)
}

// ---------------------------------------------------------------- HTML

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(character),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time_ms(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}\
main{padding:16px 20px}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{border-bottom:1px solid #e2e5ea;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#eef0f4}code,pre{font:12px/1.35 ui-monospace,monospace}pre{background:#fff;border:1px solid #e2e5ea;padding:8px;overflow:auto;max-height:24em}\
.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#dde3ee;font-size:12px}\
.open{background:#fde2e1}.fixed,.closed{background:#dff3e3}.regression{background:#ffd166}\
form.filters{margin-bottom:12px}form.filters label{margin-right:10px}section{margin:18px 0}\
h2{font-size:16px;margin:0 0 6px}.muted{color:#6b7280}.bar{fill:#3b6fd8}\
.row{display:flex;gap:40px}.error{color:#b42318}\
header form{display:inline;float:right}header .who{float:right;margin-right:10px}";

/// A whole page: the header (who is signed in, and the sign-out button) and `body`.
fn page_html(title: &str, body: &str, viewer: Option<&Viewer>) -> String {
    let who = match viewer {
        None => String::new(),
        Some(viewer) => format!(
            "<form method=\"post\" action=\"/signout\"><button type=\"submit\" id=\"signout\">\
             sign out</button></form><span class=\"who\" id=\"viewer\">{}</span>",
            match viewer {
                Viewer::Admin => "admin".to_string(),
                Viewer::Cluster(cluster) => format!("cluster {}", escape(cluster)),
            }
        ),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} — crashmesh</title>\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body><header>\
         <a href=\"/\">crashmesh endpoint</a>{who}</header><main>{body}</main></body></html>",
        escape(title)
    )
}

fn page(title: &str, body: &str, viewer: &Viewer) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page_html(title, body, Some(viewer)))
}

fn bug_badge(bug: Option<&BugRow>) -> String {
    match bug {
        None => "<span class=\"badge\">no bug</span>".into(),
        Some(bug) => {
            let mut text = format!(
                "<span class=\"badge {}\">#{} {}</span>",
                escape(&bug.status),
                bug.id,
                escape(&bug.status)
            );
            if bug.regression {
                text.push_str(" <span class=\"badge regression\">regression</span>");
            }
            text
        }
    }
}

fn select_box(name: &str, current: Option<&str>, options: &[(&str, &str)]) -> String {
    let mut out = format!("<select name=\"{name}\">");
    for (value, label) in options {
        let selected = if current.unwrap_or("") == *value {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{}\"{selected}>{}</option>",
            escape(value),
            escape(label)
        );
    }
    out.push_str("</select>");
    out
}

/// `GET /`: the problems the session sees, filters, sorted by last seen or count.
pub async fn index(
    state: web::Data<AppState>,
    request: HttpRequest,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, EndpointError> {
    let Some(viewer) = page_viewer(&state, &request) else {
        return Ok(signin_instead(&request));
    };
    let problems = select(&state, &viewer, &filter)?;
    let mut body = String::new();
    let kinds: Vec<(&str, &str)> = std::iter::once(("", "any kind"))
        .chain(KINDS.iter().map(|kind| (*kind, *kind)))
        .collect();
    let statuses: Vec<(&str, &str)> = [("", "any status"), ("none", "no bug")]
        .into_iter()
        .chain(BUG_STATUSES.iter().map(|status| (*status, *status)))
        .collect();
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/\">\
         <label>kind {}</label>\
         <label>cluster <input name=\"cluster\" size=\"12\" value=\"{}\"></label>\
         <label>status {}</label>\
         <label>show {}</label>\
         <label>label <input name=\"label\" size=\"14\" placeholder=\"key=value\" value=\"{}\"></label>\
         <label>sort {}</label>\
         <button type=\"submit\">filter</button></form>",
        select_box("kind", given(&filter.kind), &kinds),
        escape(given(&filter.cluster).unwrap_or("")),
        select_box("status", given(&filter.status), &statuses),
        select_box(
            "interesting",
            given(&filter.interesting),
            &[
                ("true", "interesting"),
                ("false", "uninteresting"),
                ("all", "all")
            ]
        ),
        escape(given(&filter.label).unwrap_or("")),
        select_box(
            "sort",
            given(&filter.sort),
            &[("last_seen", "last seen"), ("count", "count")]
        ),
    );
    let _ = write!(
        body,
        "<p class=\"muted\" id=\"problem-count\">{} problem(s)</p>\
         <table id=\"problems\"><thead><tr><th>problem</th><th>kind</th><th>count</th>\
         <th>nodes</th><th>clusters</th><th>first seen</th><th>last seen</th><th>bug</th></tr></thead><tbody>",
        problems.len()
    );
    for (row, bug) in &problems {
        let what = row.crash_function.as_deref().unwrap_or(&row.reason);
        let _ = write!(
            body,
            "<tr class=\"problem\" data-id=\"{id}\"><td><a href=\"/problems/{id}\">{reason}</a><br>\
             <span class=\"muted\"><code>{what}</code>{hidden}</span></td><td>{kind}</td><td>{count}</td>\
             <td>{nodes}</td><td>{clusters}</td><td>{first}</td><td>{last}</td><td>{bug}</td></tr>",
            id = escape(&row.id),
            reason = escape(&row.reason),
            what = escape(what),
            hidden = if row.interesting {
                String::new()
            } else {
                format!(
                    " · uninteresting ({})",
                    escape(row.uninteresting_rule.as_deref().unwrap_or("rule"))
                )
            },
            kind = escape(row.kind.as_str()),
            count = row.count,
            nodes = row.nodes.len(),
            clusters = row.clusters.len(),
            first = format_time_ms(row.first_seen),
            last = format_time_ms(row.last_seen),
            bug = bug_badge(bug.as_ref()),
        );
    }
    body.push_str("</tbody></table>");
    Ok(page("problems", &body, &viewer))
}

const KINDS: &[&str] = &[
    "core",
    "kernel_oops",
    "kernel_warning",
    "kernel_panic",
    "hung_task",
    "soft_lockup",
    "oom_kill",
    "machine_check",
    "lockdep",
    "segfault_hint",
    "python",
    "java",
    "vm_guest_panic",
];

/// Incidents over time as an inline SVG bar chart: hours when the problem spans at most
/// three days, days otherwise.
pub fn chart_svg(hourly: &BTreeMap<u64, u64>) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 140.0;
    let (Some((&first, _)), Some((&last, _))) = (hourly.first_key_value(), hourly.last_key_value())
    else {
        return "<svg id=\"incidents-chart\" width=\"720\" height=\"20\"></svg>".into();
    };
    let (step_hours, label) = if last - first <= 72 {
        (1, "hour")
    } else {
        (24, "day")
    };
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for (hour, count) in hourly {
        *buckets.entry(hour / step_hours).or_insert(0) += count;
    }
    let start = first / step_hours;
    let end = last / step_hours;
    let slots = (end - start + 1) as f64;
    let peak = buckets.values().copied().max().unwrap_or(1).max(1) as f64;
    let bar_width = (WIDTH / slots).max(1.0);
    let mut svg = format!(
        "<svg id=\"incidents-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"incidents per {label}\">\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fff\" stroke=\"#e2e5ea\"/>",
        WIDTH,
        HEIGHT + 20.0,
        WIDTH,
        HEIGHT + 20.0
    );
    for (bucket, count) in &buckets {
        let x = (bucket - start) as f64 * bar_width;
        let height = (*count as f64 / peak) * (HEIGHT - 10.0);
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\">\
             <title>{}: {count}</title></rect>",
            HEIGHT - height,
            (bar_width - 1.0).max(1.0),
            format_time_ms(bucket * step_hours * 3_600_000),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"11\">{}</text>\
         <text x=\"{WIDTH}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{} · peak {} per {label}</text></svg>",
        HEIGHT + 15.0,
        format_time_ms(start * step_hours * 3_600_000),
        HEIGHT + 15.0,
        format_time_ms(end * step_hours * 3_600_000),
        peak
    );
    svg
}

fn frame_row(index: usize, frame: &Frame) -> String {
    let location = match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{}:{line}", escape(file)),
        (Some(file), None) => escape(file),
        _ => String::new(),
    };
    let function = match (&frame.function, frame.offset) {
        (Some(function), Some(offset)) => format!("{}+{offset:#x}", escape(function)),
        (Some(function), None) => escape(function),
        (None, Some(offset)) => format!("?? ({offset:#x} in module)"),
        (None, None) => "??".into(),
    };
    format!(
        "<tr class=\"frame\"><td>#{index}</td><td><code>{}</code></td><td><code>{function}</code>{}</td>\
         <td>{}</td><td>{location}</td></tr>",
        frame
            .address
            .map(|address| format!("{address:#x}"))
            .unwrap_or_default(),
        if frame.reliable {
            ""
        } else {
            " <span class=\"muted\">?</span>"
        },
        escape(frame.module.as_deref().unwrap_or("")),
    )
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items
        .map(|item| format!("<li>{}</li>", escape(&item)))
        .collect();
    if items.is_empty() {
        "<p class=\"muted\">none</p>".into()
    } else {
        format!("<ul>{}</ul>", items.join(""))
    }
}

/// `GET /problems/{id}`: the problem's page, as the session sees it.
pub async fn problem_page(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let Some(viewer) = page_viewer(&state, &request) else {
        return Ok(signin_instead(&request));
    };
    let (row, bug, analysis) = load_problem(&state, &viewer, &path)?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1 id=\"title\">{}</h1><table id=\"summary\">\
         <tr><th>problem</th><td><code>{}</code></td></tr>\
         <tr><th>signature</th><td><code id=\"signature\">{}</code></td></tr>\
         <tr><th>kind</th><td>{}</td></tr><tr><th>executable</th><td>{}</td></tr>\
         <tr><th>incidents</th><td id=\"count\">{}</td></tr>\
         <tr><th>first seen</th><td>{}</td></tr><tr><th>last seen</th><td>{}</td></tr>\
         <tr><th>interesting</th><td>{}</td></tr><tr><th>bug</th><td>{}</td></tr></table>",
        escape(&row.reason),
        escape(&row.id),
        escape(&row.signature),
        escape(row.kind.as_str()),
        escape(row.executable.as_deref().unwrap_or("-")),
        row.count,
        format_time_ms(row.first_seen),
        format_time_ms(row.last_seen),
        match &row.uninteresting_rule {
            None => "yes".to_string(),
            Some(rule) => format!("no — rule {}", escape(rule)),
        },
        bug_badge(bug.as_ref()),
    );
    let _ = write!(
        body,
        "<section><h2>incidents over time</h2>{}</section>",
        chart_svg(&row.hourly)
    );
    body.push_str(
        "<section><h2>backtrace</h2><table id=\"backtrace\"><thead><tr><th></th><th>address</th>\
                   <th>function</th><th>module</th><th>source</th></tr></thead><tbody>",
    );
    if let Some(problem) = &analysis {
        for (index, frame) in problem.frames.iter().enumerate() {
            body.push_str(&frame_row(index, frame));
        }
    }
    body.push_str("</tbody></table>");
    if let Some(text) = analysis.as_ref().and_then(|problem| problem.text.as_ref()) {
        let _ = write!(body, "<pre id=\"problem-text\">{}</pre>", escape(text));
    }
    body.push_str("</section>");
    let _ = write!(
        body,
        "<section class=\"row\"><div><h2>nodes</h2><div id=\"nodes\">{}</div></div>\
         <div><h2>clusters</h2><div id=\"clusters\">{}</div></div><div><h2>versions</h2>{}</div>\
         <div><h2>labels</h2>{}</div></section>",
        list(row.nodes.iter().cloned()),
        list(row.clusters.iter().cloned()),
        list(row.versions.iter().cloned()),
        list(row.labels.iter().cloned()),
    );
    body.push_str(&privacy_section(
        &row.id,
        &privacy_of(&state, &row)?,
        &viewer,
    ));
    // The bug and its form.
    body.push_str("<section id=\"bug\"><h2>bug</h2>");
    match &bug {
        None => body.push_str("<p class=\"muted\">no bug (uninteresting problems get none)</p>"),
        Some(bug) => {
            let _ = write!(
                body,
                "<p>{} opened {}{}</p><p><b>workaround:</b> <span id=\"workaround\">{}</span></p>",
                bug_badge(Some(bug)),
                format_time_ms(bug.created_ms),
                if bug.regression {
                    " — reopened as a regression"
                } else {
                    ""
                },
                escape(bug.workaround.as_deref().unwrap_or("none yet")),
            );
            if viewer.is_admin() {
                let statuses: Vec<(&str, &str)> = BUG_STATUSES
                    .iter()
                    .map(|status| (*status, *status))
                    .collect();
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/problems/{}/bug\" id=\"bug-form\"><label>status {}</label> \
                     <label>workaround <input name=\"workaround\" size=\"50\" value=\"{}\"></label> \
                     <button type=\"submit\">save</button></form>",
                    escape(&row.id),
                    select_box("status", Some(&bug.status), &statuses),
                    escape(bug.workaround.as_deref().unwrap_or("")),
                );
            }
            body.push_str("<h2>comments</h2><table id=\"comments\">");
            let comments = state
                .db
                .bug_view_for(&viewer, bug.id, 100)?
                .map(|view| view.comments)
                .unwrap_or_default();
            for comment in comments.iter().rev() {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    format_time_ms(comment.time_ms),
                    escape(&comment.author),
                    escape(&comment.text)
                );
            }
            body.push_str("</table>");
        }
    }
    body.push_str("</section>");
    // Incidents.
    body.push_str("<section><h2>latest incidents</h2><table id=\"incidents\"><tr><th>time</th><th>cluster</th>\
                   <th>node</th><th>version</th><th>report</th><th>labels</th></tr>");
    for incident in row.recent.iter().rev().take(50) {
        let labels: Vec<String> = incident
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            format_time_ms(incident.time_ms),
            escape(&incident.cluster),
            escape(&incident.node),
            escape(incident.version.as_deref().unwrap_or("-")),
            escape(&incident.report_id),
            escape(&labels.join(" ")),
        );
    }
    body.push_str("</table></section>");
    // Correlated logs and other attachments.
    body.push_str("<section id=\"attachments\"><h2>correlated logs and attachments</h2>");
    let attachments = attachments_of(&state, &row)?;
    if attachments.is_empty() {
        body.push_str("<p class=\"muted\">none</p>");
    }
    let mut previews = 0;
    for (report_id, name, len_bytes) in &attachments {
        let _ = write!(
            body,
            "<p><a href=\"/reports/{}/attachments/{}\">{}</a> <span class=\"muted\">{} bytes</span></p>",
            escape(report_id),
            escape(name),
            escape(name),
            len_bytes
        );
        if previews < PREVIEWS_MAX
            && *len_bytes <= ATTACHMENT_SERVED_BYTES_MAX
            && let Some(report) = state.db.report(report_id)?
            && let Some(attachment) = report.manifest.attachments.iter().find(|a| &a.name == name)
        {
            previews += 1;
            match state
                .blobs
                .read_blob(&attachment.blob, ATTACHMENT_SERVED_BYTES_MAX)
                .await
            {
                Ok(bytes) => {
                    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES_MAX)];
                    let _ = write!(
                        body,
                        "<pre class=\"log\">{}</pre>",
                        escape(&String::from_utf8_lossy(shown))
                    );
                }
                Err(error) => {
                    let _ = write!(
                        body,
                        "<p class=\"muted\">unreadable: {}</p>",
                        escape(&error.to_string())
                    );
                }
            }
        }
    }
    body.push_str("</section>");
    Ok(page(&row.reason, &body, &viewer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_escaping() {
        assert_eq!(format_time_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_time_ms(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn chart_has_one_bar_per_bucket() {
        let hourly = BTreeMap::from([(100, 2), (101, 5), (103, 1)]);
        let svg = chart_svg(&hourly);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert!(svg.starts_with("<svg id=\"incidents-chart\""));
    }
}
