//! Every route of the endpoint, and the headers every answer carries. This is the table
//! of contents of the HTTP layer: each path names the handler that answers it.

use actix_web::dev::Service;
use actix_web::{HttpResponse, web};
use crashmesh_protocol::report::UploadReply;

use crate::error::EndpointError;
use crate::http::Limits;
use crate::http::state::AppState;
use crate::http::{api, forms, html, upload};
use crate::recording::metrics::Metrics;

/// The headers every answer carries: no sniffing of a served attachment into HTML, no
/// script at all and styles from the server's own stylesheet only (the dashboard has no
/// script and no inline style), forms posted to the server alone, never framed, no
/// referrer leaving with a link, nothing of it cached.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Adds [`SECURITY_HEADERS`] to an answer.
fn security_headers(headers: &mut actix_web::http::header::HeaderMap) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

/// The endpoint's routes. Every handler that takes a body reads it itself, after its
/// token check (`state::read_body`): no route has a body extractor.
pub fn routes(config: &mut web::ServiceConfig, state: web::Data<AppState>) {
    let metrics = state.metrics.clone();
    config.app_data(state).service(
        web::scope("")
            .wrap_fn(move |request, service| {
                let metrics = metrics.clone();
                let response = service.call(request);
                async move {
                    let mut response = response.await?;
                    let status = response.status();
                    if status.is_client_error() || status.is_server_error() {
                        Metrics::add(&metrics.requests_refused, 1);
                        let code = response
                            .response()
                            .error()
                            .and_then(|error| error.as_error::<EndpointError>())
                            .map_or(
                                if status.is_client_error() {
                                    "other_client"
                                } else {
                                    "other_server"
                                },
                                EndpointError::code,
                            );
                        metrics.refused(code);
                    }
                    security_headers(response.headers_mut());
                    Ok(response)
                }
            })
            // Chunks first: the most frequent request, matched before the patterns above
            // it would be tried.
            .service(
                web::resource("/api/v1/chunks/{id}")
                    .route(web::put().to(upload::put_chunk))
                    .route(web::get().to(api::get_chunk)),
            )
            .service(web::resource("/api/v1/reports").route(web::post().to(upload::post_report)))
            .service(
                web::resource("/api/v1/reports/{id}/complete")
                    .route(web::post().to(upload::complete_report)),
            )
            .service(web::resource("/api/v1/reports/{id}").route(web::get().to(api::get_report)))
            .service(
                web::resource("/api/v1/incidents").route(web::post().to(upload::post_incidents)),
            )
            .service(web::resource("/api/v1/problems").route(web::get().to(api::api_problems)))
            .service(web::resource("/api/v1/problems/{id}").route(web::get().to(api::api_problem)))
            .service(
                web::resource("/api/v1/problems/{id}/merge").route(web::post().to(api::api_merge)),
            )
            .service(
                web::resource("/api/v1/problems/{id}/core-request")
                    .route(web::post().to(api::api_core_request)),
            )
            .service(
                web::resource("/api/v1/bugs/{id}")
                    .route(web::get().to(api::api_bug))
                    .route(web::post().to(api::api_set_bug)),
            )
            .service(web::resource("/api/v1/tokens").route(web::post().to(api::post_token)))
            .service(web::resource("/metrics").route(web::get().to(api::metrics_text)))
            .service(web::resource("/healthz").route(web::get().to(|| async { "ok\n" })))
            .service(web::resource("/static/dashboard.css").route(web::get().to(html::stylesheet)))
            .service(
                web::resource("/signin")
                    .route(web::get().to(html::signin_page))
                    .route(web::post().to(forms::signin)),
            )
            .service(web::resource("/signout").route(web::post().to(forms::signout)))
            .service(web::resource("/").route(web::get().to(html::index)))
            .service(web::resource("/problems/{id}").route(web::get().to(html::problem_page)))
            .service(
                web::resource("/problems/{id}/core-request")
                    .route(web::post().to(forms::form_core_request)),
            )
            .service(web::resource("/problems/{id}/bug").route(web::post().to(forms::form_set_bug)))
            .service(web::resource("/problems/{id}/merge").route(web::post().to(forms::form_merge)))
            .service(
                web::resource("/reports/{report}/attachments/{name:.*}")
                    .route(web::get().to(api::attachment)),
            ),
    );
}

pub fn null_routes(config: &mut web::ServiceConfig, limits: &Limits) {
    async fn read_and_answer(body: web::Bytes) -> HttpResponse {
        let reply = UploadReply {
            problem_id: "0000000000000000".into(),
            known: false,
            bug: None,
            workaround: None,
            missing_chunks: Vec::new(),
        };
        std::hint::black_box(&body);
        HttpResponse::Ok().json(reply)
    }
    async fn read_chunk(body: web::Bytes) -> HttpResponse {
        std::hint::black_box(&body);
        HttpResponse::NoContent().finish()
    }
    config
        .service(
            web::resource("/api/v1/reports")
                .app_data(web::PayloadConfig::new(limits.manifest_bytes_max))
                .route(web::post().to(read_and_answer)),
        )
        .service(
            web::resource("/api/v1/reports/{id}/complete").route(web::post().to(read_and_answer)),
        )
        .service(
            web::resource("/api/v1/chunks/{id}")
                .app_data(web::PayloadConfig::new(limits.chunk_body_bytes_max))
                .route(web::put().to(read_chunk)),
        )
        .service(
            web::resource("/api/v1/incidents")
                .app_data(web::PayloadConfig::new(limits.update_bytes_max))
                .route(web::post().to(read_and_answer)),
        )
        .service(web::resource("/healthz").route(web::get().to(|| async { "ok (null)\n" })));
}
