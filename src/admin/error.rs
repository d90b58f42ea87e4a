//! Admin API failures: each maps to one status and one stable code. Inner
//! error text (sled, serde) is logged, never echoed to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::client::ApiError;
use crate::registry::RegistryError;

#[derive(Debug)]
pub enum ApiFailure {
    BadRequest(String),
    /// An `add-bulk` count or prefix past its bounds.
    BulkOutOfRange(String),
    Unauthorized,
    NotFound(&'static str),
    Conflict(&'static str),
    Unavailable,
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiFailure::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiFailure::BulkOutOfRange(m) => (StatusCode::BAD_REQUEST, "bulk_out_of_range", m),
            ApiFailure::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token".to_owned(),
            ),
            ApiFailure::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.to_owned()),
            ApiFailure::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.to_owned()),
            ApiFailure::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database cannot be written; see the gateway log".to_owned(),
            ),
        };
        (
            status,
            Json(ApiError {
                error: code.to_owned(),
                message,
            }),
        )
            .into_response()
    }
}

impl From<RegistryError> for ApiFailure {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::InvalidId(m) => {
                ApiFailure::BadRequest(format!("invalid device id: {m}"))
            }
            RegistryError::LabelTooLong => ApiFailure::BadRequest(e.to_string()),
            RegistryError::Exists => ApiFailure::Conflict("device already exists"),
            RegistryError::NotFound => ApiFailure::NotFound("no such device"),
            RegistryError::Revoked => ApiFailure::Conflict("device is revoked"),
            RegistryError::NotLegacy => ApiFailure::Conflict("device is not on the legacy profile"),
            RegistryError::Reserved => {
                ApiFailure::Conflict("device id is taken by a subscriber account")
            }
            RegistryError::Store(inner) => {
                tracing::error!(error = %inner, "Registry write failed.");
                ApiFailure::Unavailable
            }
        }
    }
}
