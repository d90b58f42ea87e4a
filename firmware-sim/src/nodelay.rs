//! TCP_NODELAY for rumqttc's sockets.
//!
//! rumqttc 0.24 (the workspace version) opens its sockets itself, leaves
//! Nagle's algorithm on and has no option to turn it off (`NetworkOptions`
//! gained `set_tcp_nodelay` only in 0.25). With Nagle on, a small PUBLISH
//! written while an earlier one is still unacknowledged at the TCP level
//! waits for that ACK, which the peer may delay by up to 40 ms: latency
//! figures would measure the kernel, not the gateway. So after connections
//! come up, this module finds this process's TCP sockets whose peer is the
//! MQTT listener and sets TCP_NODELAY on them. Linux only (it reads
//! `/proc/self/fd`); elsewhere it does nothing.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct NoDelay {
    peers: HashSet<SocketAddr>,
    dirty: AtomicBool,
}

impl NoDelay {
    /// `host:port` of the MQTT listener. A host that does not resolve leaves
    /// nothing to match; the connection attempt will report it properly.
    pub fn new(host: &str, port: u16) -> NoDelay {
        let peers = (host, port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .unwrap_or_default();
        NoDelay {
            peers,
            dirty: AtomicBool::new(false),
        }
    }

    /// Called on every CONNACK: a new socket exists (first connect or a
    /// reconnect) and the next sweep should find it.
    pub fn mark(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Sweeps now; returns how many sockets were switched to TCP_NODELAY.
    pub fn sweep(&self) -> usize {
        self.dirty.store(false, Ordering::Relaxed);
        let n = sweep_fds(&self.peers);
        tracing::debug!(sockets = n, "TCP_NODELAY set");
        n
    }

    /// Sweeps a few times a second while connections come and go, so a burst
    /// of a thousand connects costs one sweep, not a thousand.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if me.dirty.load(Ordering::Relaxed) {
                    me.sweep();
                }
            }
        })
    }
}

#[cfg(target_os = "linux")]
fn sweep_fds(peers: &HashSet<SocketAddr>) -> usize {
    use std::os::fd::{BorrowedFd, RawFd};
    use std::os::unix::fs::FileTypeExt;

    if peers.is_empty() {
        return 0;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // `metadata` follows the /proc link to the open file itself.
        let is_socket = std::fs::metadata(entry.path()).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was open a moment ago and is only used for
        // getpeername/setsockopt, which touch no memory of ours. If another
        // thread closes it meanwhile, the calls fail with EBADF; if the number
        // is reused at once, the worst outcome is TCP_NODELAY on that socket.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let to_broker = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| peers.contains(&a));
        if to_broker && sock.nodelay().is_ok_and(|on| !on) && sock.set_nodelay(true).is_ok() {
            set += 1;
        }
    }
    set
}

#[cfg(not(target_os = "linux"))]
fn sweep_fds(_peers: &HashSet<SocketAddr>) -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn sets_nodelay_on_sockets_to_the_listener_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let to_broker = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let to_other =
            std::net::TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        assert!(!to_broker.nodelay().expect("get"));
        let nd = NoDelay::new("127.0.0.1", port);
        assert!(nd.sweep() >= 1);
        assert!(to_broker.nodelay().expect("get"));
        assert!(!to_other.nodelay().expect("get"));
    }
}
