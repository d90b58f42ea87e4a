//! Binding devices to tenants by proof of possession (spec section 10).
//!
//! * **Pairing codes**: a tenant asks for a one-time code, hands it to the
//!   device, and the device claims itself with `{device_id, pairing_code,
//!   nonce, mac}`. The MAC (under the device's `K_auth`) is checked before
//!   anything else; only requests with a valid MAC are remembered, with their
//!   answer, for good (the spec asks for at least 300 s): the same request
//!   again gets the same answer, the same `(device_id, nonce)` with another
//!   MAC is a conflict. Kept for good because a captured request must never
//!   be decided afresh: once its code record is gone, another tenant could
//!   create the same chosen code and replay it. Only devices (valid MACs)
//!   can add records, so they grow with real claims, not with traffic.
//!   Everything a claim changes (the device's owner, the code's use, the
//!   remembered answer) is one sled transaction, so a crash or a race can
//!   never leave a used code without its claim, or the reverse.
//! * **Claim codes**: printed on the device; a tenant presents one. Wrong
//!   codes are counted per tenant and slowed down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::envelope::{claim_code, claim_code_matches, claim_mac, MasterKey};
use crate::events::claim_outcome;
use crate::front_door::limits::RateLimit;
use crate::metrics::Metrics;
use crate::registry::{Device, DeviceState, Registry};

/// The answer to a claim, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    /// The JSON body, exactly as first sent.
    pub body: String,
}

#[derive(Serialize, Deserialize)]
struct PairingCode {
    tenant: String,
    expires_at_ms: u64,
    #[serde(default)]
    used_at_ms: Option<u64>,
}

/// What a valid-MAC claim request is remembered as.
#[derive(Serialize, Deserialize)]
struct Remembered {
    mac: String,
    at_ms: u64,
    answer: Answer,
}

#[derive(Debug, Clone, Copy)]
pub struct ClaimSettings {
    pub pairing_code_ttl_ms: u64,
    pub bad_codes_per_minute: u32,
    pub auto_register: bool,
}

/// Unused, unexpired pairing codes one tenant may hold: codes are kept a
/// month after they expire, and this bounds what a tenant's key can make
/// the gateway store.
pub const MAX_LIVE_CODES_PER_TENANT: usize = 1000;

/// How long an expired (or used) pairing code is kept, so it cannot be made
/// again soon; a claim made with it is remembered for good anyway.
const CODE_RECORDS_KEPT_MS: u64 = 30 * 86_400 * 1000;

const SHARED_KEYS: &str = "the device shares its legacy keys with a device another tenant owns";

/// A device id as logs may show it: `esp3…a1`.
pub fn mask(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 6 {
        return format!("{}…", chars.first().copied().unwrap_or('?'));
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

pub struct Claims {
    registry: Registry,
    master: MasterKey,
    metrics: Arc<Metrics>,
    settings: ClaimSettings,
    codes: sled::Tree,
    replays: sled::Tree,
    database: crate::database::Database,
    /// Wrong claim codes per tenant.
    guesses: Mutex<HashMap<String, RateLimit>>,
    last_purge: Mutex<Option<Instant>>,
}

/// Why no pairing code was made.
#[derive(Debug)]
pub enum PairingError {
    /// A chosen code is not 4 to 64 bytes without control characters.
    Invalid,
    /// A chosen code exists already (used, or another tenant's).
    Taken,
    /// The tenant holds `MAX_LIVE_CODES_PER_TENANT` live codes already.
    TooMany,
    Store(sled::Error),
}

impl From<sled::Error> for PairingError {
    fn from(e: sled::Error) -> Self {
        PairingError::Store(e)
    }
}

/// Why a claim did not reach a decision.
#[derive(Debug)]
pub enum ClaimError {
    /// 400: the request is not a claim.
    BadRequest(&'static str),
    /// 401: the MAC does not check under the device's keys.
    BadMac,
    /// 429 (claim codes): too many wrong codes; retry after this long.
    RateLimited(Duration),
    /// 503: fail closed.
    Unavailable,
}

impl From<sled::Error> for ClaimError {
    fn from(e: sled::Error) -> Self {
        tracing::error!(error = %e, "Claim store failed.");
        ClaimError::Unavailable
    }
}

fn json_error(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

fn claimed(d: &Device) -> String {
    serde_json::json!({
        "device_id": d.device_id,
        "tenant": d.owner,
        "claimed_at": d.owned_since_ms.map(crate::rfc3339_ms),
    })
    .to_string()
}

impl Claims {
    pub fn open(
        db: &crate::database::Database,
        registry: Registry,
        master: MasterKey,
        metrics: Arc<Metrics>,
        settings: ClaimSettings,
    ) -> Result<Claims, sled::Error> {
        Ok(Claims {
            codes: db.open_tree("pairing_codes")?,
            replays: db.open_tree("claim_replays")?,
            database: db.clone(),
            registry,
            master,
            metrics,
            settings,
            guesses: Mutex::default(),
            last_purge: Mutex::default(),
        })
    }

    /// A new single-use pairing code for `tenant`, and when it expires:
    /// 80 random bits, or the code the tenant chose (a provisioning app's
    /// own). A chosen code need not be secret: a claim also needs the
    /// device's MAC over it, which only the device can make.
    pub fn new_pairing_code(
        &self,
        tenant: &str,
        chosen: Option<&str>,
        now_ms: u64,
    ) -> Result<(String, u64), PairingError> {
        self.purge(now_ms);
        let code = match chosen {
            Some(c) if (4..=64).contains(&c.len()) && !c.chars().any(char::is_control) => {
                c.to_owned()
            }
            Some(_) => return Err(PairingError::Invalid),
            None => {
                let mut raw = [0u8; 10];
                rand::thread_rng().fill_bytes(&mut raw);
                let text = data_encoding::BASE32_NOPAD.encode(&raw);
                format!(
                    "{}-{}-{}-{}",
                    &text[..4],
                    &text[4..8],
                    &text[8..12],
                    &text[12..]
                )
            }
        };
        let live = self
            .codes
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice::<PairingCode>(&v).ok())
            .filter(|c| c.tenant == tenant && c.used_at_ms.is_none() && now_ms < c.expires_at_ms)
            .count();
        if live >= MAX_LIVE_CODES_PER_TENANT {
            return Err(PairingError::TooMany);
        }
        let expires_at_ms = now_ms.saturating_add(self.settings.pairing_code_ttl_ms);
        let record = PairingCode {
            tenant: tenant.to_owned(),
            expires_at_ms,
            used_at_ms: None,
        };
        let stored = self.codes.compare_and_swap(
            code.as_bytes(),
            None as Option<&[u8]>,
            Some(serde_json::to_vec(&record).expect("serialises")),
        )?;
        if stored.is_err() {
            return Err(PairingError::Taken);
        }
        self.database.flush()?;
        Ok((code, expires_at_ms))
    }

    /// Forgets pairing codes a month after they expired, at most once a
    /// minute. (Remembered claims are kept for good; see the module doc.)
    fn purge(&self, now_ms: u64) {
        {
            let mut last = self.last_purge.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *last = Some(Instant::now());
        }
        for item in self.codes.iter().flatten() {
            if let Ok(c) = serde_json::from_slice::<PairingCode>(&item.1) {
                if c.expires_at_ms.saturating_add(CODE_RECORDS_KEPT_MS) < now_ms {
                    let _ = self.codes.remove(item.0);
                }
            }
        }
    }

    /// A device-initiated claim. `Ok` is an answer to send (and, if the MAC
    /// was valid, remembered); `Err` is one that is not remembered.
    pub fn claim(
        &self,
        raw_id: &str,
        pairing_code: &str,
        nonce: u64,
        mac_hex: &str,
        now_ms: u64,
    ) -> Result<Answer, ClaimError> {
        let id = crate::envelope::normalise_device_id(raw_id)
            .map_err(|_| ClaimError::BadRequest("device_id is not a valid device id"))?;
        let mut mac = [0u8; 32];
        hex::decode_to_slice(mac_hex, &mut mac)
            .map_err(|_| ClaimError::BadRequest("mac must be 64 hex digits"))?;
        if pairing_code.is_empty() || pairing_code.len() > 256 {
            return Err(ClaimError::BadRequest(
                "pairing_code must be 1 to 256 bytes",
            ));
        }
        // The MAC first, under the kids the device may use now; an unknown
        // device under kid 1, the key a factory flashes.
        let kids: Vec<u32> = match self.registry.get(&id) {
            Some(d) => {
                let mut k = vec![d.kid];
                if let (Some(p), Some(until)) = (d.previous_kid, d.previous_kid_until_ms) {
                    if now_ms < until {
                        k.push(p);
                    }
                }
                k
            }
            None => vec![1],
        };
        let valid = kids.iter().any(|kid| {
            let keys = self.master.device_keys(&id, *kid);
            let expected = claim_mac(&keys.auth, &id, pairing_code, nonce);
            bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &mac[..]))
        });
        if !valid {
            self.metrics.claim(claim_outcome::BAD_MAC);
            tracing::info!(device = %mask(&id), "Claim refused: bad MAC.");
            return Err(ClaimError::BadMac);
        }
        self.purge(now_ms);
        let (answer, outcome) = self.decide(&id, pairing_code, nonce, &hex::encode(mac), now_ms)?;
        self.metrics.claim(outcome);
        tracing::info!(device = %mask(&id), outcome, status = answer.status, "Claim decided.");
        Ok(answer)
    }

    /// The transaction of a claim whose MAC is valid.
    fn decide(
        &self,
        id: &str,
        pairing_code: &str,
        nonce: u64,
        mac: &str,
        now_ms: u64,
    ) -> Result<(Answer, &'static str), ClaimError> {
        let mut replay_key = id.as_bytes().to_vec();
        replay_key.push(0);
        replay_key.extend_from_slice(&nonce.to_be_bytes());
        let _labels = self.registry.hold_labels();
        let devices = self.registry.tree();
        let settings = self.settings;
        let registry = &self.registry;
        let result = (devices, &self.codes, &self.replays).transaction(|(dt, ct, rt)| {
            let answer = |status: u16, body: String| Answer { status, body };
            // Seen before: the same answer, or a conflict.
            if let Some(raw) = rt.get(&replay_key)? {
                if let Ok(r) = serde_json::from_slice::<Remembered>(&raw) {
                    return Ok(if r.mac == mac {
                        (r.answer, claim_outcome::REPLAY_CACHED)
                    } else {
                        (
                            answer(
                                409,
                                json_error(
                                    "replay_conflict",
                                    "this nonce was already used for another claim",
                                ),
                            ),
                            claim_outcome::REPLAY_CONFLICT,
                        )
                    });
                }
            }
            let (decided, outcome) =
                decide_fresh(dt, ct, registry, settings, id, pairing_code, now_ms)?;
            let remembered = Remembered {
                mac: mac.to_owned(),
                at_ms: now_ms,
                answer: decided.clone(),
            };
            rt.insert(
                replay_key.as_slice(),
                serde_json::to_vec(&remembered).expect("serialises"),
            )?;
            Ok((decided, outcome))
        });
        let (answer, outcome) = match result {
            Ok(v) => v,
            Err(TransactionError::Abort(())) | Err(TransactionError::Storage(_)) => {
                if let Err(TransactionError::Storage(e)) = &result {
                    tracing::error!(error = %e, "Claim transaction failed.");
                }
                return Err(ClaimError::Unavailable);
            }
        };
        self.database.flush()?;
        self.registry
            .refreshed(id, outcome == claim_outcome::AUTO_REGISTERED)
            .map_err(|_| ClaimError::Unavailable)?;
        Ok((answer, outcome))
    }

    /// A claim with a printed claim code, by `tenant`. `Ok` carries the
    /// status and body; wrong codes and unknown devices are the same 403.
    pub fn claim_with_code(
        &self,
        tenant: &str,
        raw_id: &str,
        code: &str,
        now_ms: u64,
    ) -> Result<Answer, ClaimError> {
        let now = Instant::now();
        let per_minute = f64::from(self.settings.bad_codes_per_minute.max(1));
        {
            let mut guesses = self.guesses.lock().unwrap_or_else(|e| e.into_inner());
            let bucket = guesses.entry(tenant.to_owned()).or_insert_with(|| {
                RateLimit::new(per_minute / 60.0, self.settings.bad_codes_per_minute, now)
            });
            if !bucket.has_room(now) {
                self.metrics.claim(claim_outcome::RATE_LIMITED);
                return Err(ClaimError::RateLimited(Duration::from_secs_f64(
                    60.0 / per_minute,
                )));
            }
        }
        let id = crate::envelope::normalise_device_id(raw_id).unwrap_or_default();
        // Computed even for ids that cannot exist, so the answer takes as
        // long for them.
        let expected = claim_code(&self.master.device_secret(&id, 1));
        let matches = claim_code_matches(&expected, code);
        let device = if id.is_empty() {
            None
        } else {
            self.registry.get(&id)
        };
        let Some(device) = device.filter(|_| matches) else {
            let mut guesses = self.guesses.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = guesses.get_mut(tenant) {
                b.charge();
            }
            self.metrics.claim(claim_outcome::BAD_CODE);
            tracing::info!(tenant, "Claim code refused.");
            return Ok(Answer {
                status: 403,
                body: json_error("bad_claim_code", "wrong claim code or no such device"),
            });
        };
        let answer = match (&device.owner, device.state) {
            (_, DeviceState::Revoked) => {
                self.metrics.claim(claim_outcome::REVOKED);
                Answer {
                    status: 409,
                    body: json_error("revoked", "the device is revoked"),
                }
            }
            (Some(owner), _) if owner != tenant => {
                self.metrics.claim(claim_outcome::OWNED_ELSEWHERE);
                Answer {
                    status: 409,
                    body: json_error("owned_by_another_tenant", "the device has another owner"),
                }
            }
            (Some(_), _) => {
                self.metrics.claim(claim_outcome::SUCCESS);
                Answer {
                    status: 200,
                    body: claimed(&device),
                }
            }
            (None, _) => {
                let d = match self.registry.set_owner_if_unowned(&id, tenant, now_ms) {
                    Ok(d) => d,
                    Err(crate::registry::RegistryError::SharedKeys) => {
                        self.metrics.claim(claim_outcome::OWNED_ELSEWHERE);
                        return Ok(Answer {
                            status: 409,
                            body: json_error("shared_keys", SHARED_KEYS),
                        });
                    }
                    Err(_) => return Err(ClaimError::Unavailable),
                };
                match d {
                    Some(d) => {
                        self.metrics.claim(claim_outcome::SUCCESS);
                        tracing::info!(device = %mask(&id), tenant, "Device claimed with its claim code.");
                        Answer {
                            status: 200,
                            body: claimed(&d),
                        }
                    }
                    None => {
                        // Another tenant won the race.
                        self.metrics.claim(claim_outcome::OWNED_ELSEWHERE);
                        Answer {
                            status: 409,
                            body: json_error(
                                "owned_by_another_tenant",
                                "the device has another owner",
                            ),
                        }
                    }
                }
            }
        };
        Ok(answer)
    }
}

/// The decision for a claim not seen before, inside the transaction.
fn decide_fresh(
    dt: &sled::transaction::TransactionalTree,
    ct: &sled::transaction::TransactionalTree,
    registry: &Registry,
    settings: ClaimSettings,
    id: &str,
    pairing_code: &str,
    now_ms: u64,
) -> Result<(Answer, &'static str), ConflictableTransactionError<()>> {
    let refuse = |status: u16, code: &str, message: &str, outcome| {
        Ok((
            Answer {
                status,
                body: json_error(code, message),
            },
            outcome,
        ))
    };
    let code: Option<PairingCode> = ct
        .get(pairing_code.as_bytes())?
        .and_then(|raw| serde_json::from_slice(&raw).ok());
    let Some(mut code) = code.filter(|c| c.used_at_ms.is_none() && now_ms < c.expires_at_ms) else {
        return refuse(
            403,
            "pairing_code_invalid",
            "the pairing code is unknown, expired or used",
            claim_outcome::CODE_INVALID,
        );
    };
    let stored: Option<Device> = dt
        .get(id.as_bytes())?
        .and_then(|raw| serde_json::from_slice(&raw).ok());
    let (mut device, outcome) = match stored {
        Some(d) => (d, claim_outcome::SUCCESS),
        None if settings.auto_register => {
            let mut d = Device::new(id.to_owned(), String::new(), 1, now_ms);
            d.auto_registered = true;
            (d, claim_outcome::AUTO_REGISTERED)
        }
        None => {
            return refuse(404, "not_found", "no such device", claim_outcome::NOT_FOUND);
        }
    };
    if device.state == DeviceState::Revoked {
        return refuse(
            409,
            "revoked",
            "the device is revoked",
            claim_outcome::REVOKED,
        );
    }
    match device.owner.as_deref() {
        Some(owner) if owner != code.tenant => {
            return refuse(
                409,
                "owned_by_another_tenant",
                "the device has another owner",
                claim_outcome::OWNED_ELSEWHERE,
            );
        }
        Some(_) => {}
        None if registry.keys_shared_elsewhere(&device, &code.tenant) => {
            return refuse(
                409,
                "shared_keys",
                SHARED_KEYS,
                claim_outcome::OWNED_ELSEWHERE,
            );
        }
        None => {
            let taken = registry.owner_uses_label(&code.tenant, &device.label, id);
            device.set_owner(Some(&code.tenant), now_ms, taken);
        }
    }
    code.used_at_ms = Some(now_ms);
    ct.insert(
        pairing_code.as_bytes(),
        serde_json::to_vec(&code).expect("serialises"),
    )?;
    dt.insert(
        id.as_bytes(),
        serde_json::to_vec(&device).expect("serialises"),
    )?;
    Ok((
        Answer {
            status: 200,
            body: claimed(&device),
        },
        outcome,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &std::path::Path) -> (Registry, Claims) {
        let db = crate::database::Database::for_tests(dir);
        let registry = Registry::open(&db).unwrap();
        let settings = ClaimSettings {
            pairing_code_ttl_ms: 1_000,
            bad_codes_per_minute: 10,
            auto_register: false,
        };
        let claims = Claims::open(
            &db,
            registry.clone(),
            MasterKey::from_bytes([5; 32]),
            Arc::new(Metrics::new()),
            settings,
        )
        .unwrap();
        (registry, claims)
    }

    fn mac(id: &str, code: &str, nonce: u64) -> String {
        let keys = MasterKey::from_bytes([5; 32]).device_keys(id, 1);
        hex::encode(claim_mac(&keys.auth, id, code, nonce))
    }

    /// Time cannot be awaited over sockets: expiry is checked here, with the
    /// clock passed in.
    #[test]
    fn codes_expire_and_claims_are_remembered_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, claims) = setup(dir.path());
        registry.add("d1", None, 0).unwrap();
        let (code, expires) = claims.new_pairing_code("acme", None, 10_000).unwrap();
        assert_eq!(expires, 11_000);
        let late = claims
            .claim("d1", &code, 1, &mac("d1", &code, 1), 11_000)
            .unwrap();
        assert_eq!(late.status, 403, "{}", late.body);
        // That refusal is remembered like any valid-MAC answer...
        let again = claims
            .claim("d1", &code, 1, &mac("d1", &code, 1), 11_001)
            .unwrap();
        assert_eq!(again, late);
        let (code, _) = claims.new_pairing_code("acme", None, 20_000).unwrap();
        let ok = claims
            .claim("d1", &code, 2, &mac("d1", &code, 2), 20_500)
            .unwrap();
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(registry.get("d1").unwrap().owner.as_deref(), Some("acme"));
        // ...for good: a year later the same request still gets the same
        // answer, and is never decided afresh (another tenant might by then
        // hold a code of the same text).
        let later = claims
            .claim(
                "d1",
                &code,
                2,
                &mac("d1", &code, 2),
                20_500 + 365 * 86_400_000,
            )
            .unwrap();
        assert_eq!(later, ok);
    }

    #[test]
    fn a_tenant_holds_a_bounded_number_of_live_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (_, claims) = setup(dir.path());
        for _ in 0..MAX_LIVE_CODES_PER_TENANT {
            claims.new_pairing_code("acme", None, 0).unwrap();
        }
        assert!(matches!(
            claims.new_pairing_code("acme", None, 0),
            Err(PairingError::TooMany)
        ));
        assert!(claims.new_pairing_code("globex", None, 0).is_ok());
        // Expired codes do not count.
        assert!(claims.new_pairing_code("acme", None, 1_000).is_ok());
    }

    #[test]
    fn masks_ids() {
        assert_eq!(mask("esp32-a1"), "esp3…a1");
        assert_eq!(mask("meter-0042"), "mete…42");
        assert_eq!(mask("d1"), "d…");
    }
}
