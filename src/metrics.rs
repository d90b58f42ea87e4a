//! Prometheus metrics. Names come from [`crate::events::metric`]; labels are
//! bounded sets (a reason or a result, never a device id or a topic).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

use crate::events::{
    claim_outcome, dropped, ingest_answer, metric, subscription_refused, RejectReason,
};

type Label = [(&'static str, &'static str); 1];

/// Every metric the gateway exports. Cheap to share behind an `Arc`; every
/// field is internally atomic.
pub struct Metrics {
    registry: PromRegistry,
    messages: Family<Label, Counter>,
    rejects: Family<Label, Counter>,
    pub verify_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
    devices: Family<Label, Gauge>,
    pub connections: Gauge,
    connect_refused: Family<Label, Counter>,
    pub auto_registered: Counter,
    dropped: Family<Label, Counter>,
    /// The furthest any connected subscriber account is behind.
    pub subscriber_lag: Gauge,
    /// 1 while device publishes are held for a `block` subscriber.
    pub devices_held: Gauge,
    subscriptions_refused: Family<Label, Counter>,
    /// Distinct filters handed to the router so far (it never forgets one).
    pub router_filters: Gauge,
    pub persistent_sessions: Gauge,
    pub outbox_bytes: Gauge,
    /// 1 while devices are held because the outbox is at its size bound.
    pub outbox_full: Gauge,
    /// fdatasyncs after sled's flush (`database.durability = "power-loss"`).
    pub database_syncs: Counter,
    ingest: Family<Label, Counter>,
    claims: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = PromRegistry::default();
        let m = Metrics {
            messages: Family::default(),
            rejects: Family::default(),
            // 1 µs .. ~4 s
            verify_seconds: Histogram::new(exponential_buckets(1e-6, 2.0, 22)),
            commit_seconds: Histogram::new(exponential_buckets(1e-5, 2.0, 20)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            devices: Family::default(),
            connections: Gauge::default(),
            connect_refused: Family::default(),
            auto_registered: Counter::default(),
            dropped: Family::default(),
            subscriber_lag: Gauge::default(),
            devices_held: Gauge::default(),
            subscriptions_refused: Family::default(),
            router_filters: Gauge::default(),
            persistent_sessions: Gauge::default(),
            outbox_bytes: Gauge::default(),
            database_syncs: Counter::default(),
            outbox_full: Gauge::default(),
            ingest: Family::default(),
            claims: Family::default(),
            registry: PromRegistry::default(),
        };
        registry.register(
            metric::MESSAGES,
            "Sealed messages by outcome",
            m.messages.clone(),
        );
        registry.register(
            metric::REJECTS,
            "Rejected messages by spec reason",
            m.rejects.clone(),
        );
        registry.register(
            metric::VERIFY_SECONDS,
            "Time to verify one message (parse, MAC, window, decrypt)",
            m.verify_seconds.clone(),
        );
        registry.register(
            metric::COMMIT_SECONDS,
            "Time of one group commit: its journal record, synced, then written to sled",
            m.commit_seconds.clone(),
        );
        registry.register(
            metric::BATCH_SIZE,
            "Messages per group commit",
            m.batch_size.clone(),
        );
        registry.register(
            metric::DEVICES,
            "Registered devices by state",
            m.devices.clone(),
        );
        registry.register(
            metric::CONNECTIONS,
            "Open MQTT connections",
            m.connections.clone(),
        );
        registry.register(
            metric::CONNECT_REFUSED,
            "Refused MQTT CONNECTs by reason",
            m.connect_refused.clone(),
        );
        registry.register(
            metric::AUTO_REGISTERED,
            "Devices registered by a valid MAC (auto-register)",
            m.auto_registered.clone(),
        );
        registry.register(
            metric::DROPPED,
            "Acknowledged messages a subscriber did not get, by reason",
            m.dropped.clone(),
        );
        registry.register(
            metric::SUBSCRIBER_LAG,
            "Messages the furthest-behind connected subscriber account has yet to receive",
            m.subscriber_lag.clone(),
        );
        registry.register(
            metric::DEVICES_HELD,
            "1 while device publishes are held for a lagging block-policy subscriber",
            m.devices_held.clone(),
        );
        registry.register(
            metric::SUBSCRIPTIONS_REFUSED,
            "SUBSCRIBE filters refused, by reason",
            m.subscriptions_refused.clone(),
        );
        registry.register(
            metric::ROUTER_FILTERS,
            "Distinct subscription filters handed to the router since start",
            m.router_filters.clone(),
        );
        registry.register(
            metric::PERSISTENT_SESSIONS,
            "Persistent subscriber sessions kept, connected or not",
            m.persistent_sessions.clone(),
        );
        registry.register(
            metric::OUTBOX_BYTES,
            "Bytes the durable outbox holds for persistent sessions",
            m.outbox_bytes.clone(),
        );
        registry.register(
            metric::DATABASE_SYNCS,
            "Disk syncs (fdatasync) after sled's flush, one per group commit and per durable admin write",
            m.database_syncs.clone(),
        );
        registry.register(
            metric::OUTBOX_FULL,
            "1 while device publishes are held because the outbox is at sessions.outbox_max_bytes",
            m.outbox_full.clone(),
        );
        registry.register(
            metric::INGEST_REQUESTS,
            "HTTP ingest requests by answer (events::ingest_answer)",
            m.ingest.clone(),
        );
        registry.register(
            metric::CLAIMS,
            "Device claims by outcome (events::claim_outcome)",
            m.claims.clone(),
        );
        // Pre-create every reason so dashboards see zeros, not gaps.
        for r in RejectReason::ALL {
            let _ = m.rejects.get_or_create(&[("reason", r.as_str())]);
        }
        for r in dropped::ALL {
            let _ = m.dropped.get_or_create(&[("reason", r)]);
        }
        for o in claim_outcome::ALL {
            let _ = m.claims.get_or_create(&[("outcome", o)]);
        }
        for a in ingest_answer::ALL {
            let _ = m.ingest.get_or_create(&[("answer", a)]);
        }
        for r in subscription_refused::ALL {
            let _ = m.subscriptions_refused.get_or_create(&[("reason", r)]);
        }
        Metrics { registry, ..m }
    }

    pub fn message(&self, result: &'static str) {
        self.messages.get_or_create(&[("result", result)]).inc();
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejects
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Counts messages a subscriber did not get (`reason` from `events::dropped`).
    pub fn dropped(&self, reason: &'static str, messages: u64) {
        self.dropped
            .get_or_create(&[("reason", reason)])
            .inc_by(messages);
    }

    /// Counts one refused SUBSCRIBE filter (`reason` from
    /// `events::subscription_refused`).
    pub fn subscription_refused(&self, reason: &'static str) {
        self.subscriptions_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts one claim (`outcome` from `events::claim_outcome`).
    pub fn claim(&self, outcome: &'static str) {
        self.claims.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts one HTTP ingest answer (`answer` from `events::ingest_answer`).
    pub fn ingest(&self, answer: &'static str) {
        self.ingest.get_or_create(&[("answer", answer)]).inc();
    }

    pub fn connect_refused(&self, reason: crate::events::ConnectRefusal) {
        self.connect_refused
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    pub fn set_devices(&self, active: u64, revoked: u64) {
        self.devices
            .get_or_create(&[("state", "active")])
            .set(active as i64);
        self.devices
            .get_or_create(&[("state", "revoked")])
            .set(revoked as i64);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
