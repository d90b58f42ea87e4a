//! The session over an in-memory duplex stream: the front door's decisions
//! (when to acknowledge, when to close, what counts as keep-alive) without
//! a socket, with tokio's clock paused so time is exact. The router is the
//! real embedded one; the test plays the verifier.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{ConnectReturnCode, DisconnectReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::{Authenticator, Role};
use super::connect::connack;
use super::session::{End, Login, Session};
use super::Context;
use crate::config::Config;
use crate::events::RejectReason;
use crate::verifier::{AckResult, Input, Outcome};

const DEVICE: &str = "dev-1";

struct Harness {
    ctx: Arc<Context>,
    verifier: mpsc::Receiver<Input>,
    _db: (crate::database::Database, tempfile::TempDir),
}

fn harness() -> Harness {
    let config = Arc::new(Config::load(None, &[("SEALGATE_USERS", "dash:pw")]).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = crate::database::Database::for_tests(dir.path());
    let registry = crate::registry::Registry::open(&db).unwrap();
    let master = crate::envelope::MasterKey::from_bytes([7; 32]);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (verifier, rx) = mpsc::channel(16);
    let (outbox, _) = crate::outbox::Outbox::open(&db, u64::MAX).unwrap();
    let persistent =
        crate::sessions::Sessions::open(&db, outbox, config.sessions.clone(), metrics.clone())
            .unwrap();
    let ctx = Context {
        persistent,
        auth: Authenticator::new(
            master,
            registry.clone(),
            crate::accounts::Accounts::open(&db, registry, &config.users).unwrap(),
            true,
            false,
        ),
        acl: super::acl::Acl::new(&config.topics, &config.acl, &config.users),
        broker: crate::broker::Broker::start(&config.router),
        verifier,
        metrics: metrics.clone(),
        stop: CancellationToken::new(),
        verifier_done: CancellationToken::new(),
        sessions: Default::default(),
        slots: Arc::new(tokio::sync::Semaphore::new(10)),
        revoked: tokio::sync::broadcast::channel(4).0,
        lag: crate::lag::Lag::new(
            config.limits.subscriber_max_lag,
            Duration::from_secs(config.limits.max_hold_secs),
            metrics.clone(),
        ),
        subscriptions: Arc::new(super::SubscriptionCaps::new(&config.limits, metrics)),
        streams: super::limits::Streams::new(config.limits.max_streams_per_device),
        wills: super::Wills::open(&db).unwrap(),
        config,
    };
    Harness {
        ctx: Arc::new(ctx),
        verifier: rx,
        _db: (db, dir),
    }
}

/// A clean-session device's session on one end of a duplex stream; the
/// other end is the client. Returns once the client has read its CONNACK.
async fn device_session(h: &Harness, keep_alive: u16) -> (DuplexStream, JoinHandle<End>) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let login = Login {
        role: Role::Device(DEVICE.into()),
        keep_alive,
        will: None,
        rate: None,
        link: None,
        router_client_id: crate::broker::device_client_id(DEVICE),
        clean_session: true,
        resumed: false,
        taken_over: CancellationToken::new(),
        cursor: None,
        feed: None,
        max_packet: None,
        receive_maximum: None,
        mount: None,
        will_delay: Duration::ZERO,
        will_props: None,
    };
    let session = Session::new(
        h.ctx.clone(),
        V4,
        false,
        Box::pin(server),
        BytesMut::new(),
        login,
    );
    let task = tokio::spawn(session.run(connack(ConnectReturnCode::Success)));
    let mut ack = [0u8; 4];
    client.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    (client, task)
}

/// PUBLISH QoS 1 on `topic` with `pkid`.
fn publish_qos1(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let len = 2 + topic.len() + 2 + payload.len();
    assert!(len < 128);
    let mut p = vec![0x32, len as u8];
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    p.extend_from_slice(&pkid.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Whether the client can read anything within `wait` (of paused time).
async fn nothing_for(client: &mut DuplexStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(wait, client.read(&mut b))
        .await
        .is_err()
}

#[tokio::test(start_paused = true)]
async fn a_sealed_publish_is_acknowledged_only_once_its_outcome_is_final() {
    let mut h = harness();
    let (mut client, _task) = device_session(&h, 30).await;
    client
        .write_all(&publish_qos1("sealed/dev-1/t", 7, b"{}"))
        .await
        .unwrap();
    let Some(Input::Message(m)) = h.verifier.recv().await else {
        panic!("the sealed publish goes to the verifier");
    };
    assert_eq!(&m.topic[..], b"sealed/dev-1/t");
    // Nothing is acknowledged while the verifier has not answered.
    assert!(nothing_for(&mut client, Duration::from_secs(10)).await);
    let to = m.ack.expect("QoS 1 is acknowledged");
    to.tx
        .send(AckResult {
            pkid: to.pkid,
            qos2: false,
            outcome: Outcome::Delivered,
        })
        .unwrap();
    let mut puback = [0u8; 4];
    client.read_exact(&mut puback).await.unwrap();
    assert_eq!(puback, [0x40, 2, 0, 7]);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_remaining_length_ends_the_session_with_an_event() {
    let mut h = harness();
    let (mut client, task) = device_session(&h, 30).await;
    client
        .write_all(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01])
        .await
        .unwrap();
    assert_eq!(
        task.await.unwrap(),
        End::Refused(DisconnectReasonCode::MalformedPacket)
    );
    match h.verifier.recv().await {
        Some(Input::Event { reason, client }) => {
            assert_eq!(reason, RejectReason::Malformed);
            assert_eq!(client, DEVICE);
        }
        _ => panic!("a malformed event"),
    }
}

#[tokio::test(start_paused = true)]
async fn keep_alive_counts_packets_not_bytes() {
    let h = harness();
    let (mut client, task) = device_session(&h, 10).await;
    // A PUBLISH announcing 1,000 bytes, then a byte every 5 s: the client is
    // never quiet on the socket, but sends no packet for 15 s (1.5 x 10 s).
    client.write_all(&[0x30, 0xe8, 0x07]).await.unwrap();
    let start = tokio::time::Instant::now();
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = client.write_all(b"x").await;
        assert!(start.elapsed() < Duration::from_secs(60), "still open");
    }
    assert_eq!(task.await.unwrap(), End::Lost);
    assert!(start.elapsed() >= Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn a_pingreq_keeps_a_session_alive_and_is_answered() {
    let h = harness();
    let (mut client, task) = device_session(&h, 10).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(&[0xc0, 0x00]).await.unwrap();
        let mut resp = [0u8; 2];
        client.read_exact(&mut resp).await.unwrap();
        assert_eq!(resp, [0xd0, 0x00]);
    }
    assert!(
        !task.is_finished(),
        "45 s of pings keep a 10 s keep-alive open"
    );
}

#[tokio::test(start_paused = true)]
async fn a_revoked_device_is_closed_as_revoked() {
    let h = harness();
    let (_client, task) = device_session(&h, 30).await;
    h.ctx.revoked.send(DEVICE.into()).unwrap();
    assert_eq!(task.await.unwrap(), End::Revoked);
}

#[tokio::test(start_paused = true)]
async fn a_device_publishing_outside_its_topics_is_refused() {
    let mut h = harness();
    let (mut client, task) = device_session(&h, 30).await;
    client
        .write_all(&publish_qos1("sealed/other/t", 1, b"{}"))
        .await
        .unwrap();
    assert_eq!(
        task.await.unwrap(),
        End::Refused(DisconnectReasonCode::NotAuthorized)
    );
    assert!(matches!(
        h.verifier.recv().await,
        Some(Input::Event {
            reason: RejectReason::NotAllowed,
            ..
        })
    ));
}
