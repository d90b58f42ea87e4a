//! TLS (certificates made in the test) and MQTT over WebSocket (rumqttc's
//! WebSocket transport) go through the same front door and rules as TCP.

mod common;

use common::*;
use rumqttc::{MqttOptions, QoS, SubscribeReasonCode, TlsConfiguration, Transport};

fn gateway_with_tls_and_ws(dir: &std::path::Path) -> (Gateway, Vec<u8>) {
    // The client side's TLS provider (the gateway picks its own).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
    let cfg = dir.join("transports.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\nws_listen = \"127.0.0.1:0\"\n",
            dir.join("cert.pem"),
            dir.join("key.pem")
        ),
    )
    .unwrap();
    let gw = Gateway::start(&[("SEALGATE_CONFIG", cfg.to_str().unwrap())]);
    (gw, cert_pem.into_bytes())
}

fn tls(port: u16, ca: &[u8], id: &str, user: &str, pass: &str) -> MqttOptions {
    let mut o = options(port, id, user, pass);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: ca.to_vec(),
        alpn: None,
        client_auth: None,
    }));
    o
}

fn ws(port: u16, id: &str, user: &str, pass: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, format!("ws://127.0.0.1:{port}/mqtt"), port);
    o.set_credentials(user, pass);
    o.set_transport(Transport::Ws);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_device_to_websocket_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, ca) = gateway_with_tls_and_ws(dir.path());
    let (tls_port, ws_port) = (gw.tls_port.unwrap(), gw.ws_port.unwrap());
    let creds = gw.add_device("esp32-tls").await;

    // A browser-style dashboard over WebSocket, confined like any account.
    let (mut dash, r) = Client::connect_with(ws(ws_port, "dash-ws", SUB_USER, SUB_PASS)).await;
    r.expect("WebSocket CONNECT");
    let codes = dash.subscribe(&["clean/#", "#"]).await;
    assert!(matches!(codes[0], SubscribeReasonCode::Success(_)));
    assert_eq!(codes[1], SubscribeReasonCode::Failure);

    // The device over TLS; its sealed message comes out on clean/.
    let (mut dev, r) = Client::connect_with(tls(
        tls_port,
        &ca,
        "esp32-tls",
        "esp32-tls",
        &creds.mqtt_password,
    ))
    .await;
    r.expect("TLS CONNECT");
    dev.publish_acked(
        "sealed/esp32-tls/t",
        common::seal(&creds, "t", 1, b"over tls"),
    )
    .await;
    assert_eq!(
        dash.next_publish().await,
        ("clean/esp32-tls/t".into(), b"over tls".to_vec())
    );

    // Wrong credentials over TLS get the same CONNACK refusal.
    let (_c, r) =
        Client::connect_with(tls(tls_port, &ca, "esp32-tls", "esp32-tls", "v1:0:00")).await;
    assert!(r.unwrap_err().contains("NotAuthorized"));

    // A forged clean/ message over WebSocket is refused and the dashboard cut off.
    dash.client
        .publish(
            "clean/esp32-tls/t",
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();
    loop {
        match dash.next().await {
            Seen::Closed(_) => break,
            Seen::Publish(t, p) => panic!("unexpected publish {t} {p:?}"),
            _ => {}
        }
    }
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"not_allowed\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mqtt_on_the_tls_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _ca) = gateway_with_tls_and_ws(dir.path());
    let (_c, r) = Client::connect(gw.tls_port.unwrap(), "x", SUB_USER, SUB_PASS).await;
    assert!(r.is_err());
    assert!(
        gw.metric("sealgate_connect_refused_total{reason=\"handshake_failed\"}")
            .await
            >= 1.0
    );
}
