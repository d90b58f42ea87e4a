//! The wills waiting for their MQTT 5 delay, kept in the gateway's one sled
//! database (tree `wills`) so that a restart, graceful or `kill -9`, does
//! not drop them: written and flushed when a will starts waiting, removed
//! when it is published or its client is back, read at startup
//! (`wills::restore`).
//!
//! A record is keyed by the session's router client id and holds the will
//! as the outbox keeps a message (`outbox::Entry`: topic, payload, QoS,
//! retain, the screened properties), whether it is sealed, its deadline in
//! wall-clock time (no monotonic clock outlives a restart) and its delay,
//! which bounds what is left should the clock have stepped back.

use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::LastWill;

use super::wills::Will;
use crate::outbox::Entry;

const VERSION: u8 = 1;
const SEALED: u8 = 0x01;
/// Version, flags, deadline, delay; the entry follows.
const HEADER: usize = 1 + 1 + 8 + 8;

pub(super) struct WillStore {
    tree: sled::Tree,
    db: crate::database::Database,
}

impl WillStore {
    pub const TREE: &'static str = "wills";

    pub fn open(db: &crate::database::Database) -> Result<WillStore, sled::Error> {
        Ok(WillStore {
            tree: db.open_tree(Self::TREE)?,
            db: db.clone(),
        })
    }

    /// Writes the will of `id`, due its delay after `now_ms`, over any
    /// kept before; durable once `sync`ed.
    pub fn put(&self, id: &str, will: &Will, now_ms: u64) -> Result<(), sled::Error> {
        self.tree.insert(id.as_bytes(), encode(will, now_ms))?;
        Ok(())
    }

    /// Removes the will of `id`; whether one was kept.
    pub fn remove(&self, id: &str) -> Result<bool, sled::Error> {
        Ok(self.tree.remove(id.as_bytes())?.is_some())
    }

    /// Makes what was written durable (synced, as `database.durability`
    /// says): the journal covers only the verifier's trees, and sled's
    /// checkpoint comes up to a second later.
    pub async fn sync(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await
    }

    /// Every will kept, by router client id, with what is left of its delay
    /// at `now_ms` as its delay (zero: due). A record this build cannot read
    /// is skipped, and left for a build that can.
    pub fn load(&self, now_ms: u64) -> Result<Vec<(String, Will)>, sled::Error> {
        let mut kept = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            match (String::from_utf8(k.to_vec()), decode(&v, now_ms)) {
                (Ok(id), Some(will)) => kept.push((id, will)),
                _ => tracing::warn!("Skipped an unreadable waiting will record."),
            }
        }
        Ok(kept)
    }
}

fn encode(will: &Will, now_ms: u64) -> Vec<u8> {
    let delay_ms = u64::try_from(will.delay.as_millis()).unwrap_or(u64::MAX);
    let mut v = Vec::with_capacity(HEADER);
    v.push(VERSION);
    v.push(if will.sealed { SEALED } else { 0 });
    v.extend_from_slice(&now_ms.saturating_add(delay_ms).to_be_bytes());
    v.extend_from_slice(&delay_ms.to_be_bytes());
    Entry {
        // Checked as a topic name (UTF-8) at CONNECT.
        topic: String::from_utf8_lossy(&will.will.topic).into_owned(),
        payload: will.will.message.clone(),
        qos: will.will.qos as u8,
        retain: will.will.retain,
        at_ms: now_ms,
        origin: None,
        props: will.props.clone(),
    }
    .append_to(&mut v);
    v
}

fn decode(v: &[u8], now_ms: u64) -> Option<Will> {
    let (head, rest) = v.split_at_checked(HEADER)?;
    if head[0] != VERSION {
        return None;
    }
    let deadline = u64::from_be_bytes(head[2..10].try_into().ok()?);
    let delay = u64::from_be_bytes(head[10..18].try_into().ok()?);
    let e = Entry::read(rest)?;
    Some(Will {
        will: LastWill {
            topic: Bytes::from(e.topic),
            message: e.payload,
            qos: rumqttd::protocol::qos(e.qos)?,
            retain: e.retain,
        },
        sealed: head[1] & SEALED != 0,
        delay: Duration::from_millis(left(deadline, delay, now_ms)),
        props: e.props,
    })
}

/// What is left of a delay of `delay_ms` due at `deadline_ms`: nothing once
/// due, and never more than the delay, should the clock have stepped back.
fn left(deadline_ms: u64, delay_ms: u64, now_ms: u64) -> u64 {
    deadline_ms.saturating_sub(now_ms).min(delay_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{PublishProperties, QoS};

    fn will(sealed: bool) -> Will {
        Will {
            will: LastWill {
                topic: Bytes::from_static(b"status/w"),
                message: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: true,
            },
            sealed,
            delay: Duration::from_secs(30),
            props: Some(Box::new(PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("status/reply".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                ..Default::default()
            })),
        }
    }

    /// A restart must hand on exactly what the will was: the sockets cannot
    /// tell a QoS 2 will from a QoS 1 one under a QoS 1 subscription.
    #[test]
    fn a_kept_will_reads_back_as_it_was_with_what_is_left_of_its_delay() {
        for sealed in [false, true] {
            let w = will(sealed);
            let back = decode(&encode(&w, 1_000_000), 1_010_000).expect("readable");
            assert_eq!(back.will, w.will);
            assert_eq!(back.sealed, sealed);
            assert_eq!(back.props, w.props);
            assert_eq!(back.delay, Duration::from_secs(20));
        }
        let back = decode(&encode(&will(false), 1_000_000), 1_031_000).expect("readable");
        assert!(back.delay.is_zero(), "past its deadline: due");
        assert!(decode(b"\x02", 0).is_none());
    }

    #[test]
    fn a_clock_that_stepped_back_does_not_lengthen_the_wait() {
        assert_eq!(left(40_000, 30_000, 0), 30_000);
        assert_eq!(left(40_000, 30_000, 25_000), 15_000);
        assert_eq!(left(40_000, 30_000, 50_000), 0);
    }
}
