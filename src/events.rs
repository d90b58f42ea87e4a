//! Every verdict, security event and metric name, defined once.
//!
//! Reasons are the spec's stable names (section 7); they appear in events,
//! metric labels and log lines exactly as written here. Emitting an event
//! goes through [`Reject::emit`] so that the log line, the counter and the
//! published event can never disagree.

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
}

impl RejectReason {
    pub const ALL: [RejectReason; 13] = [
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
    /// An account's client id is empty (with a persistent session) or holds
    /// a character MQTT reserves for topics.
    ClientIdInvalid,
    /// The router has no room for another session.
    RouterFull,
}

impl ConnectRefusal {
    pub const ALL: [ConnectRefusal; 16] = [
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
        ConnectRefusal::ClientIdInvalid,
        ConnectRefusal::RouterFull,
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
            ConnectRefusal::ClientIdInvalid => "client_id_invalid",
            ConnectRefusal::RouterFull => "router_full",
        }
    }
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
    pub const ALL: [&str; 3] = [SUBSCRIBER_LAGGED, SUBSCRIBER_STALLED, HOLD_EXCEEDED];
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
