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
    /// A client's topic name that MQTT forbids or the router cannot take
    /// (`crate::topic`); refused before any topic rule is asked.
    InvalidTopic,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
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
    pub const ALL: [&str; 5] = [
        INVALID_FILTER,
        NOT_ALLOWED,
        CONNECTION_CAP,
        ACCOUNT_CAP,
        ROUTER_CAP,
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
    pub const ALL: [&str; 2] = [SUBSCRIBER_LAGGED, SUBSCRIBER_STALLED];
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
