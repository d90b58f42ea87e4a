//! Publishing into the router: verified plaintext on `clean/...`, security
//! events on `sealgate/events/...`, unsealed payloads on `unverified/...`.
//!
//! A batch is queued in the link's buffer and handed to the router with one
//! wake-up, so a group commit costs one router event, not one per message.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkError, LinkTx};
use rumqttd::protocol::{Packet, Publish};

use crate::config::Topics;
use crate::events::{SecurityEvent, INVALID_DEVICE};
use crate::lag::Lag;

pub struct Republisher {
    link: LinkTx,
    topics: Topics,
    pending: Vec<Publish>,
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

    /// Queues a message for an exact topic (already under its prefix).
    pub fn queue(&mut self, topic: String, payload: Bytes, retain: bool) {
        self.pending
            .push(Publish::new(Bytes::from(topic), payload, retain));
    }

    /// Queues a security event. Events are never retained.
    pub fn queue_event(&mut self, event: &SecurityEvent) {
        let device = if event.device_id.is_empty() {
            INVALID_DEVICE
        } else {
            &event.device_id
        };
        let topic = format!("{}/{}", self.topics.events, device);
        let body = serde_json::to_vec(event).expect("event serialises");
        self.queue(topic, Bytes::from(body), false);
    }

    /// Hands everything queued to the router with one wake-up. Blocks while
    /// the router's channel is full, which is the backpressure we want.
    pub fn flush(&mut self) -> Result<(), Box<LinkError>> {
        self.lag
            .published(self.pending.iter().map(|p| &p.topic[..]));
        let Some(last) = self.pending.pop() else {
            return Ok(());
        };
        {
            let mut buf = self.link.buffer();
            for p in self.pending.drain(..) {
                buf.push_back(Packet::Publish(p, None));
            }
        }
        send_now(&mut self.link, Packet::Publish(last, None))
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
