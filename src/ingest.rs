//! HTTP ingest for legacy firmware: devices that POST their legacy envelope
//! to a URL (`/process`) instead of speaking MQTT. A fleet moves to sealgate
//! by pointing that URL at this listener, without reflashing.
//!
//! This is a second front door, not a second verifier: a request becomes the
//! same `Inbound` an MQTT publish on `sealed/{device}/{stream}` would, goes
//! through the verifier's queue (legacy rules, the device's nonce window,
//! events, metrics, the outbox) and is answered once the outcome is final:
//! 200 only when the message is durable. Every failed check is the same 401
//! with the same body, so the answer teaches an attacker nothing.
//!
//! The device a request names (header, path segment, or a field of the
//! verified plaintext) is only a claim until the MAC checks under that
//! device's keys. Only devices on the legacy profile are served here, and
//! only verified requests count against a device's rate, so requests forged
//! in a device's name cannot use up its rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{ServeLimits, ServeOptions};
use crate::config::{DeviceFrom, IngestConfig};
use crate::envelope::legacy::{self, LegacyKeys};
use crate::envelope::DeviceId;
use crate::events::ingest_answer;
use crate::front_door::limits::RateLimit;
use crate::metrics::Metrics;
use crate::registry::vault::Vault;
use crate::registry::{Profile, Registry};
use crate::verifier::{AckTo, Inbound, Input, Outcome};

/// Distinct key pairs tried for `device_from = "field"`. That mode is for
/// fleets sharing a pair; a registry with more distinct pairs is served by
/// the first ones only (and says so in the log), so a request cannot cost
/// one MAC per registered device.
const MAX_FIELD_KEY_PAIRS: usize = 64;
/// Rate buckets kept; past this the idle ones are forgotten.
const MAX_BUCKETS: usize = 100_000;
/// Security events a device's refused ingest requests publish: a burst of
/// this many, then one a second.
const REFUSAL_EVENTS_BURST: u32 = 5;

/// What the ingest handlers share.
pub struct Ingest {
    config: IngestConfig,
    header: HeaderName,
    sealed_prefix: String,
    registry: Registry,
    vault: Vault,
    verifier: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    rates: Mutex<HashMap<String, RateLimit>>,
    /// Refusals per device that still publish their security event: forged
    /// requests cost their sender nothing, so past this budget they are
    /// refused (and counted) without an event each.
    refusals: Mutex<HashMap<String, RateLimit>>,
    /// For `field`: the distinct legacy key pairs, and the registry
    /// generation they were read at.
    pairs: Mutex<(u64, Arc<Vec<LegacyKeys>>)>,
}

/// One answer per outcome, each with a body that says nothing more.
fn answer(metrics: &Metrics, label: &'static str) -> Response {
    metrics.ingest(label);
    let (status, body) = match label {
        ingest_answer::ACCEPTED => (StatusCode::OK, "{\"result\":\"accepted\"}"),
        ingest_answer::TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "{\"error\":\"too_large\"}"),
        ingest_answer::RATE_LIMITED => (
            StatusCode::TOO_MANY_REQUESTS,
            "{\"error\":\"rate_limited\"}",
        ),
        ingest_answer::UNAVAILABLE => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"unavailable\"}",
        ),
        ingest_answer::NOT_FOUND => (StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}"),
        ingest_answer::TIMED_OUT => (StatusCode::REQUEST_TIMEOUT, "{\"error\":\"timed_out\"}"),
        _ => (StatusCode::UNAUTHORIZED, "{\"error\":\"unauthorized\"}"),
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if label == ingest_answer::RATE_LIMITED {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

impl Ingest {
    pub fn new(
        config: IngestConfig,
        sealed_prefix: String,
        registry: Registry,
        vault: Vault,
        verifier: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
    ) -> Ingest {
        let header = crate::config::http_header_name(&config.device_header)
            .unwrap_or(HeaderName::from_static("x-device-id"));
        Ingest {
            config,
            header,
            sealed_prefix,
            registry,
            vault,
            verifier,
            metrics,
            rates: Mutex::default(),
            refusals: Mutex::default(),
            pairs: Mutex::new((u64::MAX, Arc::default())),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        let path = self.config.path.clone();
        let mut r = Router::new();
        r = match self.config.device_from {
            DeviceFrom::Path => r.route(&format!("{path}/:device"), post(by_path)),
            DeviceFrom::Header | DeviceFrom::Field => r.route(&path, post(by_request)),
        };
        let state = self.clone();
        r.fallback(move || {
            let state = state.clone();
            async move { answer(&state.metrics, ingest_answer::NOT_FOUND) }
        })
        .with_state(self)
    }

    /// The body, within `max_body_bytes`.
    async fn body(&self, req: Request) -> Result<Bytes, Response> {
        let max = self.config.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(answer(&self.metrics, ingest_answer::TOO_LARGE));
        }
        to_bytes(req.into_body(), max).await.map_err(|e| {
            let label = match crate::admin::BodyTimedOut::caused(&e) {
                true => ingest_answer::TIMED_OUT,
                false => ingest_answer::TOO_LARGE,
            };
            answer(&self.metrics, label)
        })
    }

    /// The distinct key pairs of legacy devices, read again after any
    /// registry change.
    fn key_pairs(&self) -> Arc<Vec<LegacyKeys>> {
        let generation = self.registry.generation();
        let mut cached = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != generation {
            let mut pairs: Vec<LegacyKeys> = Vec::new();
            let mut more = false;
            for d in self.registry.legacy_devices() {
                let Some(sealed) = &d.legacy else { continue };
                let Some(keys) = self.vault.open(&d.device_id, sealed) else {
                    continue;
                };
                if pairs.contains(&keys) {
                    continue;
                }
                if pairs.len() == MAX_FIELD_KEY_PAIRS {
                    more = true;
                    break;
                }
                pairs.push(keys);
            }
            if more {
                tracing::warn!(
                    tried = MAX_FIELD_KEY_PAIRS,
                    "More distinct legacy key pairs than ingest.device_from = \"field\" tries; name devices by header or path instead."
                );
            }
            *cached = (generation, Arc::new(pairs));
        }
        cached.1.clone()
    }

    /// `device_from = "field"`: the device named inside the plaintext that
    /// one of the key pairs opens. The verifier checks it again under that
    /// device's own keys, so naming another device gains nothing.
    fn device_from_field(&self, body: &[u8]) -> Option<String> {
        let env = legacy::parse(body).ok()?;
        let pairs = self.key_pairs();
        let plain = pairs.iter().find_map(|k| legacy::open(&env, k))?;
        let v: serde_json::Value = serde_json::from_slice(&plain).ok()?;
        let raw = v.get(&self.config.device_field)?.as_str()?;
        DeviceId::new(raw).ok().map(|id| id.as_str().to_owned())
    }

    async fn handle(&self, claimed: Option<&str>, req: Request) -> Response {
        let named = claimed.map(str::to_owned).or_else(|| {
            (self.config.device_from == DeviceFrom::Header)
                .then(|| req.headers().get(&self.header))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let body = match self.body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let device = match self.config.device_from {
            DeviceFrom::Field => self.device_from_field(&body),
            _ => named.and_then(|n| DeviceId::new(&n).ok().map(|id| id.as_str().to_owned())),
        };
        let Some(device) = device else {
            return answer(&self.metrics, ingest_answer::REFUSED);
        };
        // Only legacy devices post here; anything else is the same 401.
        let legacy = self.registry.with(&device, |d| {
            d.is_some_and(|d| d.profile() == Profile::LegacyEcowatt)
        });
        if !legacy {
            return answer(&self.metrics, ingest_answer::REFUSED);
        }
        let now = Instant::now();
        let rate = self.config.device_rate;
        if !self.bucket(&device, now, |b| b.has_room(now), rate) {
            return answer(&self.metrics, ingest_answer::RATE_LIMITED);
        }
        let burst = REFUSAL_EVENTS_BURST;
        let events = with_bucket(&self.refusals, &device, now, 1.0, burst, |b| {
            b.has_room(now)
        });
        let outcome = self.verify(&device, body, events).await;
        if matches!(outcome, Some(Outcome::Rejected(_))) && events {
            with_bucket(&self.refusals, &device, now, 1.0, burst, |b| {
                b.charge();
                true
            });
        }
        match outcome {
            Some(Outcome::Delivered) => {
                self.bucket(
                    &device,
                    now,
                    |b| {
                        b.charge();
                        true
                    },
                    rate,
                );
                answer(&self.metrics, ingest_answer::ACCEPTED)
            }
            Some(Outcome::Rejected(_)) | Some(Outcome::Duplicate) => {
                answer(&self.metrics, ingest_answer::REFUSED)
            }
            Some(Outcome::Unavailable) | None => answer(&self.metrics, ingest_answer::UNAVAILABLE),
        }
    }

    fn bucket(
        &self,
        device: &str,
        now: Instant,
        f: impl FnOnce(&mut RateLimit) -> bool,
        rate: f64,
    ) -> bool {
        let burst = rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        with_bucket(&self.rates, device, now, rate, burst, f)
    }

    /// Hands the message to the verifier as a QoS 1 publish and waits for
    /// its final outcome. `None`: the verifier is gone (shutting down).
    async fn verify(&self, device: &str, payload: Bytes, events: bool) -> Option<Outcome> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let topic = format!("{}/{device}/{}", self.sealed_prefix, self.config.stream);
        let m = Inbound {
            topic: Bytes::from(topic),
            payload,
            retain: false,
            qos: 1,
            ack: Some(AckTo {
                tx,
                pkid: 1,
                qos2: false,
            }),
            events,
            props: None,
        };
        self.verifier.send(Input::Message(m)).await.ok()?;
        rx.recv().await.map(|a| a.outcome)
    }
}

/// Runs `f` on `device`'s bucket in `map` (made with `rate` and `burst`).
fn with_bucket(
    map: &Mutex<HashMap<String, RateLimit>>,
    device: &str,
    now: Instant,
    rate: f64,
    burst: u32,
    f: impl FnOnce(&mut RateLimit) -> bool,
) -> bool {
    let mut buckets = map.lock().unwrap_or_else(|e| e.into_inner());
    if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(device) {
        // Buckets idle this long are full again: forgetting them changes
        // nothing.
        let idle = Duration::from_secs_f64((f64::from(burst) / rate).min(3600.0));
        buckets.retain(|_, b| !b.idle_since(now, idle));
    }
    let b = buckets
        .entry(device.to_owned())
        .or_insert_with(|| RateLimit::new(rate, burst, now));
    f(b)
}

async fn by_request(State(ingest): State<Arc<Ingest>>, req: Request<Body>) -> Response {
    ingest.handle(None, req).await
}

async fn by_path(
    State(ingest): State<Arc<Ingest>>,
    Path(device): Path<String>,
    req: Request<Body>,
) -> Response {
    ingest.handle(Some(&device), req).await
}

/// Serves the ingest until `stop`; connections then finish their request.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let options = ServeOptions {
        limits: ServeLimits {
            header_read_timeout: Duration::from_millis(ingest.config.header_read_timeout_ms),
            max_connections: ingest.config.max_connections,
        },
        tls,
        busy_body: "{\"error\":\"unavailable\"}",
    };
    crate::admin::serve_with(listener, ingest.router(), options, stop).await
}
