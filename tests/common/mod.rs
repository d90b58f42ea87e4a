//! Test harness: the real `sealgate` binary on 127.0.0.1 ephemeral ports with
//! a real sled data directory, real rumqttc clients, and the admin client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use sealgate::admin::client::{AdminClient, Credentials};
use tokio::sync::mpsc;

pub mod v5;

pub const VECTOR_MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SUB_USER: &str = "dash";
pub const SUB_PASS: &str = "dash-password";
/// Upper bound for anything awaited; a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(20);

/// The gateway binary. Cargo names it for sealgate's own tests; firmware-sim's
/// tests share this harness and find it beside their own binary.
pub fn sealgate_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_sealgate") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/sealgate
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("sealgate");
    if !bin.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "sealgate", "--bin", "sealgate"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cannot build the sealgate binary");
    }
    bin
}

pub struct Gateway {
    child: Child,
    /// Every line the gateway logged so far (stderr).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
    pub data_dir: PathBuf,
    pub mqtt_port: u16,
    /// Set when the gateway was configured with a TLS listener.
    pub tls_port: Option<u16>,
    /// Set when the gateway was configured with a WebSocket listener.
    pub ws_port: Option<u16>,
    /// Set when the HTTP ingest is enabled.
    pub ingest_port: Option<u16>,
    pub http_url: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts a gateway with a fresh data directory.
    pub fn start(extra_env: &[(&str, &str)]) -> Gateway {
        let tmp = tempfile::tempdir().unwrap();
        let mut g = Gateway::start_in(tmp.path(), extra_env);
        g._tmp = Some(tmp);
        g
    }

    /// A gateway with two accounts: `dash` with the default grants, and
    /// `ops` (password `ops-password`) publishing and reading `status/#`.
    pub fn start_with_dash_and_ops() -> Gateway {
        // An empty SEALGATE_USERS leaves the file's [[users]] in force.
        Gateway::start_with_config(
            "[[users]]\nname = \"dash\"\npassword = \"dash-password\"\n\
             [[users]]\nname = \"ops\"\npassword = \"ops-password\"\n\
             subscribe = [\"status/#\"]\npublish = [\"status/#\"]\n",
            &[("SEALGATE_USERS", "")],
        )
    }

    /// Starts a gateway with a configuration file holding `toml` (merged
    /// over the embedded defaults, key by key).
    pub fn start_with_config(toml: &str, extra_env: &[(&str, &str)]) -> Gateway {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("sealgate.toml");
        std::fs::write(&cfg, toml).unwrap();
        let cfg = cfg.to_str().unwrap().to_owned();
        let mut env = vec![("SEALGATE_CONFIG", cfg.as_str())];
        env.extend_from_slice(extra_env);
        let mut g = Gateway::spawn(&tmp.path().join("data"), &env, None);
        g._tmp = Some(tmp);
        g
    }

    /// The configuration file a `start_with_config` gateway reads.
    pub fn config_file(&self) -> PathBuf {
        self.data_dir.with_file_name("sealgate.toml")
    }

    /// Starts a gateway on an existing data directory (restart tests).
    pub fn start_in(dir: &Path, extra_env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn(dir, extra_env, None)
    }

    /// Starts a gateway whose files may not grow past `bytes` (RLIMIT_FSIZE),
    /// so sled's writes really fail (EFBIG) once the database reaches it.
    pub fn start_with_file_size_limit(bytes: u64) -> Gateway {
        let tmp = tempfile::tempdir().unwrap();
        let mut g = Gateway::spawn(tmp.path(), &[], Some(bytes));
        g._tmp = Some(tmp);
        g
    }

    fn spawn(dir: &Path, extra_env: &[(&str, &str)], fsize: Option<u64>) -> Gateway {
        let mut cmd = Command::new(sealgate_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("SEALGATE_DATA_DIR", dir)
            .env("SEALGATE_MQTT_LISTEN", "127.0.0.1:0")
            .env("SEALGATE_HTTP_LISTEN", "127.0.0.1:0")
            .env("SEALGATE_MASTER_KEY", VECTOR_MASTER)
            .env("SEALGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SEALGATE_USERS", format!("{SUB_USER}:{SUB_PASS}"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        if let Some(bytes) = fsize {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Ignored signals stay ignored across exec: a write past
                    // the limit then fails with EFBIG instead of killing us.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sealgate");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_w = log.clone();
        let log_reader = std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log_w.lock().unwrap().push(line.clone());
                if !sent && line.contains("sealgate ready.") {
                    let field = |name: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(name))
                            .map(str::to_owned)
                            .unwrap_or_default()
                    };
                    let _ = tx.send((
                        field("mqtt="),
                        field("http="),
                        field("mqtts="),
                        field("ws="),
                        field("ingest="),
                    ));
                    sent = true;
                }
                if std::env::var_os("SEALGATE_TEST_LOG").is_some() {
                    eprintln!("[gw] {line}");
                }
            }
        });
        let (mqtt, http, mqtts, ws, ingest) =
            rx.recv_timeout(WAIT).expect("gateway did not become ready");
        let port = |a: &str| a.rsplit(':').next().and_then(|p| p.parse().ok());
        Gateway {
            child,
            log,
            log_reader: Some(log_reader),
            data_dir: dir.to_path_buf(),
            mqtt_port: port(&mqtt).expect("mqtt port"),
            tls_port: port(&mqtts),
            ws_port: port(&ws),
            ingest_port: port(&ingest),
            http_url: format!("http://{http}"),
            _tmp: None,
        }
    }

    /// Every line logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::new(&self.http_url, ADMIN_TOKEN)
    }

    /// Registers a device (blocking HTTP off the async workers).
    pub async fn add_device(&self, id: &str) -> Credentials {
        let admin = self.admin();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || admin.add(&id, None))
            .await
            .unwrap()
            .expect("add device")
    }

    pub async fn admin_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(AdminClient) -> T + Send + 'static,
    ) -> T {
        let admin = self.admin();
        tokio::task::spawn_blocking(move || f(admin)).await.unwrap()
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{}", self.http_url, path);
        tokio::task::spawn_blocking(move || match ureq::get(&url).call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {url}: {e}"),
        })
        .await
        .unwrap()
    }

    /// Value of one Prometheus sample, e.g. `sealgate_rejects_total{reason="bad_mac"}`.
    /// Fails the test if `/metrics` has no such sample: a misspelt name or
    /// label must not read as 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.http_get("/metrics").await;
        prometheus_sample(&text, sample)
    }

    /// SIGKILL (no shutdown path runs), then a new gateway on the same data.
    pub fn kill9_and_restart(self) -> Gateway {
        self.kill9_and_restart_with(&[])
    }

    /// `kill9_and_restart` with environment for the new gateway (such as
    /// the `SEALGATE_CONFIG` of `start_with_config`, see `config_file`).
    pub fn kill9_and_restart_with(mut self, extra_env: &[(&str, &str)]) -> Gateway {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut next = Gateway::start_in(&self.data_dir, extra_env);
        next._tmp = self._tmp.take();
        next
    }

    /// SIGTERM (the whole shutdown path runs, and must succeed), then a new
    /// gateway on the same data, with `extra_env` as `kill9_and_restart_with`.
    pub fn terminate_and_restart_with(mut self, extra_env: &[(&str, &str)]) -> Gateway {
        let tmp = self._tmp.take();
        let dir = self.data_dir.clone();
        let status = self.terminate();
        assert!(status.success(), "graceful shutdown: {status}");
        let mut next = Gateway::start_in(&dir, extra_env);
        next._tmp = tmp;
        next
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.terminate_with_log().0
    }

    /// SIGTERM, wait for the exit, and return everything the gateway logged.
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        (status, log)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn options(port: u16, client_id: &str, user: &str, pass: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o
}

/// What a client's event loop saw.
#[derive(Debug)]
pub enum Seen {
    ConnAck(rumqttc::ConnectReturnCode),
    PubAck(u16),
    PubComp(u16),
    Publish(String, Vec<u8>),
    SubAck(Vec<rumqttc::SubscribeReasonCode>),
    Closed(String),
}

pub struct Client {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Seen>,
}

fn drive(mut el: EventLoop, tx: mpsc::UnboundedSender<Seen>) {
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    let seen = match p {
                        Packet::ConnAck(c) => Seen::ConnAck(c.code),
                        Packet::PubAck(a) => Seen::PubAck(a.pkid),
                        Packet::PubComp(a) => Seen::PubComp(a.pkid),
                        Packet::Publish(p) => Seen::Publish(p.topic, p.payload.to_vec()),
                        Packet::SubAck(s) => Seen::SubAck(s.return_codes),
                        _ => continue,
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Seen::Closed(e.to_string()));
                    return;
                }
            }
        }
    });
}

impl Client {
    /// Connects and returns once the CONNACK (accepted or not) is seen.
    pub async fn connect(
        port: u16,
        client_id: &str,
        user: &str,
        pass: &str,
    ) -> (Client, Result<(), String>) {
        Client::connect_with(options(port, client_id, user, pass)).await
    }

    /// Connects with prepared options (another transport, a will, ...).
    pub async fn connect_with(opts: MqttOptions) -> (Client, Result<(), String>) {
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        drive(el, tx);
        let mut c = Client { client, rx };
        let r = match c.next().await {
            Seen::ConnAck(rumqttc::ConnectReturnCode::Success) => Ok(()),
            other => Err(format!("{other:?}")),
        };
        (c, r)
    }

    pub async fn device(port: u16, creds: &Credentials) -> Client {
        let (c, r) = Client::connect(
            port,
            &creds.device_id,
            &creds.device_id,
            &creds.mqtt_password,
        )
        .await;
        r.expect("device connects");
        c
    }

    /// A dashboard on `clean/#` and `sealgate/events/#`. Tests send one
    /// message at a time and await its outcome, so results arrive in order
    /// even across the two filters.
    pub async fn subscriber(port: u16) -> Client {
        Client::subscriber_to(port, &["clean/#", "sealgate/events/#"]).await
    }

    /// A dashboard subscribed to `filters` at QoS 1; all must be granted.
    pub async fn subscriber_to(port: u16, filters: &[&str]) -> Client {
        Client::account_to(port, "dash-1", SUB_USER, SUB_PASS, filters).await
    }

    /// Account `user` connected as `id` and subscribed to `filters` at QoS
    /// 1; all must be granted.
    pub async fn account_to(
        port: u16,
        id: &str,
        user: &str,
        pass: &str,
        filters: &[&str],
    ) -> Client {
        let (mut c, r) = Client::connect(port, id, user, pass).await;
        r.expect("subscriber connects");
        let codes = c.subscribe(filters).await;
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "{filters:?}: {codes:?}"
        );
        c
    }

    /// Subscribes to `filters` in one SUBSCRIBE and returns the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
        let topics = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
        self.client.subscribe_many(topics).await.unwrap();
        loop {
            match self.next().await {
                Seen::SubAck(codes) => return codes,
                Seen::Publish(..) | Seen::PubAck(_) => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub async fn next(&mut self) -> Seen {
        next_event(&mut self.rx, Seen::Closed).await
    }

    /// Publishes at QoS 1 and waits for the PUBACK, which the gateway sends
    /// only once the message's outcome is final.
    pub async fn publish_acked(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        loop {
            match self.next().await {
                Seen::PubAck(_) => return,
                Seen::Publish(..) => continue,
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// The next publish received, skipping acks.
    pub async fn next_publish(&mut self) -> (String, Vec<u8>) {
        loop {
            match self.next().await {
                Seen::Publish(t, p) => return (t, p),
                Seen::PubAck(_) | Seen::SubAck(_) | Seen::PubComp(_) => continue,
                other => panic!("expected a publish, got {other:?}"),
            }
        }
    }
}

/// The next event a test client's event loop passed on (`closed` once the
/// loop ended), failing the test after [`WAIT`].
pub async fn next_event<T>(rx: &mut mpsc::UnboundedReceiver<T>, closed: fn(String) -> T) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for MQTT traffic")
        .unwrap_or_else(|| closed("event loop ended".into()))
}

/// A sealed JSON message for `creds` with the given nonce.
pub fn seal(creds: &Credentials, stream: &str, nonce: u64, plaintext: &[u8]) -> Vec<u8> {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(&creds.secret, &mut secret).unwrap();
    let keys = sealgate::envelope::DeviceKeys::from_secret(&secret);
    sealgate::envelope::seal(
        &keys,
        &sealgate::envelope::SealInput {
            device_id: &creds.device_id,
            stream,
            kid: creds.kid,
            nonce,
            iv: None,
            plaintext,
            binary: false,
        },
    )
    .expect("a registered id and a short stream")
}

/// Parses an event payload.
pub fn event(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).expect("event is JSON")
}

impl Gateway {
    /// Waits for the gateway to exit on its own; returns its status and
    /// everything it logged. Panics if it is still running after `WAIT`.
    pub async fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        (status, log)
    }
}

/// Waits until a Prometheus sample satisfies `ok` (a state the gateway
/// reaches on its own, such as a closed connection being counted out).
pub async fn wait_metric(gw: &Gateway, sample: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = gw.metric(sample).await;
        if ok(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} stayed at {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample named exactly `sample` (name and labels) in a
/// Prometheus text exposition; panics, showing what there is, if absent.
pub fn prometheus_sample(text: &str, sample: &str) -> f64 {
    let found = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == sample);
    match found {
        Some((_, value)) => value
            .parse()
            .unwrap_or_else(|_| panic!("{sample} has a value that is not a number: {value}")),
        None => {
            let family = sample.split('{').next().unwrap_or(sample);
            let similar: Vec<&str> = text.lines().filter(|l| l.contains(family)).collect();
            panic!("no sample {sample} in /metrics; lines naming {family}: {similar:#?}")
        }
    }
}

/// Device `a` still delivers, through `sub`, after whatever happened to
/// other clients.
pub async fn still_delivers(gw: &Gateway, a: &Credentials, nonce: u64, sub: &mut Client) {
    let mut dev = Client::device(gw.mqtt_port, a).await;
    dev.publish_acked(
        &format!("sealed/{}/t", a.device_id),
        seal(a, "t", nonce, b"fine"),
    )
    .await;
    assert_eq!(
        sub.next_publish().await,
        (format!("clean/{}/t", a.device_id), b"fine".to_vec())
    );
}

/// Waits until the client's connection is closed by the gateway.
pub async fn closed(c: &mut Client) {
    loop {
        if let Seen::Closed(_) = c.next().await {
            return;
        }
    }
}

/// The next publish `sub` gets is an event on `topic` with `reason`.
pub async fn expect_event(sub: &mut Client, topic: &str, reason: &str) {
    let (t, body) = sub.next_publish().await;
    assert_eq!(t, topic);
    assert_eq!(event(&body)["reason"], reason);
}

/// An MQTT remaining-length field, for tests that write packets by hand.
pub fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return;
        }
    }
}

/// An MQTT UTF-8 string (or binary data): length, then bytes.
pub fn mqtt_str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet: its first byte, remaining length and `body`.
pub fn framed(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Sends a hand-written MQTT 5 CONNECT (clean start as `flags` says,
/// `props` as its properties) for `id` with the subscriber account, and
/// reads the CONNACK, which must be one. Returns the open stream.
pub async fn raw_v5_connect(port: u16, id: &str, flags: u8, props: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = Vec::new();
    mqtt_str(b"MQTT", &mut body);
    body.extend_from_slice(&[5, flags, 0, 30]);
    remaining_length(props.len(), &mut body);
    body.extend_from_slice(props);
    mqtt_str(id.as_bytes(), &mut body);
    mqtt_str(SUB_USER.as_bytes(), &mut body);
    mqtt_str(SUB_PASS.as_bytes(), &mut body);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&framed(0x10, &body)).await.unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).await.unwrap();
    s
}
