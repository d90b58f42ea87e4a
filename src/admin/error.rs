//! Admin API failures: each maps to one status and one stable code, the same
//! scheme on every endpoint: 400 bad input, 401 missing or unknown key, 403
//! an action this key may not take, 404 not yours or not there, 409 a
//! conflict with the current state, 429 slow down, 503 the store cannot be
//! written. Inner error text (sled, serde) is logged, never echoed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::client::ApiError;
use crate::accounts::AccountError;
use crate::claims::PairingError;
use crate::registry::RegistryError;
use crate::tenants::TenantError;

#[derive(Debug)]
pub enum ApiFailure {
    BadRequest(String),
    /// An `add-bulk` count or prefix past its bounds.
    BulkOutOfRange(String),
    Unauthorized,
    /// 401 on the claim endpoint, which takes no bearer token: the claim
    /// MAC does not check.
    BadClaimMac,
    /// 403: `code` says which rule (`operator_only`, `tenant_only`,
    /// `bad_claim_code`, `pairing_code_invalid`).
    Forbidden {
        code: &'static str,
        message: &'static str,
    },
    NotFound(&'static str),
    /// 409 with the generic code `conflict`.
    Conflict(&'static str),
    /// 409 with its own code (`label_taken`, `owned_by_another_tenant`,
    /// `replay_conflict`, `name_taken`, `revoked`).
    ConflictCode {
        code: &'static str,
        message: &'static str,
    },
    TooManyRequests {
        retry_after_secs: u64,
    },
    Unavailable,
}

impl ApiFailure {
    pub fn operator_only() -> ApiFailure {
        ApiFailure::Forbidden {
            code: "operator_only",
            message: "only the operator's admin token may do this",
        }
    }

    /// Status and body, for answers that must be stored and repeated
    /// exactly (idempotent claims).
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiFailure::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiFailure::BulkOutOfRange(m) => {
                (StatusCode::BAD_REQUEST, "bulk_out_of_range", m.clone())
            }
            ApiFailure::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token".to_owned(),
            ),
            ApiFailure::BadClaimMac => (
                StatusCode::UNAUTHORIZED,
                "bad_mac",
                "the claim MAC does not check".to_owned(),
            ),
            ApiFailure::Forbidden { code, message } => {
                (StatusCode::FORBIDDEN, code, (*message).to_owned())
            }
            ApiFailure::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", (*m).to_owned()),
            ApiFailure::Conflict(m) => (StatusCode::CONFLICT, "conflict", (*m).to_owned()),
            ApiFailure::ConflictCode { code, message } => {
                (StatusCode::CONFLICT, code, (*message).to_owned())
            }
            ApiFailure::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the time in Retry-After".to_owned(),
            ),
            ApiFailure::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database cannot be written; see the gateway log".to_owned(),
            ),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let mut r = (
            status,
            Json(ApiError {
                error: code.to_owned(),
                message,
            }),
        )
            .into_response();
        if let ApiFailure::TooManyRequests { retry_after_secs } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
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
            RegistryError::LabelTaken => ApiFailure::ConflictCode {
                code: "label_taken",
                message: "the tenant already has a device with this label",
            },
            RegistryError::SharedKeys => ApiFailure::ConflictCode {
                code: "shared_keys",
                message: "the device shares its legacy keys with a device another tenant owns",
            },
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

impl From<TenantError> for ApiFailure {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::InvalidName => ApiFailure::BadRequest(e.to_string()),
            TenantError::Exists => ApiFailure::Conflict("tenant already exists"),
            TenantError::NotFound => ApiFailure::NotFound("no such tenant"),
            TenantError::Store(inner) => {
                tracing::error!(error = %inner, "Tenant store write failed.");
                ApiFailure::Unavailable
            }
        }
    }
}

impl From<AccountError> for ApiFailure {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidName => ApiFailure::BadRequest(e.to_string()),
            AccountError::Taken => ApiFailure::ConflictCode {
                code: "name_taken",
                message: "the name is taken by a device or another account",
            },
            AccountError::NotFound => ApiFailure::NotFound("no such account"),
            AccountError::TooMany => ApiFailure::ConflictCode {
                code: "too_many",
                message: "the tenant has the most accounts allowed (100)",
            },
            AccountError::Store(inner) => {
                tracing::error!(error = %inner, "Account store write failed.");
                ApiFailure::Unavailable
            }
        }
    }
}

impl From<PairingError> for ApiFailure {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::Invalid => ApiFailure::BadRequest(
                "pairing_code must be 4 to 64 bytes without control characters".into(),
            ),
            PairingError::Taken => ApiFailure::ConflictCode {
                code: "pairing_code_taken",
                message: "this pairing code exists already",
            },
            PairingError::TooMany => ApiFailure::ConflictCode {
                code: "too_many",
                message: "the tenant holds the most unused pairing codes allowed (1000)",
            },
            PairingError::Store(inner) => {
                tracing::error!(error = %inner, "Pairing code store failed.");
                ApiFailure::Unavailable
            }
        }
    }
}
