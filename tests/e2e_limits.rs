//! Hostile clients cannot starve a well-behaved device: idle sockets that
//! never send CONNECT, a device flooding far above its rate, an oversized
//! packet. Each is refused as specified while the good device's every
//! message is delivered.

mod common;

use common::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_disturb_a_good_device() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let gw = Gateway::start_with_config(
        "[limits]\ndevice_rate = 10.0\ndevice_burst = 10\n[mqtt]\nmax_packet_bytes = 4096\nconnect_timeout_ms = 2000\n",
        &[],
    );
    let good = gw.add_device("good").await;
    let flood = gw.add_device("flood").await;
    let big = gw.add_device("big").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;

    // 1,000 sockets that connect and never say a word.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", gw.mqtt_port))
                .await
                .unwrap(),
        );
    }

    // A device publishing QoS 0 as fast as its socket takes it, far above
    // its rate of 10/s, until the gateway cuts it off (its event loop ends,
    // so the next publish fails).
    let flooder = Client::device(gw.mqtt_port, &flood).await;
    let flood_task = {
        let c = flooder.client.clone();
        let flood = flood.clone();
        tokio::spawn(async move {
            for nonce in 1..=5_000u64 {
                let m = common::seal(&flood, "t", nonce, b"flood");
                if c.publish("sealed/flood/t", QoS::AtMostOnce, false, m)
                    .await
                    .is_err()
                {
                    return true;
                }
            }
            false
        })
    };

    // An oversized packet from another device.
    let mut bigc = Client::device(gw.mqtt_port, &big).await;
    let huge = common::seal(&big, "t", 1, &vec![b'x'; 5000]);
    bigc.client
        .publish("sealed/big/t", QoS::AtLeastOnce, false, huge)
        .await
        .unwrap();

    // Meanwhile the good device delivers every message, in order; eight
    // fit in its burst of ten, so it never needs to wait for its own limit.
    let mut dev = Client::device(gw.mqtt_port, &good).await;
    let mut events = std::collections::HashMap::<String, u32>::new();
    for nonce in 1..=8u64 {
        let body = format!("good {nonce}");
        dev.publish_acked(
            "sealed/good/t",
            common::seal(&good, "t", nonce, body.as_bytes()),
        )
        .await;
        loop {
            let (t, p) = sub.next_publish().await;
            if t == "clean/good/t" {
                assert_eq!(p, body.into_bytes());
                break;
            }
            if let Some(dev) = t.strip_prefix("sealgate/events/") {
                *events
                    .entry(format!("{dev}:{}", event(&p)["reason"].as_str().unwrap()))
                    .or_default() += 1;
            }
            // clean/flood/t: the flooder's admitted messages.
        }
    }
    assert!(
        flood_task.await.unwrap(),
        "the flooder sent 5,000 messages without being cut off"
    );

    // The oversized packet closed its sender with a too_large event.
    loop {
        if let Seen::Closed(_) = bigc.next().await {
            break;
        }
    }
    // The flooder was rate limited (events at most once a second) and cut off.
    loop {
        if events.contains_key("big:too_large") && events.contains_key("flood:rate_limited") {
            break;
        }
        let (t, p) = sub.next_publish().await;
        if let Some(dev) = t.strip_prefix("sealgate/events/") {
            *events
                .entry(format!("{dev}:{}", event(&p)["reason"].as_str().unwrap()))
                .or_default() += 1;
        }
        if events.contains_key("big:too_large") && events.contains_key("flood:rate_limited") {
            break;
        }
    }
    assert!(events["flood:rate_limited"] <= 10, "{events:?}");
    assert!(
        gw.metric("sealgate_rejects_total{reason=\"rate_limited\"}")
            .await
            > 100.0
    );
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"too_large\"}")
            .await,
        1.0
    );
    // Idle sockets were closed at the CONNECT timeout, without a CONNECT.
    let mut buf = [0u8; 1];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(WAIT, idle[0].read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "an idle socket got data instead of being closed");
    assert!(
        gw.metric("sealgate_connect_refused_total{reason=\"connect_timeout\"}")
            .await
            >= 1.0
    );
}
