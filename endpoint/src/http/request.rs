//! What a request's headers say, read before anything of its body: its bearer token, its
//! session cookie, its announced length, whether a form comes from the dashboard's own
//! pages; and the ids in its path.
//!
//! Invariant: nothing here reads a body or the server's state; these are the checks a
//! handler makes first.

use actix_web::HttpRequest;
use crashmesh_protocol::report::is_hex_id;

use crate::error::EndpointError;
use crate::http::auth;

/// Who a body's bytes are counted against in the body budget
/// ([`crate::http::inflight::BodyBudget`]): a cluster, or (the admin's requests and the
/// sign-in form) nobody's in particular.
pub(crate) const NO_CLUSTER: &str = "";

/// Body bytes of the small admin requests (a token, a bug change, a core request, forms).
pub(crate) const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

/// The token of the request's `Authorization: Bearer …` header, if it has one.
pub(crate) fn bearer(request: &HttpRequest) -> Option<&str> {
    auth::bearer(
        request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok()),
    )
}

/// The dashboard session cookie's value, if the request has one.
pub(crate) fn session_cookie(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(auth::SESSION_COOKIE)?
                .strip_prefix('=')
        })
}

/// The body's length as the request announces it.
pub(crate) fn content_length(request: &HttpRequest) -> Option<u64> {
    request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
}

/// Refuses a form whose page is not one of the server's own: `Sec-Fetch-Site` must say
/// `same-origin`, or (a browser without it) `Origin` must name the host asked. With the
/// session cookie's `SameSite=Strict`, a page of another site can make the browser neither
/// send the session nor pass this check.
pub(crate) fn same_origin(request: &HttpRequest) -> Result<(), EndpointError> {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if site == "same-origin" {
            return Ok(());
        }
        return Err(EndpointError::Forbidden(format!(
            "a form posted from another site (Sec-Fetch-Site: {site})"
        )));
    }
    let Some(origin) = header("origin") else {
        return Err(EndpointError::Forbidden(
            "a form posted without Origin or Sec-Fetch-Site".into(),
        ));
    };
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (origin_host, header("host")) {
        (Some(origin_host), Some(host)) if origin_host == host => Ok(()),
        _ => Err(EndpointError::Forbidden(format!(
            "a form posted from another site (Origin: {origin})"
        ))),
    }
}

/// A report id from a path: 64 lower-case hex digits.
pub(crate) fn report_id_of(path: &str) -> Result<String, EndpointError> {
    if !is_hex_id(path) {
        return Err(EndpointError::BadRequest(format!(
            "report id {path:?} is not 64 lower-case hex digits"
        )));
    }
    Ok(path.to_string())
}

/// A JSON body as `T`, or 400.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, EndpointError> {
    serde_json::from_slice(body)
        .map_err(|error| EndpointError::BadRequest(format!("{what} is not valid JSON: {error}")))
}
