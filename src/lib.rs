//! sealgate: a gateway that opens sealed telemetry from MQTT devices and
//! republishes the exact plaintext to subscribers who can trust it.
//!
//! The data path is the module list:
//!
//! * [`front_door`]: accepts MQTT connections, authenticates every CONNECT and
//!   hands sealed publishes to the verifier, everything else to the broker.
//! * [`ingest`]: the HTTP front door for legacy firmware that POSTs its
//!   envelope; requests go to the same verifier queue.
//! * `broker`: the embedded rumqttd router and its local links.
//! * [`verifier`]: opens sealed messages in spec order (parse, device and kid,
//!   MAC, nonce window, decrypt) in batches.
//! * [`replay`]: the nonce windows, group-committed (through the journal)
//!   before anything of a batch is published.
//! * [`journal`]: how a batch becomes durable: its writes appended to a
//!   journal and synced, sled itself checkpointed about once a second.
//! * [`database`]: the sled database, and the disk sync that makes a flush
//!   survive a power loss (sled's own flush does not).
//! * [`outbox`]: every published message, journaled with the windows and
//!   durable before any PUBACK; persistent sessions read it.
//! * [`properties`]: the MQTT 5 properties of an account's publish that are
//!   passed on to subscribers, and how the outbox keeps them.
//! * [`republish`]: `clean/{device}/...` and `sealgate/events/{device}` into
//!   the router, for clean sessions.
//! * `routed`: what a publish carries through the router for the front
//!   door to read back at delivery (its publish QoS).
//! * [`sessions`]: persistent subscriber sessions (subscriptions, position
//!   in the outbox, expiry) and the retention that trims the outbox.
//! * [`topic`]: what MQTT and the router allow of topic names and filters,
//!   and how a filter matches a topic; used by the config, the topic rules
//!   and `lag`.
//! * `lag`: how far each subscriber is behind; holds devices for a `block`
//!   subscriber, counts what a `drop` subscriber misses.
//!
//! Around it: [`envelope`] (the `sealgate-envelope` crate: the one
//! wire-format implementation, shared with firmware-sim and the tests), [`registry`] (devices in sled),
//! [`admin`] (HTTP API, health, metrics), [`events`] and `metrics` (every
//! reason and metric name, once), [`config`], [`secrets`] (the master key
//! and admin token files), [`app`] (startup and shutdown order),
//! [`shutdown`], `health` (a dead router, verifier, commit or checkpoint thread ends
//! the process) and `failpoint` (faults for tests).

pub mod accounts;
pub mod admin;
pub mod app;
pub(crate) mod broker;
pub mod claims;
pub mod config;
pub mod database;
/// The wire format, from its own `no_std` crate.
pub use sealgate_envelope as envelope;
pub mod events;
pub(crate) mod failpoint;
pub mod front_door;
pub(crate) mod health;
pub mod ingest;
pub mod journal;
pub(crate) mod lag;
pub mod metrics;
pub mod outbox;
pub mod properties;
pub mod registry;
pub mod replay;
pub mod republish;
pub(crate) mod routed;
pub mod sched;
pub mod secrets;
pub mod sessions;
pub mod shutdown;
pub mod tenants;
#[cfg(test)]
pub(crate) mod test_support;
pub mod topic;
pub mod verifier;

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, as events and the admin API show times.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}
