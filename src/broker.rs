//! The embedded rumqttd router and the local links into it.
//!
//! sealgate serves every socket itself (see [`crate::front_door`]) and uses
//! rumqttd only as the router: subscriptions, fan-out, retained messages and
//! sessions. rumqttd's router handle has a type the crate does not export,
//! so it is captured once in a closure and links are made through it.

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::Notification;

use crate::config::RouterConfig;

type MakeLink =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> + Send + Sync;

/// Handle to the running router; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    make_link: Arc<MakeLink>,
}

/// The router session of a device: `d.{id}`.
///
/// Router client ids are namespaced so that no client reaches a session that
/// is not its own by choosing a client id: devices live under `d.`, accounts
/// under `u.`, and an account's sessions under its own name.
pub fn device_client_id(device_id: &str) -> String {
    format!("d.{device_id}")
}

/// The router session of `client_id` under `account`:
/// `u.{len(account)}.{account}.{client_id}`. The account name's length comes
/// first, so ("a.b", "c") and ("a", "b.c") cannot meet in one id: one
/// account can neither take over nor inherit another's session.
pub fn account_client_id(account: &str, client_id: &str) -> String {
    format!("u.{}.{account}.{client_id}", account.len())
}

/// A router session for an account client that sent no client id (clean
/// session only), under the id the gateway assigned it (`assigned`, which an
/// MQTT 5 client is told). It lives in its own namespace, `a.`, so it can
/// never meet an id a client chose. (The router refuses `+$#/` in ids, so no
/// reserved character can mark it instead.)
pub fn assigned_client_id(account: &str, assigned: &str) -> String {
    format!("a.{}.{account}.{assigned}", account.len())
}

impl Broker {
    /// Spawns the router thread. rumqttd's router runs until the process ends.
    pub fn start(config: &RouterConfig) -> Broker {
        let router = rumqttd::Router::new(
            0,
            rumqttd::RouterConfig {
                max_connections: config.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: config.max_segment_size,
                max_segment_count: config.max_segment_count,
                ..Default::default()
            },
        );
        // The router keeps the default scheduling class, unlike the rest
        // of the pipeline (`crate::sched` says why).
        let router_tx = router.spawn();
        Broker {
            make_link: Arc::new(move |client_id: &str, clean: bool| {
                LinkBuilder::new(client_id, router_tx.clone())
                    .clean_session(clean)
                    .build()
                    .map_err(Box::new)
            }),
        }
    }

    /// Registers a connection with the router. Blocks until the router
    /// answers: call it from a blocking context.
    pub fn link(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> {
        (self.make_link)(client_id, clean_session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_sessions_cannot_collide() {
        assert_ne!(account_client_id("a.b", "c"), account_client_id("a", "b.c"));
        assert_ne!(account_client_id("a", "x"), account_client_id("b", "x"));
        assert_ne!(account_client_id("d", "x"), device_client_id("x"));
        assert_ne!(assigned_client_id("a", "x"), account_client_id("a", "x"));
    }
}
