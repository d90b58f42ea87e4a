//! Admin HTTP API (`/api/v1/devices`, bearer token), health, readiness and
//! metrics endpoints. The client the CLI and firmware-sim use, and the
//! request and answer types, are the `sealgate-client` crate, so
//! firmware-sim links none of the server.

pub use sealgate_client as client;
mod error;
mod handlers;
mod serve;
mod tenancy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::envelope::MasterKey;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::verifier::Input;
pub use error::ApiFailure;
pub use serve::{serve, serve_with, BodyTimedOut, ServeLimits, ServeOptions};

/// What the handlers share.
pub struct AdminState {
    pub registry: Registry,
    pub master: MasterKey,
    /// Seals imported legacy keys before they reach the registry.
    pub vault: crate::registry::vault::Vault,
    pub tenants: crate::tenants::Tenants,
    pub accounts: crate::accounts::Accounts,
    /// Persistent sessions: a deleted account's are ended with it.
    pub sessions: Arc<crate::sessions::Sessions>,
    pub claims: Arc<crate::claims::Claims>,
    pub metrics: Arc<Metrics>,
    /// False once the replay store failed: `/readyz` answers 503.
    pub store_ok: Arc<AtomicBool>,
    /// A dead router, verifier, commit or checkpoint thread: `/readyz` answers 503.
    pub health: Arc<crate::health::Health>,
    pub stopping: CancellationToken,
    /// Read-only view of the persisted windows, for `show` and `list`.
    pub windows: crate::journal::Windows,
    /// Window resets go through the verifier so they are ordered with messages.
    pub verifier: mpsc::Sender<Input>,
    /// SHA-256 of the admin token: compared in constant time, any length.
    pub token_digest: [u8; 32],
    pub rotation_grace_ms: u64,
    /// Each API key's request budget (`http.key_rate`), by principal.
    pub key_rates: std::sync::Mutex<
        std::collections::HashMap<Principal, crate::front_door::limits::RateLimit>,
    >,
    pub key_rate: f64,
    pub cors_origins: Vec<String>,
    /// Tells the front door to close the open sessions of a revoked device
    /// or a deleted account.
    pub revoked: tokio::sync::broadcast::Sender<String>,
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who a request acts for, from its bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The admin token: every device, tenants, assignment.
    Operator,
    /// A tenant's API key: that tenant's devices only.
    Tenant(String),
}

impl Principal {
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Operator => None,
            Principal::Tenant(t) => Some(t),
        }
    }

    pub fn scope(&self) -> crate::registry::Scope<'_> {
        match self {
            Principal::Operator => crate::registry::Scope::All,
            Principal::Tenant(t) => crate::registry::Scope::Tenant(t),
        }
    }

    pub fn require_operator(&self) -> Result<(), ApiFailure> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Tenant(_) => Err(ApiFailure::operator_only()),
        }
    }
}

/// The whole HTTP surface. Testable without a socket.
pub fn router(state: Arc<AdminState>) -> Router {
    let (router, _) = router_and_spec(state);
    router
}

/// The bearer scheme every operation but the device claim uses.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token (operator) or a tenant's API key"))
                    .build(),
            ),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sealgate admin API",
        description = "Devices, tenants, claims and dashboard accounts of a sealgate gateway (docs/api.md)."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The HTTP surface and its OpenAPI document, made from the same route
/// registrations (each handler's `#[utoipa::path]`), so the document cannot
/// list a route the router does not have, or miss one it has.
pub fn router_and_spec(state: Arc<AdminState>) -> (Router, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let api = OpenApiRouter::new()
        .routes(routes!(handlers::add, handlers::list))
        .routes(routes!(handlers::add_bulk))
        .routes(routes!(handlers::show, handlers::rename))
        .routes(routes!(handlers::revoke))
        .routes(routes!(handlers::rotate))
        .routes(routes!(handlers::reset_nonce))
        .routes(routes!(handlers::migrate))
        .routes(routes!(tenancy::assign))
        .routes(routes!(tenancy::release))
        .routes(routes!(tenancy::claim_with_code))
        .routes(routes!(tenancy::add_tenant, tenancy::list_tenants))
        .routes(routes!(tenancy::rotate_tenant_key))
        .routes(routes!(tenancy::pairing_code))
        .routes(routes!(tenancy::add_user, tenancy::list_users))
        .routes(routes!(tenancy::remove_user))
        .fallback(|| async { ApiFailure::NotFound("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    // The device proves itself with its claim MAC: no bearer token.
    let open = OpenApiRouter::new().routes(routes!(tenancy::claim));
    let (api_router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", open.merge(api))
        .split_for_parts();
    let document = spec.clone();
    let cors = cors_layer(&state.cors_origins);
    let router = Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let d = document.clone();
                async move { Json(d) }
            }),
        )
        .merge(api_router.with_state(state.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(cors);
    (router, spec)
}

/// CORS for browser consoles: the configured origins may call the API with
/// an `Authorization` header; no origin configured, no CORS headers.
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let base = CorsLayer::new()
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PATCH,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER]);
    if origins.iter().any(|o| o == "*") {
        return base.allow_origin(AllowOrigin::any());
    }
    let list: Vec<axum::http::HeaderValue> = origins
        .iter()
        .filter_map(|o| axum::http::HeaderValue::from_str(o).ok())
        .collect();
    base.allow_origin(AllowOrigin::list(list))
}

/// Resolves the bearer token to a [`Principal`] for the handlers, or 401.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let who = match presented {
        Some(t) if bool::from(digest(t).ct_eq(&state.token_digest)) => Principal::Operator,
        Some(t) => match state.tenants.authenticate(t) {
            Some(name) => Principal::Tenant(name),
            None => return ApiFailure::Unauthorized.into_response(),
        },
        None => return ApiFailure::Unauthorized.into_response(),
    };
    if let Some(wait) = over_rate(&state, &who) {
        return ApiFailure::TooManyRequests {
            retry_after_secs: wait,
        }
        .into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// Seconds to wait when `who` is over its request rate.
fn over_rate(state: &AdminState, who: &Principal) -> Option<u64> {
    let now = std::time::Instant::now();
    let mut rates = state.key_rates.lock().unwrap_or_else(|e| e.into_inner());
    let burst = (state.key_rate * 2.0)
        .ceil()
        .clamp(1.0, f64::from(u32::MAX)) as u32;
    let bucket = rates
        .entry(who.clone())
        .or_insert_with(|| crate::front_door::limits::RateLimit::new(state.key_rate, burst, now));
    match bucket.check(now) {
        crate::front_door::limits::Verdict::Admit => None,
        crate::front_door::limits::Verdict::Over { .. } => {
            Some((1.0 / state.key_rate).ceil().max(1.0) as u64)
        }
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.stopping.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
    } else if !state.health.ok() {
        (StatusCode::SERVICE_UNAVAILABLE, "thread_died\n").into_response()
    } else if !state.store_ok.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let (active, revoked) = state.registry.count_by_state();
    state.metrics.set_devices(active, revoked);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
