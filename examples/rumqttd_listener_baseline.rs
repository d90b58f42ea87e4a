//! Benchmark baseline, not a product: what sealgate would be with rumqttd's
//! own plain TCP listener in place of the front door.
//!
//! Issue 4 asks for the front door to be measured against "the plain rumqttd
//! listener" with the same firmware-sim run. sealgate never served clients
//! through that listener, so this builds it: the same rumqttd 0.20 router
//! with the same settings as `src/broker.rs` and the embedded `broker.toml`,
//! rumqttd's MQTT 3.1.1 listener (no authentication, no topic rules, no
//! limits), and a relay on a local link that copies `sealed/...` to
//! `clean/...` unchanged, like `[verifier] passthrough = true`.
//!
//! The fair comparison is therefore sealgate in passthrough mode against
//! this: both forward without crypto or store, so what differs is who serves
//! the sockets. See docs/benchmarks.md and `benches/front-door-vs-rumqttd.sh`.
//!
//! Usage: `rumqttd_listener_baseline [--listen 127.0.0.1:18843]`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use sealgate::republish::send_now;

#[derive(Parser)]
struct Args {
    /// MQTT 3.1.1 listener (firmware-sim speaks 3.1.1).
    #[arg(long, default_value = "127.0.0.1:18843")]
    listen: SocketAddr,
}

fn main() {
    let args = Args::parse();
    // The gateway's defaults (broker.toml [router], src/broker.rs).
    let defaults = sealgate::config::Config::load(None, &[]).expect("embedded config");
    let router = RouterConfig {
        max_connections: defaults.router.max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: defaults.router.max_segment_size,
        max_segment_count: defaults.router.max_segment_count,
        ..Default::default()
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen: args.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: defaults.mqtt.connect_timeout_ms as u16,
            max_payload_size: defaults.mqtt.max_packet_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        },
    };
    let config = Config {
        router,
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    let (mut tx, mut rx) = broker.link("baseline.relay").expect("relay link");
    tx.subscribe("sealed/#").expect("relay subscription");
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay(&mut tx, &mut rx))
        .expect("relay thread");
    eprintln!("rumqttd listener baseline on {}", args.listen);
    broker.start().expect("broker");
}

/// Copies every `sealed/...` message to `clean/...`, one router event per
/// batch of whatever the router had ready, as the gateway's republisher does.
fn relay(tx: &mut LinkTx, rx: &mut LinkRx) {
    let mut batch: Vec<Publish> = Vec::new();
    loop {
        let first = match rx.recv() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("relay link closed: {e}");
                return;
            }
        };
        let mut next = first;
        loop {
            match next {
                Some(Notification::Forward(f)) => {
                    let rest = f.publish.topic.strip_prefix(b"sealed/").unwrap_or(&[]);
                    let mut topic = b"clean/".to_vec();
                    topic.extend_from_slice(rest);
                    let p = Publish::new(Bytes::from(topic), f.publish.payload, f.publish.retain);
                    batch.push(p);
                }
                Some(Notification::Unschedule) => {
                    let _ = rx.ready();
                }
                _ => {}
            }
            // Whatever else is ready now, without waiting.
            next = match rx.recv_deadline(Instant::now()) {
                Ok(n) => n,
                Err(_) => break,
            };
        }
        let Some(last) = batch.pop() else {
            continue;
        };
        tx.buffer()
            .extend(batch.drain(..).map(|p| Packet::Publish(p, None)));
        if send_now(tx, Packet::Publish(last, None)).is_err() {
            eprintln!("router gone");
            return;
        }
    }
}
