//! The C sealing library of `c/` (what real firmware runs), called over FFI
//! so `--impl c` puts its output on the wire. build.rs compiles it when gcc
//! and mbedTLS are present and sets `cfg(has_c_sealer)`; without them
//! [`CDevice::new`] always fails with what to install.

/// Why `--impl c` cannot run in this build, or `Ok` when it can.
pub fn available() -> Result<(), String> {
    if cfg!(has_c_sealer) {
        Ok(())
    } else {
        Err(UNAVAILABLE.to_owned())
    }
}

#[cfg_attr(has_c_sealer, allow(dead_code))]
const UNAVAILABLE: &str = "--impl c: this firmware-sim was built without the C sealer \
     (gcc or the mbedTLS headers were missing when it was compiled); \
     install them (apt-get install gcc libmbedtls-dev), then \
     `cargo clean -p firmware-sim` and rebuild";

#[cfg(has_c_sealer)]
pub use imp::CDevice;
#[cfg(not(has_c_sealer))]
pub use stub::CDevice;

#[cfg(has_c_sealer)]
mod ffi {
    //! sealgate.h, transcribed. `ffi/layout.c` makes the C build fail
    //! if `sg_device` is not laid out as the assertions below say.

    use std::ffi::{c_char, c_int, c_void};

    pub const SG_SECRET_LEN: usize = 32;
    pub const SG_MAX_DEVICE_ID_LEN: usize = 64;
    pub const SG_MAX_STREAM_LEN: usize = 200;
    pub const SG_CONNECT_PASSWORD_SIZE: usize = 89;

    pub const SG_OK: c_int = 0;
    pub const SG_ENCODING_JSON: c_int = 0;
    pub const SG_ENCODING_BINARY: c_int = 1;

    #[repr(C)]
    pub struct SgDevice {
        pub device_id: [c_char; SG_MAX_DEVICE_ID_LEN + 1],
        pub device_id_len: u8,
        pub kid: u32,
        pub k_mac: [u8; 32],
        pub k_enc: [u8; 16],
        pub k_auth: [u8; 32],
    }

    // The same numbers as ffi/layout.c checks against the C compiler.
    const _: () = {
        use std::mem::{align_of, offset_of, size_of};
        assert!(size_of::<SgDevice>() == 152);
        assert!(align_of::<SgDevice>() == 4);
        assert!(offset_of!(SgDevice, device_id) == 0);
        assert!(offset_of!(SgDevice, device_id_len) == 65);
        assert!(offset_of!(SgDevice, kid) == 68);
        assert!(offset_of!(SgDevice, k_mac) == 72);
        assert!(offset_of!(SgDevice, k_enc) == 104);
        assert!(offset_of!(SgDevice, k_auth) == 120);
    };

    /// `sg_message`; `sg_encoding` is a C enum, i.e. an `int`.
    #[repr(C)]
    pub struct SgMessage {
        pub stream: *const c_char,
        pub nonce: u64,
        pub body: *const u8,
        pub body_len: usize,
        pub encoding: c_int,
        pub encrypt: c_int,
    }

    pub type SgRandomFn = unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize) -> c_int;

    extern "C" {
        pub fn sg_status_name(status: c_int) -> *const c_char;
        pub fn sg_device_init(
            dev: *mut SgDevice,
            device_id: *const c_char,
            kid: u32,
            secret: *const u8,
        ) -> c_int;
        pub fn sg_device_wipe(dev: *mut SgDevice);
        pub fn sg_connect_password(
            dev: *const SgDevice,
            expiry: u64,
            out: *mut c_char,
            out_cap: usize,
            out_len: *mut usize,
        ) -> c_int;
        pub fn sg_sealed_len(dev: *const SgDevice, msg: *const SgMessage) -> usize;
        pub fn sg_seal(
            dev: *const SgDevice,
            msg: *const SgMessage,
            random: Option<SgRandomFn>,
            random_ctx: *mut c_void,
            out: *mut u8,
            out_cap: usize,
            out_len: *mut usize,
        ) -> c_int;
    }
}

#[cfg(has_c_sealer)]
mod imp {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::fmt;

    use rand::RngCore;

    use super::ffi::*;

    /// One device's keys inside the C library's own context, wiped on drop.
    pub struct CDevice {
        dev: SgDevice,
    }

    impl fmt::Debug for CDevice {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CDevice(..)")
        }
    }

    /// A status as the library names it (`"buffer_too_small"`).
    fn status_name(status: c_int) -> String {
        // SAFETY: sg_status_name accepts any value and returns a pointer to
        // a static NUL-terminated string literal, never NULL.
        let name = unsafe { CStr::from_ptr(sg_status_name(status)) };
        name.to_string_lossy().into_owned()
    }

    /// The library's `sg_random_fn`: fresh IVs from the thread's CSPRNG, as
    /// the spec demands of devices. Never unwinds into C.
    unsafe extern "C" fn fill_random(_ctx: *mut c_void, buf: *mut u8, len: usize) -> c_int {
        if len == 0 {
            return 0;
        }
        if buf.is_null() {
            return -1;
        }
        // SAFETY: sg_seal passes a buffer of `len` writable bytes (its IV
        // array) that nothing else touches during this call.
        let out = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        match rand::thread_rng().try_fill_bytes(out) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    impl CDevice {
        /// `sg_device_init`: normalises `id` and derives the keys of `kid`
        /// from `secret`.
        pub fn new(id: &str, kid: u32, secret: &[u8; SG_SECRET_LEN]) -> Result<CDevice, String> {
            let mut raw = [0 as c_char; SG_MAX_DEVICE_ID_LEN + 1];
            if id.len() > SG_MAX_DEVICE_ID_LEN || id.contains('\0') {
                return Err(format!(
                    "device {id:?}: the C library takes ids of at most \
                     {SG_MAX_DEVICE_ID_LEN} bytes without NUL"
                ));
            }
            for (r, b) in raw.iter_mut().zip(id.bytes()) {
                *r = b as c_char;
            }
            let mut c = CDevice {
                dev: SgDevice {
                    device_id: [0; SG_MAX_DEVICE_ID_LEN + 1],
                    device_id_len: 0,
                    kid: 0,
                    k_mac: [0; 32],
                    k_enc: [0; 16],
                    k_auth: [0; 32],
                },
            };
            // SAFETY: `c.dev` is a valid, exclusively borrowed sg_device (the
            // layout is asserted in `ffi`); `raw` is NUL-terminated (its last
            // byte is never written above) and `secret` is 32 readable bytes,
            // as the header requires. Neither pointer is kept after the call.
            let status = unsafe { sg_device_init(&mut c.dev, raw.as_ptr(), kid, secret.as_ptr()) };
            if status != SG_OK {
                return Err(format!(
                    "device {id:?}: sg_device_init failed: {}",
                    status_name(status)
                ));
            }
            Ok(c)
        }

        /// `sg_seal`: the MQTT payload for `sealed/{id}/{stream}`; with
        /// `encrypt`, AES-128-CBC under a fresh random IV.
        pub fn seal(
            &self,
            stream: &str,
            nonce: u64,
            plaintext: &[u8],
            binary: bool,
            encrypt: bool,
        ) -> Result<Vec<u8>, String> {
            // A NUL-terminated copy on the stack: no allocation per message.
            let mut raw = [0 as c_char; SG_MAX_STREAM_LEN + 1];
            if stream.len() > SG_MAX_STREAM_LEN || stream.contains('\0') {
                return Err(format!(
                    "the C library takes streams of at most {SG_MAX_STREAM_LEN} bytes without NUL"
                ));
            }
            for (r, b) in raw.iter_mut().zip(stream.bytes()) {
                *r = b as c_char;
            }
            let msg = SgMessage {
                stream: raw.as_ptr(),
                nonce,
                body: plaintext.as_ptr(),
                body_len: plaintext.len(),
                encoding: if binary {
                    SG_ENCODING_BINARY
                } else {
                    SG_ENCODING_JSON
                },
                encrypt: c_int::from(encrypt),
            };
            // SAFETY: `self.dev` was filled by sg_device_init; `msg` points at
            // `raw` (NUL-terminated, alive for this function) and at
            // `plaintext` (body_len readable bytes). Only read during the call.
            let len = unsafe { sg_sealed_len(&self.dev, &msg) };
            if len == 0 {
                return Err("sg_sealed_len refused the message (bad_arg)".into());
            }
            let mut out = vec![0u8; len];
            let mut written = 0usize;
            // SAFETY: as above for `dev` and `msg`; `out` has `len` writable
            // bytes and `written` is a valid usize; the random callback never
            // unwinds and needs no context. Nothing is kept after the call.
            let status = unsafe {
                sg_seal(
                    &self.dev,
                    &msg,
                    Some(fill_random),
                    std::ptr::null_mut(),
                    out.as_mut_ptr(),
                    out.len(),
                    &mut written,
                )
            };
            if status != SG_OK {
                return Err(format!("sg_seal failed: {}", status_name(status)));
            }
            out.truncate(written);
            Ok(out)
        }

        /// `sg_connect_password`: `v1:{expiry}:{hex tag}`; expiry 0 never
        /// expires, as the token the gateway hands out at registration.
        pub fn connect_password(&self, expiry: u64) -> Result<String, String> {
            let mut out = [0 as c_char; SG_CONNECT_PASSWORD_SIZE];
            let mut len = 0usize;
            // SAFETY: `self.dev` was filled by sg_device_init; `out` has
            // SG_CONNECT_PASSWORD_SIZE writable bytes, which the header says
            // always suffice; `len` is a valid usize.
            let status = unsafe {
                sg_connect_password(&self.dev, expiry, out.as_mut_ptr(), out.len(), &mut len)
            };
            if status != SG_OK {
                return Err(format!(
                    "sg_connect_password failed: {}",
                    status_name(status)
                ));
            }
            let bytes: Vec<u8> = out.iter().take(len).map(|&c| c as u8).collect();
            String::from_utf8(bytes).map_err(|_| "sg_connect_password wrote non-ASCII".to_owned())
        }
    }

    impl Drop for CDevice {
        fn drop(&mut self) {
            // SAFETY: `self.dev` is a valid sg_device we own exclusively;
            // sg_device_wipe only zeroes it.
            unsafe { sg_device_wipe(&mut self.dev) }
        }
    }
}

#[cfg(not(has_c_sealer))]
mod stub {
    //! Keeps the rest of firmware-sim free of cfgs: a `CDevice` that can
    //! never exist.

    use std::convert::Infallible;

    #[derive(Debug)]
    pub struct CDevice(Infallible);

    impl CDevice {
        pub fn new(_id: &str, _kid: u32, _secret: &[u8; 32]) -> Result<CDevice, String> {
            Err(super::UNAVAILABLE.to_owned())
        }

        pub fn seal(
            &self,
            _stream: &str,
            _nonce: u64,
            _plaintext: &[u8],
            _binary: bool,
            _encrypt: bool,
        ) -> Result<Vec<u8>, String> {
            match self.0 {}
        }

        pub fn connect_password(&self, _expiry: u64) -> Result<String, String> {
            match self.0 {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{self, SealStyle};
    use sealgate_envelope::{self as envelope, DeviceKeys};

    /// Skips (with the reason printed) where the C sealer was not built,
    /// except in CI, which installs gcc and mbedTLS: there it must run.
    fn c_or_skip() -> bool {
        match available() {
            Ok(()) => true,
            Err(why) if std::env::var_os("CI").is_some() => panic!("CI is set: {why}"),
            Err(why) => {
                eprintln!("skipped: {why}");
                false
            }
        }
    }

    const SECRET: [u8; 32] = [0x5a; 32];

    #[test]
    fn c_and_rust_seal_alike() {
        if !c_or_skip() {
            return;
        }
        let keys = DeviceKeys::from_secret(&SECRET);
        for (id, kid) in [("esp32-a1", 1), (&*"d".repeat(64), u32::MAX)] {
            let c = CDevice::new(id, kid, &SECRET).expect("C device");
            for stream in ["", "telemetry", &"s".repeat(200)] {
                for len in [0, 1, 15, 16, 17, 128, 1000] {
                    let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    for binary in [false, true] {
                        let nonce = 1 + len as u64 * 7;
                        let rust = message::seal(
                            &keys,
                            id,
                            kid,
                            stream,
                            nonce,
                            &pt,
                            SealStyle {
                                binary,
                                encrypt: false,
                            },
                        )
                        .expect("rust seal");
                        let plain = c.seal(stream, nonce, &pt, binary, false).expect("C seal");
                        assert_eq!(plain, rust, "plain {id} {stream:?} {len} {binary}");

                        let sealed = c.seal(stream, nonce, &pt, binary, true).expect("C seal");
                        let p = envelope::parse(&sealed).expect("parses");
                        assert_eq!((p.kid, p.nonce), (kid, nonce));
                        assert!(p.mac_matches(&keys.mac, id, stream), "{len} {binary}");
                        let opened = envelope::open_body(p, &keys.enc).expect("opens");
                        assert_eq!(opened, pt, "aes {id} {stream:?} {len} {binary}");
                    }
                }
            }
        }
    }

    #[test]
    fn c_draws_a_fresh_iv_per_message() {
        if !c_or_skip() {
            return;
        }
        let c = CDevice::new("d1", 1, &SECRET).expect("C device");
        let a = c.seal("t", 5, b"same", true, true).expect("seal");
        let b = c.seal("t", 5, b"same", true, true).expect("seal");
        assert_ne!(a, b);
    }

    #[test]
    fn c_connect_password_is_the_gateways_token() {
        if !c_or_skip() {
            return;
        }
        let keys = DeviceKeys::from_secret(&SECRET);
        for (id, expiry) in [("esp32-a1", 0), ("sim-0001", 0), ("x", u64::MAX)] {
            let c = CDevice::new(id, 1, &SECRET).expect("C device");
            assert_eq!(
                c.connect_password(expiry).expect("password"),
                envelope::connect_token(&keys, id, expiry)
            );
        }
    }

    #[test]
    fn c_errors_carry_the_status_name() {
        if !c_or_skip() {
            return;
        }
        let e = CDevice::new("Bad Id!", 1, &SECRET).expect_err("invalid id");
        assert!(e.contains("bad_arg"), "{e}");
        assert!(CDevice::new("d1", 0, &SECRET).is_err());
        let c = CDevice::new("d1", 1, &SECRET).expect("C device");
        assert!(c.seal("t", 0, b"x", false, false).is_err(), "nonce 0");
        assert!(c.seal(&"s".repeat(201), 1, b"x", false, false).is_err());
        assert!(c.seal("a\0b", 1, b"x", false, false).is_err());
    }
}
