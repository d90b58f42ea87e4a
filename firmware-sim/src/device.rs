//! One simulated ESP32: its MQTT connection and its publish loop.
//!
//! Each device has its own connection, as real devices do, so the gateway
//! sees the fleet's true connection count, per-connection ordering and
//! per-device authentication.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, MqttOptions, NetworkOptions, Outgoing, QoS,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::collector::first_connack;
use crate::fleet::SimDevice;
use crate::ledger::{Ledger, Tally};
use crate::message::{self, SealStyle};

/// `--mqtt HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for MqttTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A rumqttc connection error in terms of what to check.
pub fn describe(e: &ConnectionError, target: &MqttTarget) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the gateway refused the connection ({code:?}); check the credentials")
        }
        ConnectionError::Io(io) => format!("cannot connect to MQTT at {target}: {io}"),
        ConnectionError::NetworkTimeout => format!("MQTT at {target} did not answer in time"),
        other => format!("MQTT connection to {target} failed: {other}"),
    }
}

/// Socket options for every MQTT connection this tool opens: rumqttc's
/// defaults with TCP_NODELAY on. With Nagle's algorithm on, a small PUBLISH
/// written while an earlier one is still unacknowledged at the TCP level
/// waits for that ACK, which the peer may delay by up to 40 ms: latency
/// figures would measure the kernel, not the gateway. rumqttc applies these
/// to every socket it opens, reconnects included.
pub fn network_options() -> NetworkOptions {
    // `new`, not `default`: `default` has a connection timeout of 0 s.
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net
}

/// Connection settings common to the fleet.
#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    pub inflight: u16,
    pub max_packet: usize,
}

pub struct Link {
    pub client: AsyncClient,
    driver: JoinHandle<()>,
}

impl Link {
    /// Sends DISCONNECT (best effort) and stops the event loop.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), self.driver).await;
    }
}

/// Connects `dev` (client id = username = device id) and returns once the
/// CONNACK is in. The event loop then runs on its own task, counting PUBACK
/// and PUBCOMP, and reconnects after network errors.
pub async fn connect(
    dev: &SimDevice,
    target: &MqttTarget,
    opts: LinkOptions,
    tally: Arc<Tally>,
) -> Result<Link, String> {
    let mut mo = MqttOptions::new(dev.id.clone(), target.host.clone(), target.port);
    mo.set_credentials(dev.id.clone(), dev.mqtt_password.clone())
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(opts.max_packet, opts.max_packet)
        .set_inflight(opts.inflight.max(1));
    let (client, mut eventloop) = AsyncClient::new(mo, 64);
    eventloop.set_network_options(network_options());
    first_connack(&mut eventloop, target, &format!("device {}", dev.id)).await?;

    let id = dev.id.clone();
    let target = target.clone();
    let driver = tokio::spawn(async move {
        let mut refused_logged = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                    Tally::bump(&tally.acked);
                }
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    refused_logged = false;
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => break,
                Err(e) => {
                    Tally::bump(&tally.reconnects);
                    let refused = matches!(e, ConnectionError::ConnectionRefused(_));
                    if !refused || !refused_logged {
                        tracing::warn!("device {id}: {}; reconnecting", describe(&e, &target));
                    }
                    refused_logged |= refused;
                    let pause = if refused { 1000 } else { 200 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    });
    Ok(Link { client, driver })
}

/// What every device's publish loop shares.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub sealed_prefix: String,
    pub stream: String,
    pub qos: QoS,
    pub style: SealStyle,
    pub payload_bytes: usize,
    /// Messages per second for one device; 0 for back to back.
    pub per_device_rate: f64,
    pub start: Instant,
    pub end: Instant,
}

/// Publishes from `plan.start` (shifted by `offset`, so the fleet's sends are
/// spread evenly instead of arriving in lock-step) until `plan.end` or until
/// `stop` turns true. Sends follow a fixed schedule: a device that fell behind
/// (inflight window full) catches up back to back rather than drifting.
#[allow(clippy::too_many_arguments)]
pub async fn publish_loop(
    index: usize,
    dev: Arc<SimDevice>,
    client: AsyncClient,
    plan: Arc<PublishPlan>,
    offset: Duration,
    first_nonce: u64,
    ledger: Arc<Ledger>,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let topic = message::topic(&plan.sealed_prefix, &dev.id, &plan.stream);
    let mut k: u64 = 0;
    loop {
        if plan.per_device_rate > 0.0 {
            let due =
                plan.start + offset + Duration::from_secs_f64(k as f64 / plan.per_device_rate);
            if due >= plan.end {
                break;
            }
            if due > Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        if *stop.borrow() || Instant::now() >= plan.end {
            break;
        }
        let nonce = first_nonce + k;
        let pt = message::plaintext(nonce, plan.payload_bytes);
        let sealed = match message::seal_as(&dev, &plan.stream, nonce, &pt, plan.style) {
            Ok(sealed) => sealed,
            Err(e) => {
                Tally::bump(&tally.publish_errors);
                tracing::warn!("device {}: {e}", dev.id);
                break;
            }
        };
        ledger.record(index, nonce, Instant::now().into_std());
        // Not raced against the deadline: a cancelled `publish` may already
        // have handed the message to the event loop, which would then send
        // a message the ledger no longer knows. It completes as soon as the
        // client's queue has room, i.e. when the gateway takes more.
        match client.publish(topic.clone(), plan.qos, false, sealed).await {
            Ok(()) => Tally::bump(&tally.sent),
            Err(e) => {
                ledger.unrecord(index, nonce);
                Tally::bump(&tally.publish_errors);
                tracing::warn!("device {}: publish failed: {e}", dev.id);
                break;
            }
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_display() {
        let t = MqttTarget {
            host: "127.0.0.1".into(),
            port: 1883,
        };
        assert_eq!(t.to_string(), "127.0.0.1:1883");
        let t = MqttTarget {
            host: "::1".into(),
            port: 1883,
        };
        assert_eq!(t.to_string(), "[::1]:1883");
    }
}
