//! Replay state survives `kill -9`; SIGTERM delivers everything acknowledged.

mod common;

use common::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_delivered_again_after_kill_9() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-k").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let mut sent = Vec::new();
    for nonce in 1..=50u64 {
        let m = common::seal(&creds, "t", nonce, format!("reading {nonce}").as_bytes());
        dev.publish_acked("sealed/esp32-k/t", m.clone()).await;
        sent.push(m);
    }
    for nonce in 1..=50u64 {
        assert_eq!(
            sub.next_publish().await.1,
            format!("reading {nonce}").into_bytes()
        );
    }
    drop((dev, sub));
    let gw = gw.kill9_and_restart();
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    for m in sent {
        dev.publish_acked("sealed/esp32-k/t", m).await;
    }
    // Every replay was refused silently; the first thing delivered is new.
    dev.publish_acked("sealed/esp32-k/t", common::seal(&creds, "t", 51, b"fresh"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"fresh");
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"duplicate\"}")
            .await,
        50.0
    );
    assert_eq!(
        gw.metric("sealgate_messages_total{result=\"accepted\"}")
            .await,
        1.0
    );
    let shown = gw.admin_call(|a| a.show("esp32-k")).await.unwrap();
    assert_eq!(shown.highest_nonce, 51);
}

/// sled's own flush (`sync_file_range`) neither flushes the disk's write
/// cache nor commits the file's size: under the default durability, a
/// PUBACK and an admin write each wait for an `fdatasync`. A power cut
/// cannot be pulled in a test; the syncs the gateway waited for can be
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_waits_for_a_disk_sync_unless_configured_otherwise() {
    const SYNCS: &str = "sealgate_database_syncs_total";
    let gw = Gateway::start(&[]);
    let before = gw.metric(SYNCS).await;
    let creds = gw.add_device("esp32-s").await;
    assert!(gw.metric(SYNCS).await > before, "a device add is synced");
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    for nonce in 1..=5u64 {
        let before = gw.metric(SYNCS).await;
        dev.publish_acked("sealed/esp32-s/t", common::seal(&creds, "t", nonce, b"x"))
            .await;
        assert!(gw.metric(SYNCS).await > before, "message {nonce}");
    }
    drop(dev);

    let gw = Gateway::start_with_config("[database]\ndurability = \"process-crash\"\n", &[]);
    let creds = gw.add_device("esp32-s").await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked("sealed/esp32-s/t", common::seal(&creds, "t", 1, b"x"))
        .await;
    assert_eq!(gw.metric(SYNCS).await, 0.0);
    assert_eq!(
        gw.metric("sealgate_messages_total{result=\"accepted\"}")
            .await,
        1.0
    );
}

/// A window reset is durable when its answer comes, and a crash right
/// after it does not bring the old window back: the journal that makes
/// batches durable holds the reset in order with the windows before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_window_stays_reset_after_kill_9() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-r").await;
    let sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    for nonce in 1..=5u64 {
        let m = common::seal(&creds, "t", nonce, format!("before {nonce}").as_bytes());
        dev.publish_acked("sealed/esp32-r/t", m).await;
    }
    let shown = gw.admin_call(|a| a.reset_nonce("esp32-r")).await.unwrap();
    assert_eq!(shown.highest_nonce, 0);
    drop((dev, sub));
    let gw = gw.kill9_and_restart();
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked("sealed/esp32-r/t", common::seal(&creds, "t", 1, b"after"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"after");
    let shown = gw.admin_call(|a| a.show("esp32-r")).await.unwrap();
    assert_eq!(shown.highest_nonce, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_every_acknowledged_message() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-t").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    const N: u64 = 3000;
    let publisher = dev.client.clone();
    let creds2 = creds.clone();
    tokio::spawn(async move {
        for nonce in 1..=N {
            let m = common::seal(&creds2, "t", nonce, &nonce.to_be_bytes());
            if publisher
                .publish("sealed/esp32-t/t", QoS::AtLeastOnce, false, m)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Shut down while traffic is in flight.
    let mut acked = 0u64;
    while acked < 200 {
        if let Seen::PubAck(_) = dev.next().await {
            acked += 1;
        }
    }
    let term = tokio::task::spawn_blocking(move || gw.terminate());
    loop {
        match dev.next().await {
            Seen::PubAck(_) => acked += 1,
            Seen::Closed(_) => break,
            _ => {}
        }
    }
    assert!(term.await.unwrap().success(), "gateway exits 0 on SIGTERM");
    // Acks are sent in order, so the first `acked` nonces were promised.
    let mut delivered = std::collections::HashSet::new();
    let mut publishes = 0u64;
    while let Some(seen) = sub.rx.recv().await {
        match seen {
            Seen::Publish(t, p) if t == "clean/esp32-t/t" => {
                publishes += 1;
                delivered.insert(u64::from_be_bytes(p.try_into().unwrap()));
            }
            Seen::Closed(_) => break,
            _ => {}
        }
    }
    assert!(
        acked < N,
        "all {N} messages were acknowledged before the shutdown: nothing was in flight"
    );
    for nonce in 1..=acked {
        assert!(
            delivered.contains(&nonce),
            "acknowledged nonce {nonce} of {acked} was not delivered"
        );
    }
    assert_eq!(
        publishes,
        delivered.len() as u64,
        "a message was delivered twice"
    );
    assert!(
        delivered.iter().all(|&n| (1..=N).contains(&n)),
        "a delivered nonce was never published"
    );
}
