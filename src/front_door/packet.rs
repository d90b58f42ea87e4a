//! The little of MQTT framing we read ourselves. rumqttd's codec decodes
//! packets, but keeps a PUBLISH's QoS and packet id private; the front door
//! needs both to acknowledge sealed messages only after they are durable.

/// Fixed header of the first packet in `buf`: first byte and total frame
/// length. `None` while the header is incomplete or malformed; the codec
/// reports those cases precisely.
pub fn frame(buf: &[u8]) -> Option<(u8, usize)> {
    let first = *buf.first()?;
    let mut len: usize = 0;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((first, 2 + i + len));
        }
    }
    None
}

/// QoS and packet id of a complete PUBLISH frame (`frame` already checked).
/// Returns `None` when the frame is not a PUBLISH.
pub fn publish_qos_pkid(buf: &[u8]) -> Option<(u8, u16)> {
    let (first, _) = frame(buf)?;
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

/// The protocol level of a CONNECT frame (4 = 3.1.1, 5 = 5.0, 3 = 3.1).
pub fn connect_level(buf: &[u8]) -> Option<u8> {
    let (first, _) = frame(buf)?;
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
        assert_eq!(frame(&p), Some((0x32, 10)));
        assert_eq!(publish_qos_pkid(&p), Some((1, 0x1234)));
        assert_eq!(publish_qos_pkid(&[0x30, 4, 0, 1, b'a', b'x']), Some((0, 0)));
        assert_eq!(frame(&[0x30]), None);
        assert_eq!(frame(&[0x30, 0x80]), None);
        assert_eq!(frame(&[0x30, 0x80, 0x01]).map(|f| f.1), Some(3 + 128));
        assert_eq!(frame(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]), None);
    }

    #[test]
    fn reads_connect_level() {
        let c = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 30];
        assert_eq!(connect_level(&c), Some(5));
        assert_eq!(connect_level(&[0x20, 2, 0, 0]), None);
    }
}
