//! Device registry endpoints. `add`, `rotate` and `migrate` are the only
//! answers that carry a device secret; nothing can show it again. Imported
//! legacy keys go in once, at `add`, and no answer ever carries them.
//!
//! Every handler acts for a [`Principal`]: the operator sees every device, a
//! tenant only its own, and anything else is 404 whether it exists or not,
//! so device ids cannot be enumerated with a tenant key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::client::{ApiError, BulkCredentials, Credentials, DeviceList, DeviceView};
use super::{AdminState, ApiFailure, Principal};
use crate::envelope::legacy::LegacyKeys;
use crate::envelope::{connect_token, normalise_device_id, DeviceKeys};
use crate::registry::{Device, DeviceState, Profile};
use crate::replay::ReplayStore;
use crate::{now_ms, rfc3339_ms};

type ApiResult<T> = Result<T, ApiFailure>;

/// Parses a JSON body with a JSON error answer (axum's own is plain text).
pub(super) fn body<T: DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiFailure::BadRequest(format!("invalid JSON body: {e}")))
}

/// The device's v1 secret and a connect token. A legacy device gets the
/// token only: it seals with its imported keys until migrated.
fn credentials(state: &AdminState, d: &Device) -> Credentials {
    let secret = state.master.device_secret(&d.device_id, d.kid);
    let keys = DeviceKeys::from_secret(&secret);
    Credentials {
        device_id: d.device_id.clone(),
        kid: d.kid,
        secret: match d.profile() {
            Profile::V1 => hex::encode(secret),
            Profile::LegacyEcowatt => String::new(),
        },
        mqtt_password: connect_token(&keys, &d.device_id, 0),
    }
}

pub(super) fn view(state: &AdminState, d: Device) -> DeviceView {
    let summary = ReplayStore::summary(&state.windows, &d.device_id);
    DeviceView {
        profile: d.profile().as_str().to_owned(),
        label: d.label,
        state: match d.state {
            DeviceState::Active => "active".into(),
            DeviceState::Revoked => "revoked".into(),
        },
        kid: d.kid,
        previous_kid: d.previous_kid,
        previous_kid_valid_until: d.previous_kid_until_ms.map(rfc3339_ms),
        created_at: rfc3339_ms(d.created_at_ms),
        revoked_at: d.revoked_at_ms.map(rfc3339_ms),
        last_seen: summary
            .filter(|s| s.last_seen_ms > 0)
            .map(|s| rfc3339_ms(s.last_seen_ms)),
        highest_nonce: summary.map_or(0, |s| s.highest_nonce),
        auto_registered: d.auto_registered,
        owner: d.owner,
        device_id: d.device_id,
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    device_id: String,
    #[serde(default)]
    label: Option<String>,
    /// `v1` (the default) or `legacy-ecowatt`.
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    psk_hmac: Option<String>,
    #[serde(default)]
    psk_aes: Option<String>,
    #[serde(default)]
    iv: Option<String>,
}

/// Decodes one imported key. The error names the field, never its value.
fn key_hex(
    field: &str,
    value: Option<&str>,
    lens: std::ops::RangeInclusive<usize>,
) -> ApiResult<Vec<u8>> {
    let bad = || {
        let size = if lens.start() == lens.end() {
            format!("{} bytes", lens.start())
        } else {
            format!("{} to {} bytes", lens.start(), lens.end())
        };
        ApiFailure::BadRequest(format!("{field} must be hex of {size}"))
    };
    let bytes = hex::decode(value.ok_or_else(bad)?.trim()).map_err(|_| bad())?;
    if lens.contains(&bytes.len()) {
        Ok(bytes)
    } else {
        Err(bad())
    }
}

/// The imported keys of a legacy registration, or `None` for v1.
fn legacy_keys(b: &AddBody) -> ApiResult<Option<LegacyKeys>> {
    match b.profile.as_deref() {
        None | Some("v1") => {
            if b.psk_hmac.is_some() || b.psk_aes.is_some() || b.iv.is_some() {
                return Err(ApiFailure::BadRequest(
                    "psk_hmac, psk_aes and iv belong to the legacy-ecowatt profile".into(),
                ));
            }
            Ok(None)
        }
        Some("legacy-ecowatt") => {
            let fixed = |field, v: Option<&str>| -> ApiResult<[u8; 16]> {
                let k = key_hex(field, v, 16..=16)?;
                Ok(k.try_into().expect("length checked"))
            };
            Ok(Some(LegacyKeys {
                psk_hmac: key_hex("psk_hmac", b.psk_hmac.as_deref(), 16..=64)?,
                psk_aes: fixed("psk_aes", b.psk_aes.as_deref())?,
                iv: fixed("iv", b.iv.as_deref())?,
            }))
        }
        Some(_) => Err(ApiFailure::BadRequest(
            "profile must be v1 or legacy-ecowatt".into(),
        )),
    }
}

/// Operator only: a device's keys derive from the master key and its id, so
/// whoever registers an id learns the secret a factory flashes for it. A
/// tenant registering ids could impersonate devices not yet shipped; tenants
/// get devices by claim or assignment instead.
#[utoipa::path(post, path = "/devices", tag = "devices", request_body = AddBody, responses((status = 201, body = Credentials), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn add(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<Credentials>)> {
    who.require_operator()?;
    let b: AddBody = body(&raw)?;
    let legacy = legacy_keys(&b)?;
    let d = state
        .registry
        .add_with(&b.device_id, b.label, now_ms(), |id| {
            legacy
                .as_ref()
                .map(|k| (state.vault.seal(id, k), state.vault.fingerprint(k)))
        })?;
    tracing::info!(device_id = %d.device_id, profile = d.profile().as_str(), "Device registered.");
    Ok((StatusCode::CREATED, Json(credentials(&state, &d))))
}

/// Moves a legacy device to v1 and shows its v1 secret, once.
#[utoipa::path(post, path = "/devices/{id}/migrate", tag = "devices", params(("id" = String, Path, description = "device id")), responses((status = 200, body = Credentials), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn migrate(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Credentials>> {
    lookup(&state, &who, &id)?;
    let d = state.registry.migrate(who.scope(), &id)?;
    tracing::warn!(device_id = %d.device_id, kid = d.kid, "Device migrated to v1.");
    Ok(Json(credentials(&state, &d)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    prefix: String,
    count: u32,
}

const MAX_BULK: u32 = 100_000;
/// The device id rule's length limit (spec section 1): the bulk ids are the
/// prefix and the index, so together they must fit in it.
const MAX_ID_BYTES: usize = 64;

/// Checks a bulk request's size before anything is built, so a long prefix
/// times a large count cannot make the handler allocate without bound: the
/// ids built afterwards total at most `MAX_BULK x MAX_ID_BYTES` bytes.
fn check_bulk(prefix: &str, count: u32) -> ApiResult<()> {
    if count == 0 || count > MAX_BULK {
        return Err(ApiFailure::BulkOutOfRange(format!(
            "count must be between 1 and {MAX_BULK}"
        )));
    }
    if prefix.len() > MAX_ID_BYTES {
        return Err(ApiFailure::BulkOutOfRange(format!(
            "prefix is longer than a device id may be ({MAX_ID_BYTES} bytes)"
        )));
    }
    let last = super::client::bulk_device_id(prefix, count, count);
    if last.len() > MAX_ID_BYTES {
        return Err(ApiFailure::BulkOutOfRange(format!(
            "prefix plus index must fit in {MAX_ID_BYTES} bytes: the last id would be {} bytes",
            last.len()
        )));
    }
    normalise_device_id(&last)
        .map(|_| ())
        .map_err(|m| ApiFailure::BadRequest(format!("invalid device id: {m}")))
}

/// Operator only: bulk devices are a factory's, unowned until claimed.
#[utoipa::path(post, path = "/devices/bulk", tag = "devices", request_body = BulkBody, responses((status = 201, body = BulkCredentials), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn add_bulk(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<BulkCredentials>)> {
    who.require_operator()?;
    let b: BulkBody = body(&raw)?;
    check_bulk(&b.prefix, b.count)?;
    let ids: Vec<String> = (1..=b.count)
        .map(|i| super::client::bulk_device_id(&b.prefix, i, b.count))
        .collect();
    let reg = state.registry.clone();
    let created = tokio::task::spawn_blocking(move || reg.add_many(&ids, now_ms()))
        .await
        .map_err(|_| ApiFailure::Unavailable)??;
    tracing::info!(count = created.len(), prefix = %b.prefix, "Devices registered in bulk.");
    let devices = created.iter().map(|d| credentials(&state, d)).collect();
    Ok((StatusCode::CREATED, Json(BulkCredentials { devices })))
}

#[utoipa::path(get, path = "/devices", tag = "devices", responses((status = 200, body = DeviceList), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
) -> Json<DeviceList> {
    let scope = who.scope();
    let devices = state
        .registry
        .list()
        .into_iter()
        .filter(|d| scope.sees(d))
        .map(|d| view(&state, d))
        .collect();
    Json(DeviceList { devices })
}

/// The device, if `who` may see it; 404 alike for others' and for none.
fn lookup(state: &AdminState, who: &Principal, raw: &str) -> ApiResult<Device> {
    let id = normalise_device_id(raw)
        .map_err(|m| ApiFailure::BadRequest(format!("invalid device id: {m}")))?;
    state
        .registry
        .get(&id)
        .filter(|d| who.scope().sees(d))
        .ok_or(ApiFailure::NotFound("no such device"))
}

#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let d = lookup(&state, &who, &id)?;
    Ok(Json(view(&state, d)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    label: String,
}

#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")), request_body = RenameBody, responses((status = 200, body = DeviceView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn rename(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult<Json<DeviceView>> {
    lookup(&state, &who, &id)?;
    let b: RenameBody = body(&raw)?;
    let d = state.registry.rename(who.scope(), &id, b.label)?;
    Ok(Json(view(&state, d)))
}

#[utoipa::path(post, path = "/devices/{id}/revoke", tag = "devices", params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    lookup(&state, &who, &id)?;
    let d = state.registry.revoke(who.scope(), &id, now_ms())?;
    tracing::warn!(device_id = %d.device_id, "Device revoked.");
    // No receiver just means no connection is open.
    let _ = state.revoked.send(d.device_id.clone());
    Ok(Json(view(&state, d)))
}

#[utoipa::path(post, path = "/devices/{id}/rotate", tag = "devices", params(("id" = String, Path, description = "device id")), responses((status = 200, body = Credentials), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)), security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Credentials>> {
    lookup(&state, &who, &id)?;
    let d = state
        .registry
        .rotate(who.scope(), &id, now_ms(), state.rotation_grace_ms)?;
    tracing::info!(device_id = %d.device_id, kid = d.kid, "Device key rotated.");
    Ok(Json(credentials(&state, &d)))
}

#[utoipa::path(post, path = "/devices/{id}/reset-nonce", tag = "devices", params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError), (status = 503, body = ApiError), (status = 404, body = ApiError)), security(("bearer" = [])))]
pub async fn reset_nonce(
    State(state): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let d = lookup(&state, &who, &id)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    state
        .verifier
        .send(crate::verifier::Input::ResetWindow(d.device_id.clone(), tx))
        .await
        .map_err(|_| ApiFailure::Unavailable)?;
    match rx.await {
        Ok(Ok(())) => {
            tracing::warn!(device_id = %d.device_id, "Nonce window reset.");
            Ok(Json(view(&state, d)))
        }
        _ => Err(ApiFailure::Unavailable),
    }
}
