//! SUBSCRIBE under the topic rules: refused filters get a failure code while
//! the client's permitted filters in the same packet are granted. The router
//! sees only the permitted ones; its SUBACK is completed with the refusals.

use std::collections::HashMap;

use rumqttd::protocol::{Packet, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode};

use super::acl::Acl;
use super::auth::Role;

/// Splits a SUBSCRIBE into allowed and refused filters. Returns what to
/// send: a SUBACK to write now when nothing is allowed, otherwise the
/// SUBSCRIBE (possibly narrowed) for the router; its SUBACK is completed
/// with the refusals by `merge_suback`.
pub(super) fn screen(
    acl: &Acl,
    role: &Role,
    v5: bool,
    mut sub: Subscribe,
    props: Option<SubscribeProperties>,
    pending: &mut HashMap<u16, Vec<bool>>,
) -> Packet {
    let mask: Vec<bool> = sub
        .filters
        .iter()
        .map(|f| acl.may_subscribe(role, &f.path))
        .collect();
    if mask.iter().all(|a| *a) {
        return Packet::Subscribe(sub, props);
    }
    let denied: Vec<&str> = sub
        .filters
        .iter()
        .zip(&mask)
        .filter(|(_, a)| !**a)
        .map(|(f, _)| f.path.as_str())
        .collect();
    tracing::info!(role = ?role, filters = ?denied, "Refused subscription.");
    if !mask.iter().any(|a| *a) {
        let codes = mask.iter().map(|_| refused_code(v5)).collect();
        let ack = SubAck {
            pkid: sub.pkid,
            return_codes: codes,
        };
        return Packet::SubAck(ack, None);
    }
    let mut keep = mask.iter();
    sub.filters.retain(|_| *keep.next().unwrap_or(&false));
    pending.insert(sub.pkid, mask);
    Packet::Subscribe(sub, props)
}

fn refused_code(v5: bool) -> SubscribeReasonCode {
    if v5 {
        SubscribeReasonCode::NotAuthorized
    } else {
        SubscribeReasonCode::Failure
    }
}

/// Puts the refused filters' codes back into a narrowed SUBSCRIBE's SUBACK.
pub(super) fn merge_suback(
    v5: bool,
    packet: Packet,
    pending: &mut HashMap<u16, Vec<bool>>,
) -> Packet {
    let Packet::SubAck(mut ack, props) = packet else {
        return packet;
    };
    if let Some(mask) = pending.remove(&ack.pkid) {
        let mut granted = ack.return_codes.into_iter();
        ack.return_codes = mask
            .iter()
            .map(|allowed| match allowed {
                true => granted.next().unwrap_or(refused_code(v5)),
                false => refused_code(v5),
            })
            .collect();
    }
    Packet::SubAck(ack, props)
}
