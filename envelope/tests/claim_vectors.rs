//! Section 10 of the spec against `claim-vectors.json`, made by an
//! independent implementation: every claim MAC and claim code, byte for byte.

use sealgate_envelope::{claim_code, claim_code_matches, claim_mac, DeviceId, MasterKey};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/claim-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("claim vectors")).unwrap()
}

fn master(v: &Value) -> MasterKey {
    MasterKey::from_hex(v["master_key_hex"].as_str().unwrap()).unwrap()
}

#[test]
fn every_claim_mac() {
    let v = vectors();
    let claims = v["device_claims"].as_array().unwrap();
    assert!(!claims.is_empty());
    for c in claims {
        let id = DeviceId::new(c["device_id"].as_str().unwrap()).unwrap();
        let kid = u32::try_from(c["kid"].as_u64().unwrap()).unwrap();
        let keys = master(&v).device_keys(id.as_str(), kid);
        let code = c["pairing_code"].as_str().unwrap();
        let nonce = c["nonce"].as_u64().unwrap();
        let mac = claim_mac(&keys.auth, id.as_str(), code, nonce);
        assert_eq!(hex::encode(mac), c["mac_hex"].as_str().unwrap(), "{c}");
        // Any other kid, code or nonce gives another MAC.
        let other = master(&v).device_keys(id.as_str(), kid + 1);
        assert_ne!(claim_mac(&other.auth, id.as_str(), code, nonce), mac);
        assert_ne!(claim_mac(&keys.auth, id.as_str(), "x", nonce), mac);
        assert_ne!(
            claim_mac(&keys.auth, id.as_str(), code, nonce.wrapping_add(1)),
            mac
        );
    }
}

#[test]
fn every_claim_code() {
    let v = vectors();
    let codes = v["claim_codes"].as_array().unwrap();
    assert!(!codes.is_empty());
    for c in codes {
        let id = c["device_id"].as_str().unwrap();
        let want = c["claim_code"].as_str().unwrap();
        let code = claim_code(&master(&v).device_secret(id, 1));
        assert_eq!(code.as_str(), want);
        let typed = format!(" {}-{} ", want[..8].to_lowercase(), &want[8..]);
        assert!(claim_code_matches(&code, &typed));
        // The printed code is kid 1's: rotation does not change it.
        assert_ne!(claim_code(&master(&v).device_secret(id, 2)), code);
    }
}
