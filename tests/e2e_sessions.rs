//! Sessions through the front door: a persistent subscriber gets what was
//! published while it was away, a clean one does not, and a client that
//! vanishes without DISCONNECT has its will published (where it may publish).

mod common;

use common::*;
use rumqttc::{LastWill, QoS};

fn gateway() -> Gateway {
    Gateway::start_with_dash_and_ops()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscriber_gets_what_it_missed() {
    let gw = gateway();
    let creds = gw.add_device("esp32-s").await;
    let mut o = options(gw.mqtt_port, "dash-persistent", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    let (mut sub, r) = Client::connect_with(o.clone()).await;
    r.unwrap();
    sub.subscribe(&["clean/#"]).await;
    sub.client.disconnect().await.unwrap();
    loop {
        if let Seen::Closed(_) = sub.next().await {
            break;
        }
    }
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked(
        "sealed/esp32-s/t",
        common::seal(&creds, "t", 1, b"while away"),
    )
    .await;
    // Back with the same client id and clean session off: the message waits.
    let (mut sub, r) = Client::connect_with(o).await;
    r.unwrap();
    assert_eq!(
        sub.next_publish().await,
        ("clean/esp32-s/t".into(), b"while away".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_has_its_will_published() {
    let gw = gateway();
    let (mut watcher, r) = Client::connect(gw.mqtt_port, "ops-watch", "ops", "ops-password").await;
    r.unwrap();
    watcher.subscribe(&["status/#"]).await;
    let mut o = options(gw.mqtt_port, "ops-1", "ops", "ops-password");
    o.set_last_will(LastWill::new(
        "status/ops-1",
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    let (_client, mut el) = rumqttc::AsyncClient::new(o, 10);
    let (connected, mut is_connected) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut connected = Some(connected);
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) = el.poll().await {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    (&mut is_connected).await.unwrap();
    // Vanish without DISCONNECT: the event loop, and with it the socket, goes away.
    task.abort();
    assert_eq!(
        watcher.next_publish().await,
        ("status/ops-1".into(), b"offline".to_vec())
    );
}
