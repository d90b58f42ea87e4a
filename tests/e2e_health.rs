//! A gateway whose router or verifier thread died must not stay up
//! refusing everything: it exits non-zero so that its supervisor restarts
//! it. The deaths are real panics on those threads, selected by fail points.

mod common;

use common::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_router_ends_the_process_with_an_error() {
    let gw = Gateway::start(&[("SEALGATE_FAILPOINTS", "router_panic")]);
    let (status, log) = gw.wait_exit().await;
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("A critical thread died") && l.contains("router-")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_verifier_ends_the_process_without_acknowledging() {
    let gw = Gateway::start(&[("SEALGATE_FAILPOINTS", "verifier_panic")]);
    let creds = gw.add_device("esp32-v").await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.client
        .publish(
            "sealed/esp32-v/t",
            QoS::AtLeastOnce,
            false,
            seal(&creds, "t", 1, b"x"),
        )
        .await
        .unwrap();
    let (status, log) = gw.wait_exit().await;
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("A critical thread died") && l.contains("verifier")),
        "{log:#?}"
    );
    // The message was never acknowledged: the device still holds it.
    loop {
        match dev.next().await {
            Seen::PubAck(_) => panic!("a message was acknowledged by a dead verifier"),
            Seen::Closed(_) => break,
            _ => {}
        }
    }
}
