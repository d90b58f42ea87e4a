//! The little of MQTT framing we read ourselves. rumqttd's codec decodes
//! packets, but keeps a PUBLISH's QoS and packet id private; the front door
//! needs both to acknowledge sealed messages only after they are durable.
//! Framing is also where a hostile client is cut off first: a header that
//! can never become a packet must close the connection, not grow a buffer.

/// What the start of a read buffer holds. (`Frame::Frame` reads as the
/// three answers framing has: incomplete, malformed, or a frame.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum Frame {
    /// Not enough bytes yet to know the packet's length.
    Incomplete,
    /// The remaining length has a fifth continuation byte (MQTT allows
    /// four): no amount of further input makes this a packet.
    Malformed,
    /// The first byte and the whole frame's length, header included. The
    /// frame may still be incomplete in the buffer.
    Frame { first: u8, len: usize },
}

/// Reads the fixed header at the start of `buf`.
pub fn frame(buf: &[u8]) -> Frame {
    let Some(&first) = buf.first() else {
        return Frame::Incomplete;
    };
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Frame::Incomplete;
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Frame::Frame {
                first,
                len: 2 + i + len,
            };
        }
    }
    Frame::Malformed
}

/// QoS and packet id of a complete PUBLISH frame (`frame` already checked).
/// Returns `None` when the frame is not a PUBLISH.
pub fn publish_qos_pkid(buf: &[u8]) -> Option<(u8, u16)> {
    let Frame::Frame { first, .. } = frame(buf) else {
        return None;
    };
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 3;
    if qos == 0 {
        return Some((0, 0));
    }
    let mut header = 2;
    while buf.get(header - 1)? & 0x80 != 0 {
        header += 1;
    }
    let topic_len = usize::from(u16::from_be_bytes([
        *buf.get(header)?,
        *buf.get(header + 1)?,
    ]));
    let at = header + 2 + topic_len;
    Some((qos, u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?])))
}

/// Lowers the QoS of the PUBLISH frame that fills `frame` (as rumqttd's
/// encoder wrote it) to `qos`; returns the frame's new length. For QoS 0 the
/// packet id goes and DUP is cleared (MQTT-3.3.1-2), the rest moves up in
/// place. A frame that is not a PUBLISH above `qos` is left as it is.
pub fn lower_publish_qos(frame: &mut [u8], qos: u8) -> usize {
    let len = frame.len();
    let Some(&first) = frame.first() else {
        return len;
    };
    let own = (first >> 1) & 3;
    if first >> 4 != 3 || own <= qos {
        return len;
    }
    if qos > 0 {
        frame[0] = (first & !0x06) | (qos << 1);
        return len;
    }
    let mut length_bytes = 1;
    while frame.get(length_bytes).is_some_and(|b| b & 0x80 != 0) {
        length_bytes += 1;
    }
    let body = 1 + length_bytes;
    let topic_len = match frame.get(body..body + 2) {
        Some(t) => usize::from(u16::from_be_bytes([t[0], t[1]])),
        None => return len,
    };
    let topic_end = body + 2 + topic_len;
    if topic_end + 2 > len {
        return len;
    }
    let mut remaining = len - body - 2;
    let mut new_length = [0u8; 4];
    let mut n = 0;
    loop {
        let mut b = (remaining & 0x7f) as u8;
        remaining >>= 7;
        if remaining > 0 {
            b |= 0x80;
        }
        new_length[n] = b;
        n += 1;
        if remaining == 0 || n == 4 {
            break;
        }
    }
    let new_body = 1 + n;
    // Both pieces move towards the start, the first one first.
    frame.copy_within(body..topic_end, new_body);
    frame.copy_within(topic_end + 2..len, new_body + 2 + topic_len);
    frame[1..new_body].copy_from_slice(&new_length[..n]);
    frame[0] = first & 0xf1;
    len - (length_bytes - n) - 2
}

/// The protocol level of a CONNECT frame (4 = 3.1.1, 5 = 5.0, 3 = 3.1).
pub fn connect_level(buf: &[u8]) -> Option<u8> {
    let Frame::Frame { first, .. } = frame(buf) else {
        return None;
    };
    if first >> 4 != 1 {
        return None;
    }
    let mut header = 2;
    while buf.get(header - 1)? & 0x80 != 0 {
        header += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(header)?,
        *buf.get(header + 1)?,
    ]));
    buf.get(header + 2 + name_len).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_publish_header() {
        // PUBLISH qos1, topic "a/b", pkid 0x1234, payload "x"
        let p = [0x32, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        assert_eq!(
            frame(&p),
            Frame::Frame {
                first: 0x32,
                len: 10
            }
        );
        assert_eq!(publish_qos_pkid(&p), Some((1, 0x1234)));
        assert_eq!(publish_qos_pkid(&[0x30, 4, 0, 1, b'a', b'x']), Some((0, 0)));
        assert_eq!(
            frame(&[0x30, 0x80, 0x01]),
            Frame::Frame {
                first: 0x30,
                len: 3 + 128
            }
        );
    }

    #[test]
    fn incomplete_and_malformed_headers_differ() {
        assert_eq!(frame(&[]), Frame::Incomplete);
        assert_eq!(frame(&[0x30]), Frame::Incomplete);
        assert_eq!(frame(&[0x30, 0x80]), Frame::Incomplete);
        assert_eq!(frame(&[0x30, 0x80, 0x80, 0x80]), Frame::Incomplete);
        // Four length bytes is the maximum: 268,435,455.
        assert_eq!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0x7f]),
            Frame::Frame {
                first: 0x30,
                len: 5 + 268_435_455
            }
        );
        // A fifth continuation byte can never become a packet.
        assert_eq!(frame(&[0x30, 0x80, 0x80, 0x80, 0x80]), Frame::Malformed);
        assert_eq!(
            frame(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Frame::Malformed
        );
        assert_eq!(
            publish_qos_pkid(&[0x32, 0x80, 0x80, 0x80, 0x80, 0x01]),
            None
        );
    }

    #[test]
    fn a_publish_is_lowered_to_a_qos_in_place() {
        use rumqttd::protocol::{v4::V4, v5::V5, Packet, Protocol};
        // QoS 2, DUP, retain; topic "a/b", pkid 0x1234, payload "x".
        let qos2 = [0x3d, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        let mut f = qos2;
        assert_eq!(lower_publish_qos(&mut f, 1), 10);
        assert_eq!(f[0], 0x3b);
        assert_eq!(publish_qos_pkid(&f), Some((1, 0x1234)));
        let mut f = qos2;
        let n = lower_publish_qos(&mut f, 0);
        assert_eq!(&f[..n], [0x31, 6, 0, 3, b'a', b'/', b'b', b'x']);
        let mut f = qos2;
        assert_eq!(lower_publish_qos(&mut f, 2), 10, "not raised");
        assert_eq!(f, qos2);

        // The remaining length loses a byte at 128 (MQTT 5: an empty
        // property length before the payload).
        let payload = [7u8; 123];
        let mut f = vec![0x34, 0x81, 0x01, 0, 1, b't', 0, 9, 0];
        f.extend_from_slice(&payload);
        assert_eq!(
            frame(&f),
            Frame::Frame {
                first: 0x34,
                len: f.len()
            }
        );
        let n = lower_publish_qos(&mut f, 0);
        f.truncate(n);
        assert_eq!(
            frame(&f),
            Frame::Frame {
                first: 0x30,
                len: n
            }
        );
        let mut b = bytes::BytesMut::from(&f[..]);
        let Ok(Packet::Publish(p, _)) = V5.read_mut(&mut b, 1 << 10) else {
            panic!("not a publish")
        };
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"t"[..], &payload[..]));
        // MQTT 3.1.1: no property length.
        let mut f = vec![0x32, 6, 0, 1, b't', 0, 9, b'x'];
        let n = lower_publish_qos(&mut f, 0);
        let mut b = bytes::BytesMut::from(&f[..n]);
        assert!(matches!(
            V4.read_mut(&mut b, 1 << 10),
            Ok(Packet::Publish(..))
        ));
    }

    #[test]
    fn reads_connect_level() {
        let c = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 30];
        assert_eq!(connect_level(&c), Some(5));
        assert_eq!(connect_level(&[0x20, 2, 0, 0]), None);
    }
}
