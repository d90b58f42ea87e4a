//! The dashboard's side: one subscriber on `clean/#` and the events topic,
//! turning what the gateway publishes into [`Observed`] items for whoever
//! keeps score (the load matcher or an attack).
//!
//! Receive times are taken here, as each packet comes off the socket, so the
//! consumer's own pace does not inflate latency.

use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, SubscribeFilter, SubscribeReasonCode,
};
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::device::{describe, network_options, MqttTarget};
use crate::message::device_of;

/// Topic prefixes, as configured on the gateway (`[topics]`).
#[derive(Debug, Clone)]
pub struct Topics {
    pub sealed: String,
    pub clean: String,
    pub events: String,
}

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub user: String,
    pub password: String,
    /// Connect with a persistent session (clean session 0), which the
    /// gateway serves from its durable outbox rather than the router.
    pub persistent: bool,
}

#[derive(Debug, Clone)]
pub enum Observed {
    Clean {
        device_id: String,
        payload: Vec<u8>,
        at: Instant,
    },
    Event {
        device_id: String,
        reason: String,
        nonce: Option<u64>,
        at: Instant,
    },
}

/// The fields of a security event we use; the rest is ignored.
#[derive(Deserialize)]
struct EventBody {
    device_id: String,
    reason: String,
    nonce: Option<u64>,
}

pub struct Collector {
    client: AsyncClient,
    driver: JoinHandle<()>,
}

impl Collector {
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.driver.abort();
    }
}

fn filters(topics: &Topics) -> Vec<SubscribeFilter> {
    vec![
        SubscribeFilter::new(format!("{}/#", topics.clean), QoS::AtLeastOnce),
        SubscribeFilter::new(format!("{}/#", topics.events), QoS::AtLeastOnce),
    ]
}

/// Connects and subscribes, returning only once the SUBACK is in: anything a
/// device publishes afterwards is seen.
pub async fn start(
    target: &MqttTarget,
    sub: &Subscriber,
    topics: &Topics,
    tx: UnboundedSender<Observed>,
) -> Result<Collector, String> {
    let client_id = format!(
        "firmware-sim-sub-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut opts = MqttOptions::new(client_id, target.host.clone(), target.port);
    opts.set_credentials(sub.user.clone(), sub.password.clone())
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(!sub.persistent)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    eventloop.set_network_options(network_options());

    let who = format!("subscriber {:?}", sub.user);
    first_connack(&mut eventloop, target, &who).await?;
    client
        .subscribe_many(filters(topics))
        .await
        .map_err(|e| format!("{who}: cannot subscribe: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| format!("{who}: no SUBACK within 10 s"))?
            .map_err(|e| format!("{who}: {}", describe(&e, target)))?;
        match ev {
            Event::Incoming(Incoming::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(format!(
                        "{who} may not subscribe to {t}/# and {e}/#: use a dashboard account \
                         (SEALGATE_USERS on the gateway)",
                        t = topics.clean,
                        e = topics.events
                    ));
                }
                break;
            }
            Event::Incoming(Incoming::Publish(p)) => forward(&p.topic, &p.payload, topics, &tx),
            _ => {}
        }
    }

    let topics = topics.clone();
    let resub = client.clone();
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    forward(&p.topic, &p.payload, &topics, &tx)
                }
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    // A clean session forgets subscriptions; ask again
                    // without blocking the loop that must carry the request.
                    if let Err(e) = resub.try_subscribe_many(filters(&topics)) {
                        tracing::warn!("subscriber: cannot resubscribe: {e}");
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("subscriber connection lost: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok(Collector { client, driver })
}

/// Polls until the first CONNACK, translating rumqttc's errors into what the
/// operator should check.
pub async fn first_connack(
    eventloop: &mut EventLoop,
    target: &MqttTarget,
    who: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| format!("{who}: no CONNACK from {target} within 15 s"))?;
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("{who}: {}", describe(&e, target))),
        }
    }
}

fn forward(topic: &str, payload: &[u8], topics: &Topics, tx: &UnboundedSender<Observed>) {
    let at = Instant::now();
    let observed = if let Some(id) = device_of(&topics.clean, topic) {
        Observed::Clean {
            device_id: id.to_owned(),
            payload: payload.to_vec(),
            at,
        }
    } else if device_of(&topics.events, topic).is_some() {
        match serde_json::from_slice::<EventBody>(payload) {
            Ok(e) => Observed::Event {
                device_id: e.device_id,
                reason: e.reason,
                nonce: e.nonce,
                at,
            },
            Err(e) => {
                tracing::warn!(topic, "event that does not parse: {e}");
                return;
            }
        }
    } else {
        return;
    };
    // The receiver is gone only while shutting down.
    let _ = tx.send(observed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            sealed: "sealed".into(),
            clean: "clean".into(),
            events: "sealgate/events".into(),
        }
    }

    #[test]
    fn forwards_clean_and_events() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        forward("clean/d1/telemetry", b"{\"n\":1}", &topics(), &tx);
        forward(
            "sealgate/events/d1",
            br#"{"at":"x","device_id":"d1","stream":"telemetry","reason":"bad_mac","nonce":5}"#,
            &topics(),
            &tx,
        );
        forward("sealgate/events/d1", b"not json", &topics(), &tx);
        forward("other/d1", b"x", &topics(), &tx);
        match rx.try_recv() {
            Ok(Observed::Clean {
                device_id, payload, ..
            }) => {
                assert_eq!(device_id, "d1");
                assert_eq!(payload, b"{\"n\":1}");
            }
            other => panic!("{other:?}"),
        }
        match rx.try_recv() {
            Ok(Observed::Event {
                device_id,
                reason,
                nonce,
                ..
            }) => {
                assert_eq!(
                    (device_id.as_str(), reason.as_str(), nonce),
                    ("d1", "bad_mac", Some(5))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }
}
