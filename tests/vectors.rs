//! Every SEALED-ENVELOPE-v1 vector (tests/vectors/vectors.json, made by an
//! independent implementation) as its own test: keys, connect tokens, each
//! message's verdict and plaintext, our sealer's bytes, and the replay
//! sequence through the real window and a real sled store.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sealgate::envelope::{self, connect_token, DeviceKeys, Enc, MasterKey, SealInput, SealedTopic};
use sealgate::events::RejectReason;
use sealgate::registry::Registry;
use sealgate::replay::ReplayStore;
use sealgate::verifier::check::{Checked, Checker};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/vectors.json")).expect("vectors.json parses")
}

fn master() -> MasterKey {
    MasterKey::from_hex(vectors()["master_key_hex"].as_str().unwrap()).unwrap()
}

fn message(name: &str) -> Value {
    vectors()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
        .clone()
}

/// A registry with esp32-a1 (rotated to kid 2 when `kid2`) and a fresh store.
struct World {
    _dir: tempfile::TempDir,
    checker: Checker,
    store: ReplayStore,
}

fn world(kid2: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = sealgate::database::Database::for_tests(dir.path());
    let registry = Registry::open(&db).unwrap();
    registry.add("esp32-a1", None, 0).unwrap();
    if kid2 {
        registry
            .rotate(sealgate::registry::Scope::All, "esp32-a1", 0, u64::MAX / 2)
            .unwrap();
    }
    let windows = sealgate::journal::Windows::open(&db).unwrap();
    let store = ReplayStore::new(windows, vectors()["window"].as_u64().unwrap() as u32);
    let checker = Checker::new(
        master(),
        registry,
        "sealed".into(),
        false,
        false,
        Default::default(),
    );
    World {
        _dir: dir,
        checker,
        store,
    }
}

/// The verdict name for one message, recording acceptances like the gateway.
fn verdict(w: &mut World, topic: &str, payload: &[u8]) -> (String, Option<(String, Vec<u8>)>) {
    match w.checker.check(topic, payload, &mut w.store, 1).unwrap() {
        Checked::Accept {
            topic,
            nonce,
            mac,
            plaintext,
            ..
        } => {
            w.store.accept(&topic.device_id, nonce, &mac, 1).unwrap();
            w.store.stage(None);
            ("accept".into(), Some((topic.under("clean"), plaintext)))
        }
        Checked::Reject { reason, .. } => (reason.as_str().into(), None),
        Checked::Unsealed { .. } => ("unsealed".into(), None),
    }
}

fn check_message(name: &str) {
    let v = message(name);
    let payload = B64.decode(v["payload_b64"].as_str().unwrap()).unwrap();
    let mut w = world(name == "kid-2");
    let (got, clean) = verdict(&mut w, v["topic"].as_str().unwrap(), &payload);
    assert_eq!(got, v["verdict"].as_str().unwrap(), "vector {name}");
    if let Some((topic, body)) = clean {
        assert_eq!(topic, v["clean_topic"].as_str().unwrap(), "vector {name}");
        assert_eq!(
            B64.encode(body),
            v["clean_body_b64"].as_str().unwrap(),
            "vector {name}"
        );
        reseal_matches(&v, &payload);
    }
}

/// Our sealer, given the vector's own fields, writes the vector's bytes.
fn reseal_matches(v: &Value, payload: &[u8]) {
    let t = SealedTopic::parse("sealed", v["topic"].as_str().unwrap()).unwrap();
    let p = envelope::parse(payload).unwrap();
    if v["name"] == "kid-absent-defaults-1" {
        return; // the vector removed a field our sealer always writes
    }
    let keys = master().device_keys(&t.device_id, p.kid);
    let plain = B64.decode(v["clean_body_b64"].as_str().unwrap()).unwrap();
    let sealed = envelope::seal(
        &keys,
        &SealInput {
            device_id: &t.device_id,
            stream: &t.stream,
            kid: p.kid,
            nonce: p.nonce,
            iv: match p.enc {
                Enc::None => None,
                Enc::Aes128Cbc(iv) => Some(iv),
            },
            plaintext: &plain,
            binary: payload.starts_with(b"SG\x01"),
        },
    )
    .expect("vector ids are normalised");
    assert_eq!(
        B64.encode(sealed),
        v["payload_b64"].as_str().unwrap(),
        "reseal {}",
        v["name"]
    );
}

macro_rules! message_vectors {
    ($($fn_name:ident => $name:literal,)*) => {
        $(#[test] fn $fn_name() { check_message($name); })*
        const NAMES: &[&str] = &[$($name),*];
    };
}

message_vectors! {
    json_plain => "json-plain",
    json_aes => "json-aes",
    binary_plain => "binary-plain",
    binary_aes => "binary-aes",
    empty_stream => "empty-stream",
    multi_level_stream => "multi-level-stream",
    id_normalised => "id-normalised",
    kid_2 => "kid-2",
    empty_body => "empty-body",
    binary_body_aes => "binary-body-aes",
    kid_absent_defaults_1 => "kid-absent-defaults-1",
    tampered_payload => "tampered-payload",
    moved_to_other_stream => "moved-to-other-stream",
    moved_to_other_device => "moved-to-other-device",
    wrong_key => "wrong-key",
    not_json => "not-json",
    version_2 => "version-2",
    nonce_zero => "nonce-zero",
    nonce_string => "nonce-string",
    nonce_negative => "nonce-negative",
    nonce_too_big => "nonce-too-big",
    bad_base64 => "bad-base64",
    short_mac => "short-mac",
    missing_mac => "missing-mac",
    aes_without_iv => "aes-without-iv",
    unknown_enc => "unknown-enc",
    binary_too_short => "binary-too-short",
    bad_device_id => "bad-device-id",
    bad_padding => "bad-padding",
    unknown_device => "unknown-device",
}

#[test]
fn every_message_vector_has_a_test() {
    let all: Vec<String> = vectors()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &all {
        assert!(NAMES.contains(&name.as_str()), "vector {name} has no test");
    }
    assert_eq!(all.len(), NAMES.len());
}

#[test]
fn key_derivation() {
    for k in vectors()["keys"].as_array().unwrap() {
        let id = k["device_id"].as_str().unwrap();
        let kid = k["kid"].as_u64().unwrap() as u32;
        let secret = master().device_secret(id, kid);
        assert_eq!(hex::encode(secret), k["secret_hex"].as_str().unwrap());
        let keys = DeviceKeys::from_secret(&secret);
        assert_eq!(hex::encode(keys.mac), k["k_mac_hex"].as_str().unwrap());
        assert_eq!(hex::encode(keys.enc), k["k_enc_hex"].as_str().unwrap());
        assert_eq!(hex::encode(keys.auth), k["k_auth_hex"].as_str().unwrap());
    }
}

#[test]
fn connect_tokens() {
    for c in vectors()["connect"].as_array().unwrap() {
        let id = c["device_id"].as_str().unwrap();
        let keys = master().device_keys(id, c["kid"].as_u64().unwrap() as u32);
        let expiry = c["expiry"].as_u64().unwrap();
        let password = c["password"].as_str().unwrap();
        assert_eq!(connect_token(&keys, id, expiry), password);
        let now = if expiry == 0 { u64::MAX } else { expiry - 1 };
        assert_eq!(
            envelope::verify_connect_token(&keys, id, password, now, true),
            Ok(())
        );
    }
}

#[test]
fn replay_sequence() {
    let seq = vectors()["replay_sequence"].clone();
    let mut w = world(false);
    for (i, step) in seq["steps"].as_array().unwrap().iter().enumerate() {
        let payload = B64.decode(step["payload_b64"].as_str().unwrap()).unwrap();
        let (got, _) = verdict(&mut w, seq["topic"].as_str().unwrap(), &payload);
        assert_eq!(
            got,
            step["verdict"].as_str().unwrap(),
            "step {i} nonce {}",
            step["nonce"]
        );
    }
    assert!(RejectReason::from_name("duplicate").is_some());
}

#[test]
fn revoked_device_and_unknown_kid() {
    let v = message("json-plain");
    let payload = B64.decode(v["payload_b64"].as_str().unwrap()).unwrap();
    let mut w = world(false);
    w.checker
        .registry
        .revoke(sealgate::registry::Scope::All, "esp32-a1", 0)
        .unwrap();
    assert_eq!(
        verdict(&mut w, v["topic"].as_str().unwrap(), &payload).0,
        "revoked"
    );
    // kid 2 before any rotation is unknown.
    let kid2 = message("kid-2");
    let payload = B64.decode(kid2["payload_b64"].as_str().unwrap()).unwrap();
    let mut w = world(false);
    assert_eq!(
        verdict(&mut w, kid2["topic"].as_str().unwrap(), &payload).0,
        "unknown_kid"
    );
}
