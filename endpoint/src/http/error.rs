//! How an [`EndpointError`] is answered over HTTP: its status, a JSON body
//! `{"error", "code"}`, and `Retry-After` where trying again later helps.

use actix_web::http::StatusCode;

use crate::error::EndpointError;

impl EndpointError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            EndpointError::Unauthorized => StatusCode::UNAUTHORIZED,
            EndpointError::WrongCluster { .. } => StatusCode::FORBIDDEN,
            EndpointError::BadRequest(_) | EndpointError::BadChunk { .. } => {
                StatusCode::BAD_REQUEST
            }
            EndpointError::InvalidReport(error) if error.is_limit() => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            EndpointError::InvalidReport(_) => StatusCode::BAD_REQUEST,
            EndpointError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EndpointError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            EndpointError::StaleTerm { .. }
            | EndpointError::Conflict(_)
            | EndpointError::ForeignReport { .. }
            | EndpointError::TermTooFar { .. }
            | EndpointError::Exists { .. } => StatusCode::CONFLICT,
            EndpointError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            EndpointError::Forbidden(_) => StatusCode::FORBIDDEN,
            EndpointError::NotFound(_) => StatusCode::NOT_FOUND,
            EndpointError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            EndpointError::InUse { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EndpointError::Config(_)
            | EndpointError::Database(_)
            | EndpointError::Io { .. }
            | EndpointError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl actix_web::ResponseError for EndpointError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut response = actix_web::HttpResponse::build(self.status());
        match self {
            EndpointError::TooMany(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            EndpointError::Storage(_) => {
                response.insert_header(("Retry-After", "10"));
            }
            // The rest of a body that did not arrive in time is not waited for.
            EndpointError::BodyTimeout { .. } => {
                response.force_close();
            }
            _ => {}
        }
        response.json(serde_json::json!({ "error": self.to_string(), "code": self.code() }))
    }
}
