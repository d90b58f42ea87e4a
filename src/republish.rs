//! Publishing into the router: verified plaintext on `clean/...`, security
//! events on `sealgate/events/...`, unsealed payloads on `unverified/...`.
//!
//! A batch is queued in the link's buffer and handed to the router with one
//! wake-up, so a group commit costs one router event, not one per message.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkError, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};

use crate::config::Topics;
use crate::events::{SecurityEvent, INVALID_DEVICE};
use crate::lag::Lag;
use crate::outbox::Entry;

/// MQTT 5 user properties (written by `front_door::persistent`) on every
/// verified message a persistent session gets, so a consumer can tell a crash's repeat (same device and nonce)
/// from a new message. Set only here, from the gateway's own record:
/// whatever a device attaches to a sealed publish is outside its MAC and
/// never reaches `clean/`. Clean sessions cannot get a repeat (a message
/// reaches the router once; a resend after a crash is a `duplicate`), so
/// the router path carries none.
pub mod property {
    pub const DEVICE: &str = "sg-device";
    pub const KID: &str = "sg-kid";
    pub const NONCE: &str = "sg-nonce";
    /// When the gateway received the message, RFC 3339 with milliseconds.
    pub const RECEIVED: &str = "sg-received";
}

/// The outbox entry of a security event. Events are never retained.
/// `topic` as a tenant's accounts see it, under the tenant's mount:
/// `{topics.tenants}/{tenant}/{topic}`. The front door maps a tenant
/// account's filters into its mount and strips the mount from what it
/// delivers, so such an account sees `clean/...` as usual, but only its
/// own devices', and no filter can reach outside the mount.
pub fn mounted(topics: &Topics, tenant: &str, topic: &str) -> String {
    format!("{}/{tenant}/{topic}", topics.tenants)
}

pub fn event_entry(topics: &Topics, event: &SecurityEvent, at_ms: u64) -> Entry {
    let device = if event.device_id.is_empty() {
        INVALID_DEVICE
    } else {
        &event.device_id
    };
    Entry {
        topic: format!("{}/{}", topics.events, device),
        payload: Bytes::from(serde_json::to_vec(event).expect("event serialises")),
        qos: 1,
        retain: false,
        at_ms,
        origin: None,
        props: None,
    }
}

pub struct Republisher {
    link: LinkTx,
    topics: Topics,
    pending: Vec<(Publish, Option<PublishProperties>)>,
    /// Counts what goes to subscribers, so their lag is known.
    lag: Arc<Lag>,
}

impl Republisher {
    pub fn new(link: LinkTx, topics: Topics, lag: Arc<Lag>) -> Republisher {
        Republisher {
            link,
            topics,
            pending: Vec::new(),
            lag,
        }
    }

    /// Queues a message for the router, with an account's own properties,
    /// marked with its publish QoS and expiry deadline (`routed`), which the
    /// router would otherwise lose. Without the origin properties: only persistent
    /// sessions, fed from the outbox, can get a message twice (after a
    /// crash), and carrying four properties through the router costs a
    /// fifth of the gateway's throughput.
    pub fn queue(&mut self, entry: Entry) {
        self.pending.push((
            Publish::new(Bytes::from(entry.topic), entry.payload, entry.retain),
            crate::routed::mark(
                entry.qos,
                entry.retain,
                entry.props.map(|p| *p),
                entry.at_ms,
            ),
        ));
    }

    /// Gives the router back the retained messages kept in the outbox
    /// (rumqttd keeps its own in memory only). Run before the listeners
    /// open, so no client subscribes before they are back.
    pub fn restore_retained(
        &mut self,
        retained: impl Iterator<Item = Entry>,
    ) -> Result<usize, Box<LinkError>> {
        let mut n = 0;
        for e in retained {
            self.queue(e);
            n += 1;
            if n % 1024 == 0 {
                self.flush()?;
            }
        }
        self.flush()?;
        Ok(n)
    }

    /// Queues a security event decided after staging (a failed commit).
    pub fn queue_event(&mut self, event: &SecurityEvent) {
        let e = event_entry(&self.topics, event, crate::now_ms());
        self.queue(e);
    }

    /// Hands everything queued to the router with one wake-up. Blocks while
    /// the router's channel is full, which is the backpressure we want.
    pub fn flush(&mut self) -> Result<(), Box<LinkError>> {
        self.lag
            .published(self.pending.iter().map(|(p, _)| &p.topic[..]));
        let Some(last) = self.pending.pop() else {
            return Ok(());
        };
        {
            let mut buf = self.link.buffer();
            for (p, props) in self.pending.drain(..) {
                buf.push_back(Packet::Publish(p, props));
            }
        }
        send_now(&mut self.link, Packet::Publish(last.0, last.1))
    }
}

/// Runs `LinkTx::send`, which is declared async but never suspends (it uses
/// the router channel's blocking send), to completion on this thread.
/// `LinkTx::publish` would do the same but drops the retain flag.
pub fn send_now(link: &mut LinkTx, packet: Packet) -> Result<(), Box<LinkError>> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(link.send(packet));
    loop {
        if let Poll::Ready(r) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return r.map(|_| ()).map_err(Box::new);
        }
        std::thread::yield_now();
    }
}
