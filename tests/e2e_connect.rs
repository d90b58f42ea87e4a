//! CONNECT authentication with rumqttc and with mosquitto as a foreign client.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_not_authorized() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-c").await;
    let port = gw.mqtt_port;
    let refused = |r: Result<(), String>| assert!(r.unwrap_err().contains("NotAuthorized"));
    // Wrong token, unknown device, wrong subscriber password, client id of another device.
    refused(
        Client::connect(port, "esp32-c", "esp32-c", "v1:0:00")
            .await
            .1,
    );
    refused(
        Client::connect(port, "ghost", "ghost", &creds.mqtt_password)
            .await
            .1,
    );
    refused(Client::connect(port, "d", SUB_USER, "nope").await.1);
    refused(
        Client::connect(port, "esp32-other", "esp32-c", &creds.mqtt_password)
            .await
            .1,
    );
    // An expired token.
    let master = sealgate::envelope::MasterKey::from_hex(VECTOR_MASTER).unwrap();
    let keys = master.device_keys("esp32-c", 1);
    let expired = sealgate::envelope::connect_token(&keys, "esp32-c", 1_000_000);
    refused(
        Client::connect(port, "esp32-c", "esp32-c", &expired)
            .await
            .1,
    );
    // Upper-case client id and username are the same device.
    let (_c, ok) = Client::connect(port, "ESP32-C", "ESP32-C", &creds.mqtt_password).await;
    ok.unwrap();
    let future = sealgate::envelope::connect_token(&keys, "esp32-c", 4_000_000_000);
    let (_c2, ok) = Client::connect(port, "esp32-c", "esp32-c", &future).await;
    ok.unwrap();
    assert!(
        gw.metric("sealgate_connect_refused_total{reason=\"bad_token\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        gw.metric("sealgate_connect_refused_total{reason=\"expired_token\"}")
            .await,
        1.0
    );
}

fn mosquitto(bin: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin} not installed ({e}); .ci/run installs mosquitto-clients"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_anonymous_refused_and_subscriber_receives() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-m").await;
    let port = gw.mqtt_port.to_string();
    // Anonymous publish is refused at CONNECT.
    let anon = tokio::task::spawn_blocking({
        let port = port.clone();
        move || {
            mosquitto(
                "mosquitto_pub",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-t",
                    "x",
                    "-m",
                    "y",
                    "-V",
                    "mqttv311",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(!anon.status.success());
    let err = String::from_utf8_lossy(&anon.stderr).to_lowercase();
    assert!(err.contains("not authori"), "{err}");
    // mosquitto_sub as the dashboard (MQTT 5) receives one clean message.
    let sub = {
        let port = port.clone();
        tokio::task::spawn_blocking(move || {
            mosquitto(
                "mosquitto_sub",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-u",
                    SUB_USER,
                    "-P",
                    SUB_PASS,
                    "-t",
                    "clean/#",
                    "-v",
                    "-C",
                    "1",
                    "-W",
                    "20",
                    "-V",
                    "mqttv5",
                    "-q",
                    "1",
                ],
            )
        })
    };
    // Wait until mosquitto_sub's subscription is in place, observed through
    // a second subscriber receiving the probe only after both are connected.
    let mut probe = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let mut nonce = 1;
    // Publish until mosquitto_sub got one (it may subscribe after our first).
    let out = loop {
        dev.publish_acked(
            "sealed/esp32-m/t",
            common::seal(&creds, "t", nonce, b"{\"t\":21}"),
        )
        .await;
        probe.next_publish().await;
        nonce += 1;
        if sub.is_finished() || nonce > 200 {
            break sub.await.unwrap();
        }
        tokio::task::yield_now().await;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "clean/esp32-m/t {\"t\":21}"
    );
}

/// The MQTT 5 CONNACK of a dashboard account: `(server keep alive,
/// assigned client identifier)`.
async fn v5_connack(
    port: u16,
    client_id: &str,
    keep_alive_secs: u64,
) -> (Option<u16>, Option<String>) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(SUB_USER, SUB_PASS);
    o.set_keep_alive(std::time::Duration::from_secs(keep_alive_secs));
    let (_c, mut el) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return match ack.properties {
                    Some(p) => (p.server_keep_alive, p.assigned_client_identifier),
                    None => (None, None),
                };
            }
            Ok(_) => {}
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// MQTT 5 clients hear what the gateway chose for them: the keep-alive it
/// holds them to when it is not the one they asked for, and the client id it
/// assigned when they sent none, without the gateway's own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt5_connack_tells_the_keep_alive_and_the_assigned_client_id() {
    let gw = Gateway::start_with_config("[limits]\nmax_keep_alive_secs = 600\n", &[]);
    assert_eq!(
        v5_connack(gw.mqtt_port, "dash-ka", 3600).await,
        (Some(600), None)
    );
    assert_eq!(v5_connack(gw.mqtt_port, "dash-ok", 30).await, (None, None));
    let (ka, assigned) = v5_connack(gw.mqtt_port, "", 30).await;
    assert_eq!(ka, None);
    let assigned = assigned.expect("an assigned client identifier");
    assert!(
        assigned.len() == 16 && assigned.chars().all(|c| c.is_ascii_hexdigit()),
        "{assigned:?}"
    );
}
