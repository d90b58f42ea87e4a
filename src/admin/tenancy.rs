//! Tenants and ownership: the operator's tenant endpoints, assigning and
//! releasing devices, pairing codes, and both kinds of claim (spec section
//! 10). The device-initiated claim is the one endpoint without a bearer
//! token: the device proves itself with its claim MAC.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{
    ApiError, Claimed, DeviceView, PairingCode, TenantKey, TenantList, UserAccount, UserList,
};
use super::handlers::{body, view};
use super::{AdminState, ApiFailure, Principal};
use crate::claims::{Answer, ClaimError};
use crate::{now_ms, rfc3339_ms};

type ApiResult<T> = Result<T, ApiFailure>;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    name: String,
}

/// Operator only. The answer carries the API key, once.
#[utoipa::path(post, path = "/tenants", tag = "tenants", request_body = TenantBody, responses((status = 201, body = TenantKey), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn add_tenant(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    who.require_operator()?;
    let b: TenantBody = body(&raw)?;
    let (t, key) = state.tenants.add(&b.name, now_ms())?;
    tracing::info!(tenant = %t.name, "Tenant created.");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": t.name,
            "api_key": key.0,
            "created_at": rfc3339_ms(t.created_at_ms),
        })),
    ))
}

#[utoipa::path(get, path = "/tenants", tag = "tenants", responses((status = 200, body = TenantList), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError)), security(("bearer" = [])))]
pub async fn list_tenants(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    who.require_operator()?;
    let devices = state.registry.list();
    let tenants: Vec<Value> = state
        .tenants
        .list()
        .into_iter()
        .map(|t| {
            let owned = devices
                .iter()
                .filter(|d| d.owner.as_deref() == Some(t.name.as_str()))
                .count();
            json!({
                "name": t.name,
                "created_at": rfc3339_ms(t.created_at_ms),
                "key_rotated_at": t.key_rotated_at_ms.map(rfc3339_ms),
                "devices": owned,
            })
        })
        .collect();
    Ok(Json(json!({ "tenants": tenants })))
}

/// Operator only. The old key stops working at once.
#[utoipa::path(post, path = "/tenants/{name}/rotate-key", tag = "tenants", params(("name" = String, Path, description = "tenant or account name")), responses((status = 200, body = TenantKey), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn rotate_tenant_key(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require_operator()?;
    let (t, key) = state.tenants.rotate_key(&name, now_ms())?;
    tracing::warn!(tenant = %t.name, "Tenant key rotated.");
    Ok(Json(json!({ "name": t.name, "api_key": key.0 })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    tenant: String,
}

/// Operator only: gives a device to a tenant.
#[utoipa::path(post, path = "/devices/{id}/assign", tag = "devices", params(("id" = String, Path, description = "device id")), request_body = AssignBody, responses((status = 200, body = DeviceView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn assign(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult<Json<DeviceView>> {
    who.require_operator()?;
    let b: AssignBody = body(&raw)?;
    if !state.tenants.exists(&b.tenant) {
        return Err(ApiFailure::NotFound("no such tenant"));
    }
    let d = state.registry.set_owner(&id, Some(&b.tenant), now_ms())?;
    tracing::info!(device = %crate::claims::mask(&d.device_id), tenant = %b.tenant, "Device assigned.");
    Ok(Json(view(&state, d)))
}

/// Operator only: takes a device from its owner.
#[utoipa::path(post, path = "/devices/{id}/release", tag = "devices", params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn release(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    who.require_operator()?;
    let d = state.registry.set_owner(&id, None, now_ms())?;
    tracing::info!(device = %crate::claims::mask(&d.device_id), "Device released.");
    Ok(Json(view(&state, d)))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingBody {
    /// For the operator, which tenant the code is for; a tenant's own code
    /// is always for itself.
    #[serde(default)]
    tenant: Option<String>,
    /// A code of the tenant's choosing, instead of a random one.
    #[serde(default)]
    pairing_code: Option<String>,
}

#[utoipa::path(post, path = "/pairing-codes", tag = "claims", request_body = PairingBody, responses((status = 201, body = PairingCode), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn pairing_code(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: PairingBody = if raw.is_empty() {
        PairingBody::default()
    } else {
        body(&raw)?
    };
    let tenant = tenant_for(&state, &who, b.tenant)?;
    let claims = state.claims.clone();
    let t = tenant.clone();
    let chosen = b.pairing_code;
    let made = tokio::task::spawn_blocking(move || {
        claims.new_pairing_code(&t, chosen.as_deref(), now_ms())
    })
    .await
    .map_err(|_| ApiFailure::Unavailable)?;
    let (code, expires) = made?;
    tracing::info!(tenant = %tenant, "Pairing code issued.");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "pairing_code": code,
            "tenant": tenant,
            "expires_at": rfc3339_ms(expires),
        })),
    ))
}

fn answer(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], a.body).into_response()
}

fn claim_failure(e: ClaimError) -> Response {
    match e {
        ClaimError::BadRequest(m) => ApiFailure::BadRequest(m.into()).into_response(),
        ClaimError::BadMac => ApiFailure::BadClaimMac.into_response(),
        ClaimError::RateLimited(d) => ApiFailure::TooManyRequests {
            retry_after_secs: d.as_secs().max(1),
        }
        .into_response(),
        ClaimError::Unavailable => ApiFailure::Unavailable.into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    device_id: String,
    pairing_code: String,
    nonce: u64,
    mac: String,
}

/// The device-initiated claim. No bearer token: the MAC is the credential.
#[utoipa::path(post, path = "/claim", tag = "claims", request_body = ClaimBody, responses((status = 200, body = Claimed), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)), security(()))]
pub async fn claim(State(state): State<Arc<AdminState>>, raw: Bytes) -> Response {
    let b: ClaimBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    decide(&state, move |claims| {
        claims.claim(&b.device_id, &b.pairing_code, b.nonce, &b.mac, now_ms())
    })
    .await
}

/// Runs a claim decision (sled I/O) off the async workers and answers it.
async fn decide(
    state: &AdminState,
    f: impl FnOnce(&crate::claims::Claims) -> Result<Answer, ClaimError> + Send + 'static,
) -> Response {
    let claims = state.claims.clone();
    match tokio::task::spawn_blocking(move || f(&claims)).await {
        Ok(Ok(a)) => answer(a),
        Ok(Err(e)) => claim_failure(e),
        Err(_) => ApiFailure::Unavailable.into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimCodeBody {
    claim_code: String,
}

/// A tenant claims a device with the code printed on it.
#[utoipa::path(post, path = "/devices/{id}/claim", tag = "claims", params(("id" = String, Path, description = "device id")), request_body = ClaimCodeBody, responses((status = 200, body = Claimed), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn claim_with_code(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Response {
    let Principal::Tenant(tenant) = who else {
        return ApiFailure::Forbidden {
            code: "tenant_only",
            message: "claims are made with a tenant's key; the operator assigns",
        }
        .into_response();
    };
    let b: ClaimCodeBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    decide(&state, move |claims| {
        claims.claim_with_code(&tenant, &id, &b.claim_code, now_ms())
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    name: String,
    /// The operator names the tenant; a tenant's accounts are its own.
    #[serde(default)]
    tenant: Option<String>,
}

/// The tenant an account or pairing-code request is for: a tenant's own, or
/// the one the operator names (which must exist).
fn tenant_for(state: &AdminState, who: &Principal, named: Option<String>) -> ApiResult<String> {
    match (who, named) {
        (Principal::Tenant(t), None) => Ok(t.clone()),
        (Principal::Tenant(_), Some(_)) => Err(ApiFailure::BadRequest(
            "a tenant acts for itself: no tenant field".into(),
        )),
        (Principal::Operator, Some(t)) if state.tenants.exists(&t) => Ok(t),
        (Principal::Operator, Some(_)) => Err(ApiFailure::NotFound("no such tenant")),
        (Principal::Operator, None) => Err(ApiFailure::BadRequest(
            "the operator names the tenant: {\"tenant\": ...}".into(),
        )),
    }
}

/// A dashboard account of a tenant; its password is in the answer, once.
#[utoipa::path(post, path = "/users", tag = "users", request_body = UserBody, responses((status = 201, body = UserAccount), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn add_user(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: UserBody = body(&raw)?;
    let tenant = tenant_for(&state, &who, b.tenant)?;
    let (a, password) = state.accounts.add(&b.name, &tenant, now_ms())?;
    tracing::info!(account = %a.name, tenant = %a.tenant, "Tenant account created.");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": a.name,
            "tenant": a.tenant,
            "password": password.0,
            "created_at": rfc3339_ms(a.created_at_ms),
        })),
    ))
}

#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, body = UserList), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError)), security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
) -> Json<Value> {
    let users: Vec<Value> = state
        .accounts
        .list(who.tenant())
        .into_iter()
        .map(|a| json!({"name": a.name, "tenant": a.tenant, "created_at": rfc3339_ms(a.created_at_ms)}))
        .collect();
    Json(json!({ "users": users }))
}

/// Deletes an account; its open connections are closed at once.
#[utoipa::path(delete, path = "/users/{name}", tag = "users", params(("name" = String, Path, description = "tenant or account name")), responses((status = 200, body = UserAccount), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn remove_user(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = state.accounts.remove(&name, who.tenant())?;
    tracing::warn!(account = %a.name, tenant = %a.tenant, "Tenant account deleted.");
    let _ = state.revoked.send(a.name.clone());
    state.sessions.discard_account(&a.name);
    Ok(Json(json!({"name": a.name, "tenant": a.tenant})))
}
