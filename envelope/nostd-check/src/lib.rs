//! What firmware would call: seal a reading and make a connect token and a
//! claim MAC, with nothing but caller buffers.

#![no_std]

use sealgate_envelope::{claim_mac, seal_into, ConnectToken, DeviceKeys, SealInput};

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// Seals `len` bytes at `plain` into `out` (capacity `cap`); returns the
/// length written, or 0.
///
/// # Safety
/// The pointers must be valid for the given lengths.
#[no_mangle]
pub unsafe extern "C" fn check_seal(
    secret: *const [u8; 32],
    plain: *const u8,
    len: usize,
    out: *mut u8,
    cap: usize,
) -> usize {
    let keys = DeviceKeys::from_secret(&*secret);
    let plaintext = core::slice::from_raw_parts(plain, len);
    let out = core::slice::from_raw_parts_mut(out, cap);
    let m = SealInput {
        device_id: "esp32-a1",
        stream: "telemetry",
        kid: 1,
        nonce: 1,
        iv: Some([0; 16]),
        plaintext,
        binary: false,
    };
    let token = ConnectToken::new(&keys, "esp32-a1", 0);
    let claim = claim_mac(&keys.auth, "esp32-a1", "PAIR", 1);
    seal_into(&keys, &m, out).unwrap_or(0) + token.as_str().len() * usize::from(claim[0] == 0)
}
