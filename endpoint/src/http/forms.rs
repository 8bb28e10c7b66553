//! The dashboard's forms: a bug's status and workaround, a core request, sign-in and
//! sign-out. Each answers with a redirect back to the page (or the sign-in page again).
//!
//! Invariants: a form that writes is accepted from the admin alone, by bearer token (which
//! no other site can make a browser send) or by session and a request from the
//! dashboard's own page (`request::same_origin`); sign-in and sign-out take
//! the same origin check, so another site cannot sign a browser into a cluster of its
//! choosing; the session cookie holds no token ([`crate::http::auth`]) and is
//! `HttpOnly`, `SameSite=Strict`, and `Secure` over TLS; signing in never sends the
//! browser to another site (`html::local_path`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::error::EndpointError;
use crate::http::api::{BugChange, load_problem, set_bug, set_core_request};
use crate::http::auth::{SESSION_COOKIE, SESSION_SECS_MAX};
use crate::http::html::{local_path, signin_response};
use crate::http::request::{NO_CLUSTER, SMALL_BODY_BYTES_MAX, same_origin};
use crate::http::state::{AppState, read_body};
use crate::storage::db::Viewer;
use crate::time::now_secs;

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
        NO_CLUSTER,
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

/// The similar problems' merge button.
#[derive(Debug, Deserialize)]
pub struct MergeForm {
    /// The problem that joins the page's.
    pub from: String,
}

/// `POST /problems/{id}/merge` (the admin, as for the bug form): problem `from` joins the
/// page's problem → back to the page.
pub async fn form_merge(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    state.admin_form(&request)?;
    let form: MergeForm = read_form(&state, &request, payload).await?;
    let into = crate::http::api::merge_problems(&state, &form.from, &path).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("/problems/{into}")))
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
    let problem_id = set_core_request(&state, &path, form.requested == "yes").await?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("/problems/{problem_id}#privacy")))
        .finish())
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    pub token: String,
    /// The dashboard page to go back to.
    #[serde(default)]
    pub next: String,
}

/// The session cookie's header: `value` for `max_age_secs` (0 ends it).
fn session_cookie_header(state: &AppState, value: &str, max_age_secs: u64) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        SESSION_COOKIE,
        if state.secure_cookies { "; Secure" } else { "" }
    )
}

/// `POST /signin`: a token pasted in the form becomes a session cookie (see
/// [`crate::http::auth`]); from the dashboard's own page only.
pub async fn signin(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    same_origin(&request)?;
    let form: SignInForm = read_form(&state, &request, payload).await?;
    match state.auth.new_session(form.token.trim(), now_secs()) {
        Ok(session) => Ok(HttpResponse::SeeOther()
            .insert_header(("Location", local_path(&form.next)))
            .insert_header((
                "Set-Cookie",
                session_cookie_header(&state, &session, SESSION_SECS_MAX),
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
