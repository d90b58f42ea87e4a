//! Tenant dashboard accounts over real MQTT: whatever filter they use (every
//! wildcard form, `$share`, a try at the mount prefix), they receive their
//! tenant's devices' clean messages and events and nothing of any other
//! device; ownership changes apply to connected accounts at once; messages
//! stay with the tenant that owned the device when they were published; a
//! deleted account is disconnected.

mod common;

use common::*;
use rumqttc::QoS;
use sealgate::admin::client::{AdminClient, Credentials};

struct World {
    gw: Gateway,
    acme: AdminClient,
    dev_acme: Credentials,
    dev_glob: Credentials,
    dev_free: Credentials,
}

async fn world() -> World {
    // A configured tenant account too: [[users]] tenant = "globex".
    let toml = format!(
        "[[users]]\nname = \"{SUB_USER}\"\npassword = \"{SUB_PASS}\"\n\n\
         [[users]]\nname = \"globex-wall\"\npassword = \"globex-pw\"\ntenant = \"globex\"\n"
    );
    // An empty SEALGATE_USERS leaves the file's [[users]] in place; unsealed
    // traffic is allowed, so `unverified/` is covered too.
    let gw = Gateway::start_with_config(
        &toml,
        &[("SEALGATE_USERS", ""), ("SEALGATE_ALLOW_UNSEALED", "true")],
    );
    let (acme, dev_acme, dev_glob, dev_free) = gw
        .admin_call(|op| {
            let a = op.add_tenant("acme").unwrap();
            op.add_tenant("globex").unwrap();
            let d_a = op.add("d-acme", None).unwrap();
            let d_g = op.add("d-glob", None).unwrap();
            let d_f = op.add("d-free", None).unwrap();
            op.assign("d-acme", "acme").unwrap();
            op.assign("d-glob", "globex").unwrap();
            (a.api_key, d_a, d_g, d_f)
        })
        .await;
    World {
        acme: AdminClient::new(&gw.http_url, &acme),
        gw,
        dev_acme,
        dev_glob,
        dev_free,
    }
}

/// A tenant account made through the API, and its password.
async fn account(gw: &Gateway, tenant: &AdminClient, name: &str) -> String {
    let (url, key) = (gw.http_url.clone(), tenant_key(tenant));
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let r: serde_json::Value = ureq::post(&format!("{url}/api/v1/users"))
            .set("Authorization", &format!("Bearer {key}"))
            .send_json(serde_json::json!({ "name": name }))
            .unwrap()
            .into_json()
            .unwrap();
        r["password"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap()
}

fn tenant_key(c: &AdminClient) -> String {
    c.token().to_owned()
}

async fn connect(gw: &Gateway, id: &str, user: &str, pass: &str, filters: &[&str]) -> Client {
    Client::account_to(gw.mqtt_port, id, user, pass, filters).await
}

/// Every device publishes one message, the other tenant's and the unowned
/// device first, and a refused message of the other tenant's device.
async fn traffic(w: &World, nonce: u64) {
    for d in [&w.dev_glob, &w.dev_free, &w.dev_acme] {
        let mut c = Client::device(w.gw.mqtt_port, d).await;
        let body = format!("{}-{nonce}", d.device_id);
        c.publish_acked(
            &format!("sealed/{}/t", d.device_id),
            seal(d, "t", nonce, body.as_bytes()),
        )
        .await;
        if d.device_id == "d-glob" {
            // Sealed under a key that is not d-glob's: a `bad_mac` event on
            // sealgate/events/d-glob.
            let wrong = Credentials {
                secret: "00".repeat(32),
                ..d.clone()
            };
            c.publish_acked("sealed/d-glob/t", seal(&wrong, "t", nonce + 1, b"x"))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_account_sees_its_own_devices_whatever_its_filter() {
    let w = world().await;
    let pass = account(&w.gw, &w.acme, "acme-wall").await;
    let filters: &[&[&str]] = &[
        &["#"],
        &["+/#"],
        &["clean/#", "sealgate/events/#"],
        &["clean/+/+"],
        &["+/+/+"],
        &["+/d-glob/#", "clean/d-acme/#"],
        &["$share/g/#"],
        &["tenants/#", "tenants/globex/#", "clean/#"],
    ];
    let mut clients = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        clients.push((
            f,
            connect(&w.gw, &format!("acme-{i}"), "acme-wall@acme", &pass, f).await,
        ));
    }
    let mut global = connect(&w.gw, "global", SUB_USER, SUB_PASS, &["clean/#"]).await;
    let mut globex = connect(&w.gw, "globex-0", "globex-wall", "globex-pw", &["#"]).await;
    traffic(&w, 1).await;

    // Each acme client's first message is acme's device's, under clean/ as
    // any dashboard sees it: nothing of globex or the unowned device came
    // before it, and both were published first.
    for (f, c) in &mut clients {
        let (topic, body) = c.next_publish().await;
        assert_eq!(
            (topic.as_str(), body.as_slice()),
            ("clean/d-acme/t", &b"d-acme-1"[..]),
            "{f:?}"
        );
    }
    // globex's account: its device's message, then its event, then nothing of acme.
    assert_eq!(
        globex.next_publish().await,
        ("clean/d-glob/t".into(), b"d-glob-1".to_vec())
    );
    let (topic, body) = globex.next_publish().await;
    assert_eq!(
        (topic.as_str(), event(&body)["reason"].as_str()),
        ("sealgate/events/d-glob", Some("bad_mac"))
    );
    // The operator's global account sees every device, once, and never a mount.
    for want in ["d-glob-1", "d-free-1", "d-acme-1"] {
        let (topic, body) = global.next_publish().await;
        assert!(topic.starts_with("clean/"), "{topic}");
        assert_eq!(body, want.as_bytes());
    }

    // Ownership changes apply to connected accounts at once: d-free joins
    // acme, d-acme leaves it. Then d-acme (now unowned) and d-free publish.
    w.gw.admin_call(|op| {
        op.assign("d-free", "acme").unwrap();
        op.release("d-acme").unwrap();
    })
    .await;
    for d in [&w.dev_acme, &w.dev_free] {
        let mut c = Client::device(w.gw.mqtt_port, d).await;
        let body = format!("{}-2", d.device_id);
        c.publish_acked(
            &format!("sealed/{}/t", d.device_id),
            seal(d, "t", 2, body.as_bytes()),
        )
        .await;
    }
    // (The client subscribed to d-glob's and d-acme's topics only cannot
    // match d-free: it is skipped.)
    for (f, c) in clients
        .iter_mut()
        .filter(|(f, _)| !f.contains(&"clean/d-acme/#"))
    {
        let (topic, body) = c.next_publish().await;
        assert_eq!(
            (topic.as_str(), body.as_slice()),
            ("clean/d-free/t", &b"d-free-2"[..]),
            "{f:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stay_with_the_tenant_that_owned_the_device_then() {
    let w = world().await;
    let pass = account(&w.gw, &w.acme, "acme-log").await;
    // A persistent session (clean session 0): it collects while offline.
    let mut opts = options(w.gw.mqtt_port, "acme-log-1", "acme-log@acme", &pass);
    opts.set_clean_session(false);
    let (mut c, r) = Client::connect_with(opts.clone()).await;
    r.unwrap();
    c.subscribe(&["clean/#"]).await;
    c.client.disconnect().await.unwrap();
    // Published while acme owns d-acme, then d-acme moves to globex.
    let mut d = Client::device(w.gw.mqtt_port, &w.dev_acme).await;
    d.publish_acked(
        "sealed/d-acme/t",
        seal(&w.dev_acme, "t", 1, b"while acme's"),
    )
    .await;
    w.gw.admin_call(|op| op.assign("d-acme", "globex").unwrap())
        .await;
    d.publish_acked(
        "sealed/d-acme/t",
        seal(&w.dev_acme, "t", 2, b"now globex's"),
    )
    .await;
    let mut globex = connect(&w.gw, "globex-1", "globex-wall", "globex-pw", &["clean/#"]).await;
    d.publish_acked(
        "sealed/d-acme/t",
        seal(&w.dev_acme, "t", 3, b"still globex's"),
    )
    .await;
    assert_eq!(globex.next_publish().await.1, b"still globex's");
    // acme's session gets what was published while acme owned the device,
    // and only that.
    let (mut c, r) = Client::connect_with(opts).await;
    r.unwrap();
    assert_eq!(
        c.next_publish().await,
        ("clean/d-acme/t".into(), b"while acme's".to_vec())
    );
    let mut mark = Client::device(w.gw.mqtt_port, &w.dev_free).await;
    w.gw.admin_call(|op| op.assign("d-free", "acme").unwrap())
        .await;
    mark.publish_acked("sealed/d-free/t", seal(&w.dev_free, "t", 1, b"mark"))
        .await;
    assert_eq!(
        c.next_publish().await.1,
        b"mark",
        "nothing of globex's time in between"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_accounts_cannot_publish_and_a_deleted_one_is_disconnected() {
    let w = world().await;
    let pass = account(&w.gw, &w.acme, "acme-tmp").await;
    let mut c = connect(&w.gw, "acme-tmp-1", "acme-tmp@acme", &pass, &["clean/#"]).await;
    // A tenant's accounts are `name@tenant`: they neither clash with nor
    // reveal device ids, and a device may take the plain name.
    w.gw.admin_call(|op| op.add("acme-tmp", None).unwrap())
        .await;
    // Publishing anywhere is refused (the connection is closed), and the
    // refusal's event reaches the tenant's dashboards, not other tenants'.
    let watch_pass = account(&w.gw, &w.acme, "acme-watch").await;
    let mut watch = connect(
        &w.gw,
        "acme-watch-1",
        "acme-watch@acme",
        &watch_pass,
        &["sealgate/events/#"],
    )
    .await;
    let mut other = connect(
        &w.gw,
        "globex-2",
        "globex-wall",
        "globex-pw",
        &["sealgate/events/#"],
    )
    .await;
    c.client
        .publish("cmd/d-acme/reboot", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    closed(&mut c).await;
    expect_event(&mut watch, "sealgate/events/acme-tmp@acme", "not_allowed").await;
    // globex's account sees its own device's refusal first: nothing of acme's came before.
    let wrong = Credentials {
        secret: "00".repeat(32),
        ..w.dev_glob.clone()
    };
    let mut g = Client::device(w.gw.mqtt_port, &w.dev_glob).await;
    g.publish_acked("sealed/d-glob/t", seal(&wrong, "t", 7, b"x"))
        .await;
    expect_event(&mut other, "sealgate/events/d-glob", "bad_mac").await;
    // Deleting the account closes its connection and ends its kept
    // sessions: one persistent session is kept offline first.
    let mut opts = options(w.gw.mqtt_port, "acme-tmp-kept", "acme-tmp@acme", &pass);
    opts.set_clean_session(false);
    let (mut kept, r) = Client::connect_with(opts).await;
    r.unwrap();
    kept.subscribe(&["clean/#"]).await;
    kept.client.disconnect().await.unwrap();
    wait_metric(&w.gw, "sealgate_persistent_sessions", |v| v == 1.0).await;
    let mut c = connect(&w.gw, "acme-tmp-2", "acme-tmp@acme", &pass, &["clean/#"]).await;
    let (url, key) = (w.gw.http_url.clone(), tenant_key(&w.acme));
    tokio::task::spawn_blocking(move || {
        ureq::delete(&format!("{url}/api/v1/users/acme-tmp@acme"))
            .set("Authorization", &format!("Bearer {key}"))
            .call()
            .unwrap();
    })
    .await
    .unwrap();
    closed(&mut c).await;
    assert_eq!(w.gw.metric("sealgate_persistent_sessions").await, 0.0);
    let (_, r) = Client::connect(w.gw.mqtt_port, "acme-tmp-3", "acme-tmp@acme", &pass).await;
    assert!(r.is_err(), "a deleted account cannot log in");
}

/// `unverified/` (unsealed payloads, allowed here) follows the mount like
/// `clean/` and the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_account_sees_only_its_own_unverified_payloads() {
    let w = world().await;
    let pass = account(&w.gw, &w.acme, "acme-raw").await;
    let mut c = connect(&w.gw, "acme-raw-1", "acme-raw@acme", &pass, &["#"]).await;
    for d in [&w.dev_glob, &w.dev_free, &w.dev_acme] {
        let mut dev = Client::device(w.gw.mqtt_port, d).await;
        let raw = format!("raw reading of {}", d.device_id);
        dev.publish_acked(&format!("sealed/{}/t", d.device_id), raw.into_bytes())
            .await;
    }
    // Published last, and the first (and only) thing acme's account sees.
    assert_eq!(
        c.next_publish().await,
        (
            "unverified/d-acme/t".into(),
            b"raw reading of d-acme".to_vec()
        )
    );
}

/// A tenant account's MQTT 5 re-subscription with Retain Handling 0 gets
/// the retained messages again (sent by the front door, not the router),
/// filed under its mount as the router files its filters: its tenant's
/// devices' only, with the mount stripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_accounts_resubscription_gets_its_own_retained_messages_only() {
    use common::v5::{text, Peer};
    let w = world().await;
    let pass = account(&w.gw, &w.acme, "acme-wall").await;
    for d in [&w.dev_glob, &w.dev_free, &w.dev_acme] {
        let mut c = Client::device(w.gw.mqtt_port, d).await;
        let body = format!("{}-retained", d.device_id);
        c.client
            .publish(
                format!("sealed/{}/r", d.device_id),
                QoS::AtLeastOnce,
                true,
                seal(d, "r", 1, body.as_bytes()),
            )
            .await
            .unwrap();
        loop {
            match c.next().await {
                Seen::PubAck(_) => break,
                Seen::Closed(e) => panic!("{e}"),
                _ => {}
            }
        }
    }
    let mut o = rumqttc::v5::MqttOptions::new("acme-v5", "127.0.0.1", w.gw.mqtt_port);
    o.set_credentials("acme-wall@acme", pass);
    let (mut s, _) = Peer::connect(o).await;
    let mut dev = Client::device(w.gw.mqtt_port, &w.dev_acme).await;
    for (n, filter) in ["#", "#", "clean/+/r", "clean/+/r"].into_iter().enumerate() {
        // The first SUBSCRIBE of each filter is new to the router, the
        // second a re-subscription.
        s.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, None)
            .await;
        let got = s.next_publish().await;
        assert_eq!(
            (
                std::str::from_utf8(&got.topic).unwrap(),
                text(&got).as_str(),
                got.retain
            ),
            ("clean/d-acme/r", "d-acme-retained", true),
            "{filter} ({n})"
        );
        // Published after the SUBACK: nothing of another tenant came between.
        let nonce = 10 + n as u64;
        let fence = format!("fence-{n}");
        dev.publish_acked(
            "sealed/d-acme/f",
            seal(&w.dev_acme, "f", nonce, fence.as_bytes()),
        )
        .await;
        let got = s.next_publish().await;
        assert_eq!(
            (std::str::from_utf8(&got.topic).unwrap(), text(&got)),
            ("clean/d-acme/f", fence),
            "{filter} ({n})"
        );
    }
}
