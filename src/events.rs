//! Every verdict, security event and metric name, defined once.
//!
//! Reasons are the spec's stable names (section 7); they appear in events,
//! metric labels and log lines exactly as written here. A rejected sealed
//! message is counted, logged and turned into its event in one function
//! (`verifier::reject`), so that the log line, the counter and the published
//! event can never disagree.

use serde::Serialize;

/// Why a sealed message was not delivered to `clean/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    Malformed,
    TooLarge,
    UnknownDevice,
    Revoked,
    UnknownKid,
    BadMac,
    StaleNonce,
    NonceReuse,
    Duplicate,
    DecryptFailed,
    StoreUnavailable,
    NotAllowed,
    RateLimited,
    /// A client's topic name that MQTT forbids or the router cannot take
    /// (`crate::topic`); refused before any topic rule is asked.
    InvalidTopic,
    /// A device publishing on more distinct streams than
    /// `limits.max_streams_per_device`: each is a clean topic the router
    /// keeps (and a retained message it keeps) for ever.
    TooManyStreams,
}

impl RejectReason {
    pub const ALL: [RejectReason; 15] = [
        RejectReason::Malformed,
        RejectReason::TooLarge,
        RejectReason::UnknownDevice,
        RejectReason::Revoked,
        RejectReason::UnknownKid,
        RejectReason::BadMac,
        RejectReason::StaleNonce,
        RejectReason::NonceReuse,
        RejectReason::Duplicate,
        RejectReason::DecryptFailed,
        RejectReason::StoreUnavailable,
        RejectReason::NotAllowed,
        RejectReason::RateLimited,
        RejectReason::InvalidTopic,
        RejectReason::TooManyStreams,
    ];

    /// The spec's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::Revoked => "revoked",
            RejectReason::UnknownKid => "unknown_kid",
            RejectReason::BadMac => "bad_mac",
            RejectReason::StaleNonce => "stale_nonce",
            RejectReason::NonceReuse => "nonce_reuse",
            RejectReason::Duplicate => "duplicate",
            RejectReason::DecryptFailed => "decrypt_failed",
            RejectReason::StoreUnavailable => "store_unavailable",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::InvalidTopic => "invalid_topic",
            RejectReason::TooManyStreams => "too_many_streams",
        }
    }

    pub fn from_name(name: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// `duplicate` is a retransmission: counted and dropped, never an event.
    pub fn publishes_event(self) -> bool {
        self != RejectReason::Duplicate
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection ended before its session began: the `reason` label of
/// `sealgate_connect_refused_total`, and the `reason` field of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// `limits.max_connections` sockets were already open.
    TooManyConnections,
    /// The TLS or WebSocket handshake failed.
    HandshakeFailed,
    /// Handshake and CONNECT together took longer than `mqtt.connect_timeout_ms`.
    ConnectTimeout,
    /// MQTT 3.1 or an unknown protocol level.
    ProtocolVersion,
    /// The first packet was not a CONNECT.
    NotConnect,
    /// The CONNECT could not be decoded, or was larger than `mqtt.max_packet_bytes`.
    MalformedConnect,
    NoCredentials,
    BadPassword,
    UnknownDevice,
    Revoked,
    BadToken,
    ExpiredToken,
    /// A device's client id is not its device id.
    ClientIdMismatch,
    /// The will topic is one the client could not publish to.
    WillNotAllowed,
    /// The will topic is not a valid MQTT topic name, or one the router
    /// cannot take (see `crate::topic`).
    WillTopicInvalid,
    /// An account's client id is empty (with a persistent session) or holds
    /// a character MQTT reserves for topics.
    ClientIdInvalid,
    /// The router has no room for another session.
    RouterFull,
    /// The account keeps `sessions.max_per_account` persistent sessions.
    TooManySessions,
    /// The persistent session could not be read or written: fail closed.
    SessionStore,
}

impl ConnectRefusal {
    pub const ALL: [ConnectRefusal; 19] = [
        ConnectRefusal::TooManyConnections,
        ConnectRefusal::HandshakeFailed,
        ConnectRefusal::ConnectTimeout,
        ConnectRefusal::ProtocolVersion,
        ConnectRefusal::NotConnect,
        ConnectRefusal::MalformedConnect,
        ConnectRefusal::NoCredentials,
        ConnectRefusal::BadPassword,
        ConnectRefusal::UnknownDevice,
        ConnectRefusal::Revoked,
        ConnectRefusal::BadToken,
        ConnectRefusal::ExpiredToken,
        ConnectRefusal::ClientIdMismatch,
        ConnectRefusal::WillNotAllowed,
        ConnectRefusal::WillTopicInvalid,
        ConnectRefusal::ClientIdInvalid,
        ConnectRefusal::RouterFull,
        ConnectRefusal::TooManySessions,
        ConnectRefusal::SessionStore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectRefusal::TooManyConnections => "too_many_connections",
            ConnectRefusal::HandshakeFailed => "handshake_failed",
            ConnectRefusal::ConnectTimeout => "connect_timeout",
            ConnectRefusal::ProtocolVersion => "protocol_version",
            ConnectRefusal::NotConnect => "not_connect",
            ConnectRefusal::MalformedConnect => "malformed_connect",
            ConnectRefusal::NoCredentials => "no_credentials",
            ConnectRefusal::BadPassword => "bad_password",
            ConnectRefusal::UnknownDevice => "unknown_device",
            ConnectRefusal::Revoked => "revoked",
            ConnectRefusal::BadToken => "bad_token",
            ConnectRefusal::ExpiredToken => "expired_token",
            ConnectRefusal::ClientIdMismatch => "client_id_mismatch",
            ConnectRefusal::WillNotAllowed => "will_not_allowed",
            ConnectRefusal::WillTopicInvalid => "will_topic_invalid",
            ConnectRefusal::ClientIdInvalid => "client_id_invalid",
            ConnectRefusal::RouterFull => "router_full",
            ConnectRefusal::TooManySessions => "too_many_sessions",
            ConnectRefusal::SessionStore => "session_store",
        }
    }
}

/// Lets through at most one log line per key per interval, so that a client
/// repeating a refused action cannot flood the log; the counters still see
/// every occurrence. The line that gets through says how many were held
/// back since the last one.
pub struct LogGate {
    every: std::time::Duration,
    last: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl LogGate {
    pub fn new(every: std::time::Duration) -> LogGate {
        LogGate {
            every,
            last: Default::default(),
        }
    }

    /// `Some(held back)` when a line for `key` may be written now.
    pub fn admit(&self, key: &'static str, now: std::time::Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The gate for per-packet refusal lines at the front door (refused
/// publishes and subscriptions), keyed by reason: at most one line per
/// reason every ten seconds.
pub fn refusal_log() -> &'static LogGate {
    static GATE: std::sync::OnceLock<LogGate> = std::sync::OnceLock::new();
    GATE.get_or_init(|| LogGate::new(std::time::Duration::from_secs(10)))
}

/// The JSON object published on `sealgate/events/{device}`. It carries what
/// an operator needs to act and nothing an attacker could use: never the
/// payload, the MAC, a key or a token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecurityEvent {
    pub at: String,
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<u64>,
}

/// The device id used on the events topic when the id itself is malformed.
pub const INVALID_DEVICE: &str = "_invalid";

/// Metric names: `sealgate_<name>[_<unit>][_total]`, labels from bounded sets.
pub mod metric {
    pub const MESSAGES: &str = "sealgate_messages";
    pub const REJECTS: &str = "sealgate_rejects";
    pub const VERIFY_SECONDS: &str = "sealgate_verify_seconds";
    pub const COMMIT_SECONDS: &str = "sealgate_commit_seconds";
    pub const DEVICES: &str = "sealgate_devices";
    pub const CONNECTIONS: &str = "sealgate_connections";
    pub const CONNECT_REFUSED: &str = "sealgate_connect_refused";
    pub const AUTO_REGISTERED: &str = "sealgate_auto_registered";
    pub const BATCH_SIZE: &str = "sealgate_commit_batch_messages";
    pub const DROPPED: &str = "sealgate_dropped";
    pub const SUBSCRIBER_LAG: &str = "sealgate_subscriber_lag_messages";
    pub const DEVICES_HELD: &str = "sealgate_devices_held";
    pub const SUBSCRIPTIONS_REFUSED: &str = "sealgate_subscriptions_refused";
    pub const ROUTER_FILTERS: &str = "sealgate_router_filters";
    pub const PERSISTENT_SESSIONS: &str = "sealgate_persistent_sessions";
    pub const OUTBOX_BYTES: &str = "sealgate_outbox_bytes";
    pub const OUTBOX_FULL: &str = "sealgate_outbox_full";
    pub const DATABASE_SYNCS: &str = "sealgate_database_syncs";
    pub const INGEST_REQUESTS: &str = "sealgate_ingest_requests";
    pub const CLAIMS: &str = "sealgate_claims";
}

/// Values of the `outcome` label on `sealgate_claims_total` (`crate::claims`).
pub mod claim_outcome {
    /// The device now belongs to the tenant (or already did).
    pub const SUCCESS: &str = "success";
    /// An unknown device, registered and claimed in one step under
    /// `verifier.auto_register`.
    pub const AUTO_REGISTERED: &str = "auto_registered";
    /// The same claim again (remembered for good): the same answer.
    pub const REPLAY_CACHED: &str = "replay_cached";
    /// The same `(device_id, nonce)` with another MAC or code: 409.
    pub const REPLAY_CONFLICT: &str = "replay_conflict";
    /// 401: the claim MAC does not check.
    pub const BAD_MAC: &str = "bad_mac";
    /// 403: a wrong claim code, or no such device.
    pub const BAD_CODE: &str = "bad_code";
    /// 403: the pairing code is unknown, expired or used.
    pub const CODE_INVALID: &str = "code_invalid";
    /// 404: no such device, and auto-register is off.
    pub const NOT_FOUND: &str = "not_found";
    /// 409: another tenant owns the device.
    pub const OWNED_ELSEWHERE: &str = "owned_elsewhere";
    /// 409: the device is revoked.
    pub const REVOKED: &str = "revoked";
    /// 429: too many wrong claim codes from one tenant.
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const ALL: [&str; 11] = [
        SUCCESS,
        AUTO_REGISTERED,
        REPLAY_CACHED,
        REPLAY_CONFLICT,
        BAD_MAC,
        BAD_CODE,
        CODE_INVALID,
        NOT_FOUND,
        OWNED_ELSEWHERE,
        REVOKED,
        RATE_LIMITED,
    ];
}

/// Values of the `answer` label on `sealgate_ingest_requests_total`: how the
/// HTTP ingest answered a legacy device (`crate::ingest`).
pub mod ingest_answer {
    /// 200: verified and durable.
    pub const ACCEPTED: &str = "accepted";
    /// 401: any failed check (the verifier's reason is counted in
    /// `sealgate_rejects_total` and published as usual).
    pub const REFUSED: &str = "refused";
    /// 413: body over `ingest.max_body_bytes`.
    pub const TOO_LARGE: &str = "too_large";
    /// 429: the device is over `ingest.device_rate`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 503: the store cannot take it now; the device should retry.
    pub const UNAVAILABLE: &str = "unavailable";
    /// 404/405: not the ingest path, or not a POST.
    pub const NOT_FOUND: &str = "not_found";
    /// 408: the body did not arrive within `ingest.header_read_timeout_ms`
    /// of the headers; the connection is closed.
    pub const TIMED_OUT: &str = "timed_out";
    pub const ALL: [&str; 7] = [
        ACCEPTED,
        REFUSED,
        TOO_LARGE,
        RATE_LIMITED,
        UNAVAILABLE,
        NOT_FOUND,
        TIMED_OUT,
    ];
}

/// Values of the `reason` label on `sealgate_subscriptions_refused_total`:
/// why one filter of a SUBSCRIBE was refused.
pub mod subscription_refused {
    /// Not a valid MQTT filter, or one the router cannot take (`crate::topic`).
    pub const INVALID_FILTER: &str = "invalid_filter";
    /// Outside the client's topic rules (`front_door::acl`).
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// `limits.max_subscriptions_per_connection` reached.
    pub const CONNECTION_CAP: &str = "connection_cap";
    /// `limits.max_subscriptions_per_account` reached.
    pub const ACCOUNT_CAP: &str = "account_cap";
    /// `limits.max_router_filters` reached and the filter is new to the router.
    pub const ROUTER_CAP: &str = "router_cap";
    /// A `$share/` filter on a persistent session: rumqttd 0.20's router
    /// panics when such a session leaves with messages of the group in
    /// flight, so shared subscriptions are for clean sessions only.
    pub const SHARED_PERSISTENT: &str = "shared_persistent";
    pub const ALL: [&str; 6] = [
        INVALID_FILTER,
        NOT_ALLOWED,
        CONNECTION_CAP,
        ACCOUNT_CAP,
        ROUTER_CAP,
        SHARED_PERSISTENT,
    ];
}

/// Values of the `reason` label on `sealgate_dropped_total`: messages the
/// gateway had acknowledged to a device that a subscriber did not get.
pub mod dropped {
    /// A `drop` subscriber fell further behind than the router's log keeps
    /// and the router skipped it ahead: exact, from the gap in offsets.
    pub const SUBSCRIBER_LAGGED: &str = "subscriber_lagged";
    /// A subscriber whose socket took nothing for `limits.write_timeout_secs`
    /// was closed with this many messages still waiting for it in the router.
    pub const SUBSCRIBER_STALLED: &str = "subscriber_stalled";
    /// A `block` subscriber held the devices for `limits.max_hold_secs` and
    /// was treated as `drop` until it kept up again: what it missed
    /// meanwhile, exact, from the gap in offsets.
    pub const HOLD_EXCEEDED: &str = "hold_exceeded";
    /// An offline persistent session was past `sessions.retention_*`: its
    /// oldest messages were trimmed from the outbox without it.
    pub const SESSION_RETENTION: &str = "session_retention";
    /// A message larger than the Maximum Packet Size an MQTT 5 client
    /// announced: not sent to that client, and taken as delivered to it
    /// (MQTT5-3.1.2-25), so its in-flight window and its persistent
    /// session's position move on.
    pub const TOO_LARGE_FOR_CLIENT: &str = "too_large_for_client";
    /// A message whose MQTT 5 message expiry interval ran out before it
    /// could be sent to a subscriber: not sent (MQTT-3.3.2-5), counted once
    /// per subscriber that missed it.
    pub const MESSAGE_EXPIRED: &str = "message_expired";
    pub const ALL: [&str; 6] = [
        SUBSCRIBER_LAGGED,
        SUBSCRIBER_STALLED,
        HOLD_EXCEEDED,
        SESSION_RETENTION,
        TOO_LARGE_FOR_CLIENT,
        MESSAGE_EXPIRED,
    ];
}

/// Values of the `result` label on `sealgate_messages_total`.
pub mod result {
    pub const ACCEPTED: &str = "accepted";
    pub const REJECTED: &str = "rejected";
    pub const DUPLICATE: &str = "duplicate";
    pub const UNVERIFIED: &str = "unverified";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_name(r.as_str()), Some(r));
        }
        assert!(!RejectReason::Duplicate.publishes_event());
        assert!(RejectReason::BadMac.publishes_event());
        let names: std::collections::HashSet<_> =
            ConnectRefusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), ConnectRefusal::ALL.len());
    }

    #[test]
    fn the_log_gate_lets_one_line_per_key_and_interval_through() {
        let gate = LogGate::new(std::time::Duration::from_secs(10));
        let t0 = std::time::Instant::now();
        assert_eq!(gate.admit("a", t0), Some(0));
        for _ in 0..99 {
            assert_eq!(gate.admit("a", t0), None);
        }
        // Another key is not held back by the first.
        assert_eq!(gate.admit("b", t0), Some(0));
        let later = t0 + std::time::Duration::from_secs(10);
        assert_eq!(gate.admit("a", later), Some(99));
        assert_eq!(gate.admit("a", later), None);
    }

    #[test]
    fn event_json_has_no_secret_fields() {
        let e = SecurityEvent {
            at: "2026-11-22T08:00:00.123Z".into(),
            device_id: "esp32-a1".into(),
            stream: Some("telemetry".into()),
            reason: RejectReason::BadMac.as_str(),
            nonce: Some(10001),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"at":"2026-11-22T08:00:00.123Z","device_id":"esp32-a1","stream":"telemetry","reason":"bad_mac","nonce":10001}"#
        );
    }
}
