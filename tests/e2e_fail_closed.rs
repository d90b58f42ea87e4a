//! When sled cannot be written, nothing reaches `clean/`: every message is
//! refused as `store_unavailable` and `/readyz` turns 503. The failure is
//! real: the gateway runs with a file-size limit and sled's writes hit EFBIG.

mod common;

use common::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_fails_closed() {
    let gw = Gateway::start_with_file_size_limit(64 * 1024);
    let creds = gw.add_device("esp32-f").await;
    // A tenant and its pairing code, for a claim once the store is gone.
    let code = gw
        .admin_call(|op| {
            let t = op.add_tenant("acme").unwrap();
            let acme = sealgate::admin::client::AdminClient::new(op.base(), &t.api_key);
            acme.pairing_code(None).unwrap().pairing_code
        })
        .await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let dev = Client::device(gw.mqtt_port, &creds).await;
    assert_eq!(gw.http_get("/readyz").await.0, 200);
    // Each message yields exactly one publish on `#`: its clean message or
    // its event. Publish until the store gives out.
    let mut accepted = 0u64;
    let mut failed_at = None;
    for nonce in 1..=20_000u64 {
        let m = common::seal(&creds, "t", nonce, &[b'x'; 100]);
        dev.client
            .publish("sealed/esp32-f/t", QoS::AtMostOnce, false, m)
            .await
            .unwrap();
        let (topic, body) = sub.next_publish().await;
        if topic == "clean/esp32-f/t" {
            accepted += 1;
            continue;
        }
        assert_eq!(topic, "sealgate/events/esp32-f");
        assert_eq!(
            event(&body)["reason"],
            "store_unavailable",
            "{}",
            event(&body)
        );
        failed_at = Some(nonce);
        break;
    }
    let failed_at =
        failed_at.expect("the store never failed: raise the message count or lower the limit");
    assert!(
        accepted > 0,
        "the store failed before anything was accepted"
    );
    // From now on the gateway refuses everything, and says it is not ready.
    assert_eq!(
        gw.http_get("/readyz").await,
        (503, "store_unavailable\n".to_owned())
    );
    for nonce in failed_at + 1..failed_at + 20 {
        let m = common::seal(&creds, "t", nonce, b"after the failure");
        dev.client
            .publish("sealed/esp32-f/t", QoS::AtMostOnce, false, m)
            .await
            .unwrap();
        let (topic, body) = sub.next_publish().await;
        assert_eq!(topic, "sealgate/events/esp32-f");
        assert_eq!(event(&body)["reason"], "store_unavailable");
    }
    assert_eq!(
        gw.metric("sealgate_messages_total{result=\"accepted\"}")
            .await,
        accepted as f64
    );
    assert!(
        gw.metric("sealgate_rejects_total{reason=\"store_unavailable\"}")
            .await
            >= 20.0
    );
    // MQTT 3.1.1 has no negative ack: a QoS 1 message is not acknowledged,
    // so the device keeps it and resends later. Its outcome still shows up.
    let m = common::seal(&creds, "t", failed_at + 100, b"qos1");
    dev.client
        .publish("sealed/esp32-f/t", QoS::AtLeastOnce, false, m)
        .await
        .unwrap();
    let (topic, _) = sub.next_publish().await;
    assert_eq!(topic, "sealgate/events/esp32-f");
    // A device claim with a valid MAC fails closed too: 503, and the
    // device is not claimed.
    let keys = sealgate::envelope::DeviceKeys::from_secret(
        &hex::decode(&creds.secret).unwrap().try_into().unwrap(),
    );
    let mac = sealgate::envelope::claim_mac(&keys.auth, "esp32-f", &code, 1);
    let claimed = gw
        .admin_call(move |op| op.claim("esp32-f", &code, 1, &hex::encode(mac)))
        .await;
    assert_eq!(claimed.unwrap_err().status(), Some(503));
    let shown = gw.admin_call(|op| op.show("esp32-f")).await.unwrap();
    assert_eq!(shown.owner, None);
}
