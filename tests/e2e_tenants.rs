//! Tenants over real HTTP: the isolation matrix between two tenants on every
//! device endpoint, the operator-only actions, labels unique per tenant, the
//! device-initiated claim of spec section 10 with its idempotency across a
//! restart, and claim codes with their brute-force brake.

mod common;

use common::*;
use sealgate::admin::client::{AdminClient, ClientError};
use sealgate::envelope::{claim_code, claim_mac, MasterKey};
use serde_json::Value;

fn master() -> MasterKey {
    MasterKey::from_hex(VECTOR_MASTER).unwrap()
}

/// Status and error code of a failed call.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, body }) => (status, body.error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A raw HTTP call, for answers the typed client would not parse.
fn http(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let url = format!("{}/api/v1/{path}", gw.http_url);
    let mut req = ureq::request(method, &url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

struct Two {
    acme: AdminClient,
    globex: AdminClient,
    acme_key: String,
}

fn two_tenants(gw: &Gateway) -> Two {
    let op = gw.admin();
    let a = op.add_tenant("acme").unwrap();
    let g = op.add_tenant("globex").unwrap();
    assert!(a.api_key.starts_with("sgt_"));
    Two {
        acme: AdminClient::new(&gw.http_url, &a.api_key),
        globex: AdminClient::new(&gw.http_url, &g.api_key),
        acme_key: a.api_key,
    }
}

#[test]
fn tenants_see_and_change_only_their_own_devices() {
    let gw = Gateway::start(&[]);
    let op = gw.admin();
    let t = two_tenants(&gw);
    op.add("dev-a", None).unwrap();
    op.add("dev-g", None).unwrap();
    op.add("dev-free", None).unwrap();
    assert_eq!(
        op.assign("dev-a", "acme").unwrap().owner.as_deref(),
        Some("acme")
    );
    op.assign("dev-g", "globex").unwrap();
    assert_eq!(
        refused(op.assign("dev-a", "nobody")),
        (404, "not_found".into())
    );

    // A tenant's list holds its own devices only; the operator sees all.
    let ids = |c: &AdminClient| -> Vec<String> {
        c.list()
            .unwrap()
            .devices
            .into_iter()
            .map(|d| d.device_id)
            .collect()
    };
    assert_eq!(ids(&t.acme), ["dev-a"]);
    assert_eq!(ids(&t.globex), ["dev-g"]);
    assert_eq!(ids(&op), ["dev-a", "dev-free", "dev-g"]);

    // Every device endpoint: another tenant's device, an unowned one and one
    // that does not exist all get the same 404.
    for id in ["dev-g", "dev-free", "no-such-device"] {
        let not_found = (404, "not_found".to_string());
        assert_eq!(refused(t.acme.show(id)), not_found, "{id}");
        assert_eq!(refused(t.acme.rename(id, "x")), not_found, "{id}");
        assert_eq!(refused(t.acme.revoke(id)), not_found, "{id}");
        assert_eq!(refused(t.acme.rotate(id)), not_found, "{id}");
        assert_eq!(refused(t.acme.reset_nonce(id)), not_found, "{id}");
        assert_eq!(refused(t.acme.migrate(id)), not_found, "{id}");
        let (_, a) = http(
            &gw,
            "GET",
            &format!("devices/{id}"),
            Some(&t.acme_key),
            None,
        );
        let (_, b) = http(
            &gw,
            "GET",
            "devices/no-such-device",
            Some(&t.acme_key),
            None,
        );
        assert_eq!(a, b, "existence must not show in the body");
    }
    // Its own device it can manage.
    assert_eq!(t.acme.rename("dev-a", "roof").unwrap().label, "roof");
    assert_eq!(t.acme.rotate("dev-a").unwrap().kid, 2);
    assert!(t.acme.reset_nonce("dev-a").is_ok());
    // Tenants do not register devices: whoever registers an id learns the
    // secret a factory flashes for it.
    assert_eq!(
        refused(t.acme.add("dev-a2", None)),
        (403, "operator_only".into())
    );
    op.add("dev-a2", None).unwrap();
    op.assign("dev-a2", "acme").unwrap();

    // Labels are unique per tenant, not across tenants.
    assert_eq!(
        refused(t.acme.rename("dev-a2", "roof")),
        (409, "label_taken".into())
    );
    assert_eq!(t.globex.rename("dev-g", "roof").unwrap().label, "roof");
    // A device that joins a tenant with a label the tenant uses loses it.
    let (status, body) = http(
        &gw,
        "POST",
        "devices",
        Some(ADMIN_TOKEN),
        Some(serde_json::json!({"device_id": "dev-a3", "label": "roof"})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(op.assign("dev-a3", "acme").unwrap().label, "");
    op.release("dev-a3").unwrap();

    // Operator-only actions.
    let operator_only = (403, "operator_only".to_string());
    assert_eq!(refused(t.acme.add_bulk("f-", 2)), operator_only);
    assert_eq!(refused(t.acme.add_tenant("evil")), operator_only);
    assert_eq!(refused(t.acme.list_tenants()), operator_only);
    assert_eq!(refused(t.acme.rotate_tenant_key("globex")), operator_only);
    assert_eq!(refused(t.acme.assign("dev-a", "globex")), operator_only);
    assert_eq!(refused(t.acme.release("dev-a")), operator_only);
    // Unknown or missing keys.
    assert_eq!(http(&gw, "GET", "devices", Some("sgt_0000"), None).0, 401);
    assert_eq!(http(&gw, "GET", "devices", None, None).0, 401);

    // Dashboard accounts are scoped the same way.
    t.globex.add_user("globex-wall", None).unwrap();
    assert_eq!(
        refused(t.acme.remove_user("globex-wall@globex")),
        (404, "not_found".into())
    );
    assert!(t.acme.list_users().unwrap().users.is_empty());
    assert_eq!(t.globex.list_users().unwrap().users.len(), 1);
    assert_eq!(
        refused(t.acme.add_user("x", Some("globex"))),
        (400, "bad_request".into())
    );

    // Release: the device leaves the tenant's view at once.
    op.release("dev-a").unwrap();
    assert_eq!(refused(t.acme.show("dev-a")), (404, "not_found".into()));
    let tenants = op.list_tenants().unwrap().tenants;
    assert_eq!(
        tenants
            .iter()
            .map(|t| (t.name.as_str(), t.devices))
            .collect::<Vec<_>>(),
        [("acme", 1), ("globex", 1)]
    );
    // A rotated tenant key: the old one stops at once.
    let new = op.rotate_tenant_key("acme").unwrap();
    assert_eq!(http(&gw, "GET", "devices", Some(&t.acme_key), None).0, 401);
    assert_eq!(
        ids(&AdminClient::new(&gw.http_url, &new.api_key)),
        ["dev-a2"]
    );
}

/// What a device sends to claim itself.
fn claim_body(id: &str, kid: u32, code: &str, nonce: u64) -> Value {
    let keys = master().device_keys(id, kid);
    serde_json::json!({
        "device_id": id,
        "pairing_code": code,
        "nonce": nonce,
        "mac": hex::encode(claim_mac(&keys.auth, id, code, nonce)),
    })
}

#[test]
fn device_initiated_claims_are_idempotent_across_a_restart() {
    let gw = Gateway::start(&[]);
    let op = gw.admin();
    let t = two_tenants(&gw);
    op.add("esp32-a1", None).unwrap();
    let code = t.acme.pairing_code(None).unwrap();
    assert_eq!(code.tenant, "acme");

    // A bad MAC: 401, and not remembered.
    let mut forged = claim_body("esp32-a1", 1, &code.pairing_code, 1);
    forged["mac"] = Value::String("00".repeat(32));
    let (status, body) = http(&gw, "POST", "claim", None, Some(forged));
    assert_eq!(status, 401, "{body}");

    let first = claim_body("esp32-a1", 1, &code.pairing_code, 1);
    let (status, answer) = http(&gw, "POST", "claim", None, Some(first.clone()));
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (v["device_id"].as_str(), v["tenant"].as_str()),
        (Some("esp32-a1"), Some("acme"))
    );
    assert!(v["claimed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        t.acme.show("esp32-a1").unwrap().owner.as_deref(),
        Some("acme")
    );
    // The identical request: the identical answer.
    assert_eq!(
        http(&gw, "POST", "claim", None, Some(first.clone())),
        (200, answer.clone())
    );
    // The same nonce with another code (so another MAC): 409, nothing changes.
    let other_code = t.globex.pairing_code(None).unwrap();
    let conflict = claim_body("esp32-a1", 1, &other_code.pairing_code, 1);
    let (status, body) = http(&gw, "POST", "claim", None, Some(conflict));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("replay_conflict"), "{body}");
    // The used code with a fresh nonce: 403.
    let (status, body) = http(
        &gw,
        "POST",
        "claim",
        None,
        Some(claim_body("esp32-a1", 1, &code.pairing_code, 2)),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("pairing_code_invalid"));
    // Another tenant's code for a device acme owns: 409.
    let (status, body) = http(
        &gw,
        "POST",
        "claim",
        None,
        Some(claim_body("esp32-a1", 1, &other_code.pairing_code, 3)),
    );
    assert_eq!(
        (status, body.contains("owned_by_another_tenant")),
        (409, true),
        "{body}"
    );
    assert_eq!(
        t.acme.show("esp32-a1").unwrap().owner.as_deref(),
        Some("acme")
    );
    // An unknown code, and an unknown device (auto-register is off).
    let (status, _) = http(
        &gw,
        "POST",
        "claim",
        None,
        Some(claim_body("esp32-a1", 1, "NOPE", 4)),
    );
    assert_eq!(status, 403);
    let fresh = t.globex.pairing_code(None).unwrap();
    let (status, _) = http(
        &gw,
        "POST",
        "claim",
        None,
        Some(claim_body("ghost-1", 1, &fresh.pairing_code, 1)),
    );
    assert_eq!(status, 404);
    // Bad input is 400, not a verdict.
    let (status, _) = http(
        &gw,
        "POST",
        "claim",
        None,
        Some(serde_json::json!({"device_id": "x"})),
    );
    assert_eq!(status, 400);

    for (outcome, n) in [
        ("success", 1.0),
        ("replay_cached", 1.0),
        ("replay_conflict", 1.0),
        ("bad_mac", 1.0),
        ("code_invalid", 2.0),
        ("owned_elsewhere", 1.0),
        ("not_found", 1.0),
    ] {
        let sample = format!("sealgate_claims_total{{outcome=\"{outcome}\"}}");
        assert_eq!(prometheus(&gw, &sample), n, "{outcome}");
    }

    // No pairing code or MAC in the log; ids in claim lines masked.
    let log = gw.log_lines().join("\n");
    for secret in [code.pairing_code.as_str(), other_code.pairing_code.as_str()] {
        assert!(!log.contains(secret), "a pairing code in the log");
    }
    assert!(
        !log.contains(first["mac"].as_str().unwrap()),
        "a MAC in the log"
    );
    let claim_lines: Vec<&str> = log.lines().filter(|l| l.contains("Claim")).collect();
    assert!(
        claim_lines.iter().any(|l| l.contains("esp3…a1")),
        "{claim_lines:?}"
    );
    for line in &claim_lines {
        assert!(!line.contains("esp32-a1"), "an unmasked id in {line}");
    }

    // After kill -9 the same request still gets the same answer, and the
    // conflicting one still conflicts.
    let gw = gw.kill9_and_restart();
    assert_eq!(http(&gw, "POST", "claim", None, Some(first)), (200, answer));
    let conflict = claim_body("esp32-a1", 1, &other_code.pairing_code, 1);
    assert_eq!(http(&gw, "POST", "claim", None, Some(conflict)).0, 409);
    assert_eq!(
        prometheus(&gw, "sealgate_claims_total{outcome=\"replay_cached\"}"),
        1.0
    );
}

fn prometheus(gw: &Gateway, sample: &str) -> f64 {
    let text = ureq::get(&format!("{}/metrics", gw.http_url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    prometheus_sample(&text, sample)
}

#[test]
fn auto_register_claims_an_unknown_device_in_one_step() {
    let gw = Gateway::start(&[("SEALGATE_AUTO_REGISTER", "true")]);
    let t = two_tenants(&gw);
    let code = t.acme.pairing_code(None).unwrap();
    let (status, body) = http(
        &gw,
        "POST",
        "claim",
        None,
        Some(claim_body("factory-7", 1, &code.pairing_code, 9)),
    );
    assert_eq!(status, 200, "{body}");
    let d = t.acme.show("factory-7").unwrap();
    assert!(d.auto_registered);
    assert_eq!(
        prometheus(&gw, "sealgate_claims_total{outcome=\"auto_registered\"}"),
        1.0
    );
    // A MAC under any other key registers nothing.
    let code = t.acme.pairing_code(None).unwrap();
    let mut forged = claim_body("factory-8", 1, &code.pairing_code, 1);
    forged["mac"] = Value::String(hex::encode(claim_mac(
        &[1; 32],
        "factory-8",
        &code.pairing_code,
        1,
    )));
    assert_eq!(http(&gw, "POST", "claim", None, Some(forged)).0, 401);
    assert_eq!(refused(gw.admin().show("factory-8")).0, 404);
}

#[test]
fn claim_codes_claim_once_and_guessing_is_slowed() {
    let gw = Gateway::start_with_config("[claims]\nbad_codes_per_minute = 3\n", &[]);
    let op = gw.admin();
    let t = two_tenants(&gw);
    op.add("meter-0042", None).unwrap();
    let code = claim_code(&master().device_secret("meter-0042", 1));
    let code = code.as_str();

    // The operator assigns; claiming is for tenants.
    assert_eq!(
        refused(op.claim_with_code("meter-0042", code)),
        (403, "tenant_only".into())
    );
    // A wrong code and a device that does not exist: the same 403.
    let (_, wrong) = http(
        &gw,
        "POST",
        "devices/meter-0042/claim",
        Some(&t.acme_key),
        Some(serde_json::json!({"claim_code": "AAAAAAAAAAAAAAAA"})),
    );
    let (status, ghost) = http(
        &gw,
        "POST",
        "devices/ghost-9/claim",
        Some(&t.acme_key),
        Some(serde_json::json!({"claim_code": code})),
    );
    assert_eq!((status, &wrong), (403, &ghost));
    // As people type it: lower case, with dashes.
    let typed = format!("{}-{}", code[..8].to_lowercase(), &code[8..]);
    let claimed = t.acme.claim_with_code("meter-0042", &typed).unwrap();
    assert_eq!(
        (claimed.device_id.as_str(), claimed.tenant.as_str()),
        ("meter-0042", "acme")
    );
    // Again by its owner: 200; by another tenant: 409.
    assert!(t.acme.claim_with_code("meter-0042", code).is_ok());
    assert_eq!(
        refused(t.globex.claim_with_code("meter-0042", code)),
        (409, "owned_by_another_tenant".into())
    );

    // Two wrong codes were spent above; the third is still answered, then
    // the tenant must wait (and another tenant is not affected).
    assert_eq!(
        refused(t.acme.claim_with_code("meter-0042", "BBBBBBBBBBBBBBBB")).0,
        403
    );
    let (status, _) = http(
        &gw,
        "POST",
        "devices/meter-0042/claim",
        Some(&t.acme_key),
        Some(serde_json::json!({"claim_code": "CCCCCCCCCCCCCCCC"})),
    );
    assert_eq!(status, 429);
    assert_eq!(
        refused(t.acme.claim_with_code("meter-0042", code)).0,
        429,
        "even the right code waits"
    );
    assert_eq!(refused(t.globex.claim_with_code("ghost-1", code)).0, 403);
    assert_eq!(
        prometheus(&gw, "sealgate_claims_total{outcome=\"bad_code\"}"),
        4.0
    );
    assert!(prometheus(&gw, "sealgate_claims_total{outcome=\"rate_limited\"}") >= 2.0);
}

/// Every claim of `claim-vectors.json` against a gateway under the vectors'
/// master key, the pairing codes being the tenant's chosen ones, in order:
/// the MACs made by the independent implementation are accepted byte for
/// byte, and each gets the answer its place in the sequence calls for.
#[test]
fn every_claim_vector_end_to_end() {
    let v: Value = serde_json::from_str(include_str!("vectors/claim-vectors.json")).unwrap();
    assert_eq!(v["master_key_hex"], VECTOR_MASTER);
    let gw = Gateway::start(&[]);
    let op = gw.admin();
    let t = two_tenants(&gw);
    op.add("esp32-a1", None).unwrap();
    op.add("meter-0042", None).unwrap();
    for code in ["PAIR-7F3K-Q9", "9c1e44d0", "ü-code"] {
        t.acme.pairing_code_chosen(None, Some(code)).unwrap();
    }
    assert_eq!(
        refused(t.globex.pairing_code_chosen(None, Some("9c1e44d0"))),
        (409, "pairing_code_taken".into())
    );
    let mut statuses = Vec::new();
    for c in v["device_claims"].as_array().unwrap() {
        if c["kid"] == 2 {
            // kid 2 exists once the key is rotated.
            op.rotate("esp32-a1").unwrap();
        }
        let body = serde_json::json!({
            "device_id": c["device_id"],
            "pairing_code": c["pairing_code"],
            "nonce": c["nonce"],
            "mac": c["mac_hex"],
        });
        statuses.push(http(&gw, "POST", "claim", None, Some(body)).0);
    }
    // 1: claims esp32-a1 for acme. 2: the code is used. 3 (kid 2): used.
    // 4: meter-0042's own code. 5: a fresh code for a device acme owns.
    assert_eq!(statuses, [200, 403, 403, 200, 200]);
    assert_eq!(t.acme.list().unwrap().devices.len(), 2);
    // The claim codes of the vectors, through the API.
    for c in v["claim_codes"].as_array().unwrap() {
        let id = c["device_id"].as_str().unwrap();
        op.release(id).unwrap();
        let got = t
            .globex
            .claim_with_code(id, c["claim_code"].as_str().unwrap())
            .unwrap();
        assert_eq!(got.tenant, "globex");
    }
}

#[test]
fn each_key_has_a_request_rate_and_browsers_get_cors_as_configured() {
    let gw = Gateway::start_with_config(
        "[http]\n# One request of burst, then one per 100 s.\nkey_rate = 0.01\ncors_origins = [\"https://console.example\"]\n",
        &[],
    );
    let op = gw.admin();
    let a = op.add_tenant("acme").unwrap();
    assert_eq!(refused(op.list()), (429, "rate_limited".into()));
    let r = ureq::get(&format!("{}/api/v1/devices", gw.http_url))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call();
    match r {
        Err(ureq::Error::Status(429, r)) => assert_eq!(r.header("retry-after"), Some("100")),
        other => panic!("expected 429, got {other:?}"),
    }
    // Another key has its own budget.
    assert_eq!(http(&gw, "GET", "devices", Some(&a.api_key), None).0, 200);

    // CORS: the configured origin may call with a bearer token; others not.
    let preflight = |origin: &str| {
        ureq::request("OPTIONS", &format!("{}/api/v1/devices", gw.http_url))
            .set("Origin", origin)
            .set("Access-Control-Request-Method", "GET")
            .set("Access-Control-Request-Headers", "authorization")
            .call()
            .unwrap()
    };
    let ok = preflight("https://console.example");
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://console.example")
    );
    assert!(ok
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    assert_eq!(
        preflight("https://evil.example").header("access-control-allow-origin"),
        None
    );
}

/// The OpenAPI document is made from the same registrations as the router:
/// every operation it lists is a real route (not the fallback), and it lists
/// exactly the endpoints docs/api.md documents.
#[test]
fn the_openapi_document_matches_the_real_routes_and_the_docs() {
    let gw = Gateway::start(&[]);
    let (status, text) = http(&gw, "GET", "openapi.json", None, None);
    assert_eq!(status, 200, "served without a token");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let path = path.strip_prefix("/api/v1").expect("under /api/v1");
            documented.insert((method.to_uppercase(), path.to_owned()));
            // The real route answers: anything but the fallback or a 405.
            let real = path
                .replace("{id}", "no-such-device")
                .replace("{name}", "nobody");
            let body = (method != "get" && method != "delete").then(|| serde_json::json!({}));
            let (status, answer) = http(
                &gw,
                &method.to_uppercase(),
                &real[1..],
                Some(ADMIN_TOKEN),
                body,
            );
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !answer.contains("no such endpoint"),
                "{method} {path}: {answer}"
            );
        }
    }
    // The endpoint table of docs/api.md, `| `METHOD /path` | ...`.
    let api_md = include_str!("../docs/api.md");
    let in_docs: std::collections::BTreeSet<(String, String)> = api_md
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(m, _)| m))
        .filter_map(|m| m.split_once(' '))
        .filter(|(m, p)| ["GET", "POST", "PATCH", "DELETE"].contains(m) && p.starts_with('/'))
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(documented.len(), 20, "{documented:?}");
    assert_eq!(documented, in_docs);
}

/// Legacy devices that share a key pair can seal in each other's names (the
/// legacy MAC binds no device): they may not be split between tenants.
#[test]
fn legacy_devices_sharing_keys_stay_with_one_tenant() {
    let gw = Gateway::start(&[]);
    let op = gw.admin();
    let t = two_tenants(&gw);
    let keys = |aes: &str| sealgate::admin::client::LegacyKeysHex {
        psk_hmac: "11".repeat(32),
        psk_aes: aes.repeat(16),
        iv: "00".repeat(16),
    };
    op.add_legacy("l-1", None, &keys("aa")).unwrap();
    op.add_legacy("l-2", None, &keys("aa")).unwrap();
    op.add_legacy("l-3", None, &keys("bb")).unwrap();
    op.assign("l-1", "acme").unwrap();
    assert_eq!(
        refused(op.assign("l-2", "globex")),
        (409, "shared_keys".into())
    );
    op.assign("l-3", "globex").unwrap();
    op.assign("l-2", "acme").unwrap();
    // Once no other tenant holds the pair, it may move.
    op.release("l-1").unwrap();
    op.release("l-2").unwrap();
    op.assign("l-1", "globex").unwrap();
    // The printed claim code is refused alike.
    let code = claim_code(&master().device_secret("l-2", 1));
    let acme = t.acme;
    assert_eq!(refused(acme.claim_with_code("l-2", code.as_str())).0, 409);
}
