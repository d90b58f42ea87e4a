//! Configuration: serde structs, the embedded default `broker.toml`, and the
//! `SEALGATE_*` environment overrides. Every error names the key or variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The commented default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../broker.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub topics: Topics,
    pub verifier: VerifierConfig,
    pub keys: KeysConfig,
    pub router: RouterConfig,
    pub acl: AclConfig,
    pub limits: LimitsConfig,
    pub sessions: SessionsConfig,
    pub ingest: IngestConfig,
    pub claims: ClaimsConfig,
    pub registry: RegistryConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub users: Vec<User>,
    /// Only from `SEALGATE_MASTER_KEY`; never read from a file here. Its
    /// `Debug` is redacted, so printing the configuration cannot leak it.
    #[serde(skip)]
    pub master_key: Option<crate::envelope::MasterKey>,
    /// Only from `SEALGATE_ADMIN_TOKEN`; `Debug` redacted too.
    #[serde(skip)]
    pub admin_token: Option<crate::secrets::AdminToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: SocketAddr,
    /// MQTT over TLS; needs `tls_cert` and `tls_key` (PEM).
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// MQTT over WebSocket (subprotocol `mqtt`), for browser dashboards.
    #[serde(default)]
    pub ws_listen: Option<SocketAddr>,
    pub max_packet_bytes: usize,
    pub connect_timeout_ms: u64,
    pub refuse_tokens_without_expiry: bool,
    /// Aliases an MQTT 5 client may set per connection; each keeps one
    /// topic name (at most a packet long) for the connection's life. At
    /// most 65,535 (validated, so that a bad value names its key).
    pub topic_alias_maximum: u32,
}

impl MqttConfig {
    /// `topic_alias_maximum` as the CONNACK carries it.
    pub fn topic_alias_max(&self) -> u16 {
        u16::try_from(self.topic_alias_maximum).unwrap_or(u16::MAX)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// A client must send a request's headers within this time, or the
    /// connection is closed: otherwise a stalled client holds a slot forever.
    pub header_read_timeout_ms: u64,
    /// Open admin connections; further sockets get a 503 and are closed.
    pub max_connections: usize,
    /// Requests per second each API key (the admin token, or a tenant's)
    /// may make; the burst is two seconds' worth. Over it: 429.
    pub key_rate: f64,
    /// Origins a browser console may call the API from (CORS); empty for
    /// none, `["*"]` for any (the API takes bearer tokens, not cookies).
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

/// The HTTP listener for legacy firmware that POSTs its envelope
/// (`crate::ingest`). Device-facing, so separate from the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// HTTPS when both are set (PEM), through the MQTT TLS listener's setup.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    pub path: String,
    pub device_from: DeviceFrom,
    pub device_header: String,
    pub device_field: String,
    /// Published as `clean/{device}/{stream}`.
    pub stream: String,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    /// Accepted requests per second per device; the burst is one second's.
    pub device_rate: f64,
}

/// Claiming devices for tenants (`crate::claims`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    /// How long a pairing code can be used.
    pub pairing_code_ttl_secs: u64,
    /// Wrong claim codes a tenant may present per minute, then 429.
    pub bad_codes_per_minute: u32,
}

/// The device registry (`crate::registry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Device records kept in memory; the others are read from disk.
    pub cache_devices: usize,
}

/// The sled database (`crate::database`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// What an acknowledged message survives.
    pub durability: crate::database::Durability,
}

/// How an ingest request names its device. The name is a claim until the
/// MAC checks under that device's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceFrom {
    /// The header `ingest.device_header`.
    Header,
    /// The last path segment: `POST {ingest.path}/{device}`.
    Path,
    /// The field `ingest.device_field` of the verified plaintext, for fleets
    /// that share one key pair.
    Field,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub sealed: String,
    pub clean: String,
    pub events: String,
    pub unverified: String,
    /// Where each tenant's copy of its devices' output lives (its mount);
    /// reserved, like `sealed`: no client reads it directly.
    pub tenants: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    pub window: u32,
    pub max_batch: usize,
    /// Microseconds a small batch may wait for company before its sync
    /// (power-loss mode only); 0 turns it off.
    pub group_wait_us: u64,
    pub queue: usize,
    pub auto_register: bool,
    pub allow_unsealed: bool,
    pub passthrough: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    pub rotation_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub max_connections: usize,
}

/// The smallest message the router stores, for sizing its log against
/// `limits.subscriber_max_lag`: rumqttd counts 4 bytes plus topic and payload,
/// and a clean topic with a device id and a short reading is about this.
pub const MIN_ROUTED_MESSAGE_BYTES: u64 = 64;

/// Limits that keep one client from exhausting the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sealed messages per second per device; 0 means no limit.
    pub device_rate: f64,
    pub device_burst: u32,
    /// Distinct streams (so clean topics) one device may publish on.
    pub max_streams_per_device: usize,
    pub max_connections: usize,
    pub max_keep_alive_secs: u16,
    /// What a subscriber account that falls behind costs: see `crate::lag`.
    pub slow_subscriber: SlowSubscriber,
    /// Messages a `block` subscriber may be behind before devices are held.
    pub subscriber_max_lag: u64,
    /// A connection whose socket takes no byte for this long is closed.
    pub write_timeout_secs: u64,
    /// The longest one `block` subscriber account may hold the devices per
    /// episode before it is treated as `drop` (see `crate::lag`).
    pub max_hold_secs: u64,
    /// Filters one connection may hold; each one costs the router a scan
    /// per new topic and a copy per matching message.
    pub max_subscriptions_per_connection: usize,
    /// Filters all connections of one account (or one device) may hold
    /// together, so opening more connections does not lift the first cap.
    pub max_subscriptions_per_account: usize,
    /// Distinct filters handed to the router over the process lifetime:
    /// rumqttd never forgets a filter, so unsubscribing frees nothing there.
    pub max_router_filters: usize,
    /// Of those, how many one account (or device) may be the first to ask
    /// for, so that one account's churn cannot use up everyone's room (in
    /// effect at most `max_router_filters`).
    pub max_router_filters_per_account: usize,
}

/// Persistent subscriber sessions and the durable outbox they read
/// (`crate::sessions`, `crate::outbox`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// The longest a persistent session outlives its connection; MQTT 5
    /// clients may ask for less, MQTT 3.1.1 persistent sessions get this.
    pub max_expiry_secs: u64,
    /// What an offline session is kept at most, by count, bytes and age:
    /// older entries are dropped for it, counted as `session_retention`.
    pub retention_messages: u64,
    pub retention_bytes: u64,
    pub retention_secs: u64,
    /// The outbox's size bound on disk; at it, devices are held.
    pub outbox_max_bytes: u64,
    /// Persistent sessions one account may keep.
    pub max_per_account: usize,
    /// QoS 1/2 messages in flight to one persistent session.
    pub max_inflight: usize,
}

/// The loss policy for a subscriber account that reads slower than messages
/// are published for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowSubscriber {
    /// Hold device publishes (no read, no PUBACK) while it is too far behind:
    /// nothing acknowledged is lost to it, and every device slows to its pace.
    Block,
    /// Never wait for it: past the router's retention it misses the oldest
    /// messages, counted in `sealgate_dropped_total{reason="subscriber_lagged"}`.
    Drop,
}

/// Topic rules (see `front_door::acl`). Filters may use `+` and `#`; in
/// `device_subscribe` a level `{id}` stands for the device's own id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    pub device_subscribe: Vec<String>,
    pub subscriber_subscribe: Vec<String>,
    pub subscriber_publish: Vec<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub password: String,
    /// Filters this account may subscribe to; `acl.subscriber_subscribe` if absent.
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    /// Topics this account may publish to; `acl.subscriber_publish` if absent.
    #[serde(default)]
    pub publish: Option<Vec<String>>,
    /// This account's policy when it falls behind; `limits.slow_subscriber` if absent.
    #[serde(default)]
    pub slow_subscriber: Option<SlowSubscriber>,
    /// The tenant the account belongs to: it then sees only that tenant's
    /// devices (`crate::accounts`), and `subscribe`/`publish` do not apply.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config {origin}: {reason}")]
    Parse { origin: String, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Reads environment variables; a seam so tests can pass a map.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Merges `overlay` into `base` table by table, so a user file only needs the
/// keys it changes.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        reason: e.message().to_owned(),
    })
}

fn parse_bool(var: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Env {
            var,
            reason: format!("expected true or false, got {v:?}"),
        }),
    }
}

fn parse_addr(var: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::Env {
        var,
        reason: format!("expected HOST:PORT with a literal IP, got {v:?}"),
    })
}

/// Parses `name:password[,name:password]`.
pub fn parse_users(v: &str) -> Result<Vec<User>, ConfigError> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((n, p)) if !n.trim().is_empty() && !p.is_empty() => Ok(User {
                name: n.trim().to_owned(),
                password: p.to_owned(),
                subscribe: None,
                publish: None,
                slow_subscriber: None,
                tenant: None,
            }),
            _ => Err(ConfigError::Env {
                var: "SEALGATE_USERS",
                reason: "expected name:password[,name:password] with non-empty names and passwords"
                    .into(),
            }),
        })
        .collect()
}

/// `name` as an HTTP header name, if it is one.
pub fn http_header_name(name: &str) -> Option<axum::http::HeaderName> {
    axum::http::HeaderName::from_bytes(name.as_bytes()).ok()
}

use crate::accounts::valid_name as valid_account_name;

impl Config {
    /// The embedded default, then the file named by `SEALGATE_CONFIG` (or
    /// `path`), then the environment.
    pub fn load(path: Option<&std::path::Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut table = parse_table(DEFAULT_TOML, "embedded broker.toml")?;
        let file = path
            .map(|p| p.to_path_buf())
            .or_else(|| env.get("SEALGATE_CONFIG").map(PathBuf::from));
        if let Some(file) = file {
            let origin = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::Read {
                path: origin.clone(),
                reason: e.to_string(),
            })?;
            merge(&mut table, parse_table(&text, &origin)?);
        }
        // The path makes a bad value's error name its key
        // (`database.durability: unknown variant ...`).
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Parse {
                origin: "merged configuration".into(),
                reason: format!("{}: {}", e.path(), e.inner().message()),
            })?;
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        if let Some(v) = env.get("SEALGATE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("SEALGATE_MQTT_LISTEN") {
            self.mqtt.listen = parse_addr("SEALGATE_MQTT_LISTEN", &v)?;
        }
        if let Some(v) = env.get("SEALGATE_HTTP_LISTEN") {
            self.http.listen = parse_addr("SEALGATE_HTTP_LISTEN", &v)?;
        }
        if let Some(v) = env.get("SEALGATE_INGEST_LISTEN") {
            self.ingest.listen = parse_addr("SEALGATE_INGEST_LISTEN", &v)?;
        }
        if let Some(v) = env.get("SEALGATE_MASTER_KEY") {
            let key = crate::envelope::MasterKey::from_hex(&v).ok_or(ConfigError::Env {
                var: "SEALGATE_MASTER_KEY",
                reason: "expected 64 hex digits (32 bytes)".into(),
            })?;
            self.master_key = Some(key);
        }
        if let Some(v) = env.get("SEALGATE_ADMIN_TOKEN") {
            let token = crate::secrets::AdminToken::new(&v).ok_or(ConfigError::Env {
                var: "SEALGATE_ADMIN_TOKEN",
                reason: format!(
                    "must be at least {} characters",
                    crate::secrets::MIN_ADMIN_TOKEN_LEN
                ),
            })?;
            self.admin_token = Some(token);
        }
        // Empty means "not given", so a template can leave it blank and keep
        // the file's [[users]].
        if let Some(v) = env.get("SEALGATE_USERS").filter(|v| !v.trim().is_empty()) {
            self.users = parse_users(&v)?;
        }
        if let Some(v) = env.get("SEALGATE_AUTO_REGISTER") {
            self.verifier.auto_register = parse_bool("SEALGATE_AUTO_REGISTER", &v)?;
        }
        if let Some(v) = env.get("SEALGATE_ALLOW_UNSEALED") {
            self.verifier.allow_unsealed = parse_bool("SEALGATE_ALLOW_UNSEALED", &v)?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if !(1..=4096).contains(&self.verifier.window) {
            return invalid("verifier.window", "must be between 1 and 4096");
        }
        if self.verifier.max_batch == 0 {
            return invalid("verifier.max_batch", "must be at least 1");
        }
        if self.verifier.group_wait_us > 10_000 {
            return invalid(
                "verifier.group_wait_us",
                "must be between 0 (off) and 10000 microseconds",
            );
        }
        if !(self.limits.device_rate >= 0.0 && self.limits.device_rate.is_finite()) {
            return invalid(
                "limits.device_rate",
                "must be a number >= 0 (0 = unlimited)",
            );
        }
        if self.mqtt.tls_listen.is_some()
            && (self.mqtt.tls_cert.is_none() || self.mqtt.tls_key.is_none())
        {
            return invalid("mqtt.tls_listen", "needs mqtt.tls_cert and mqtt.tls_key");
        }
        if self.limits.max_streams_per_device == 0 {
            return invalid("limits.max_streams_per_device", "must be at least 1");
        }
        if self.limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if self.limits.max_keep_alive_secs == 0 {
            return invalid("limits.max_keep_alive_secs", "must be at least 1");
        }
        if self.limits.write_timeout_secs == 0 {
            return invalid("limits.write_timeout_secs", "must be at least 1");
        }
        // 0 would mean "never hold", which is `slow_subscriber = "drop"`;
        // "hold for ever" is what the bound exists to prevent.
        if self.limits.max_hold_secs == 0 {
            return invalid(
                "limits.max_hold_secs",
                "must be at least 1 (use slow_subscriber = \"drop\" to never hold devices)",
            );
        }
        // A held subscriber must still find its messages in the router's
        // log: the lag bound, at a small message's size, has to fit in what
        // the log keeps for certain (all segments but the one being dropped).
        let kept =
            self.router
                .max_segment_size
                .saturating_mul(self.router.max_segment_count.saturating_sub(1)) as u64;
        let need = self
            .limits
            .subscriber_max_lag
            .saturating_mul(MIN_ROUTED_MESSAGE_BYTES);
        let may_block = self.users.iter().any(|u| {
            u.slow_subscriber.unwrap_or(self.limits.slow_subscriber) == SlowSubscriber::Block
        }) || self.limits.slow_subscriber == SlowSubscriber::Block;
        if self.limits.subscriber_max_lag == 0 || (may_block && need > kept) {
            return invalid(
                "limits.subscriber_max_lag",
                &format!(
                    "must be at least 1, and {} messages of {MIN_ROUTED_MESSAGE_BYTES} bytes ({need} bytes) must fit in what the router keeps for certain, max_segment_size x (max_segment_count - 1) = {kept} bytes",
                    self.limits.subscriber_max_lag
                ),
            );
        }
        let l = &self.limits;
        if l.max_subscriptions_per_connection == 0 {
            return invalid(
                "limits.max_subscriptions_per_connection",
                "must be at least 1",
            );
        }
        if l.max_subscriptions_per_account < l.max_subscriptions_per_connection {
            return invalid(
                "limits.max_subscriptions_per_account",
                "must be at least limits.max_subscriptions_per_connection",
            );
        }
        if l.max_router_filters < l.max_subscriptions_per_account {
            return invalid(
                "limits.max_router_filters",
                "must be at least limits.max_subscriptions_per_account",
            );
        }
        if l.max_router_filters_per_account < l.max_subscriptions_per_account {
            return invalid(
                "limits.max_router_filters_per_account",
                "must be at least limits.max_subscriptions_per_account",
            );
        }
        if !(1..=3_600_000).contains(&self.http.header_read_timeout_ms) {
            return invalid(
                "http.header_read_timeout_ms",
                "must be between 1 and 3600000 (one hour)",
            );
        }
        if self.ingest.tls_cert.is_some() != self.ingest.tls_key.is_some() {
            return invalid(
                "ingest.tls_cert",
                "ingest.tls_cert and ingest.tls_key go together",
            );
        }
        if !self.ingest.path.starts_with('/')
            || self.ingest.path.len() < 2
            || self.ingest.path.ends_with('/')
        {
            return invalid(
                "ingest.path",
                "must start with / and not end with /, like \"/process\"",
            );
        }
        if http_header_name(&self.ingest.device_header).is_none() {
            return invalid("ingest.device_header", "must be a valid HTTP header name");
        }
        if self.ingest.device_field.is_empty() {
            return invalid("ingest.device_field", "must not be empty");
        }
        if self.ingest.stream.len() > crate::envelope::MAX_STREAM_LEN
            || self.ingest.stream.contains(['+', '#', '\0'])
        {
            return invalid(
                "ingest.stream",
                "must be a topic of at most 200 bytes without wildcards",
            );
        }
        if !(64..=1_048_576).contains(&self.ingest.max_body_bytes) {
            return invalid("ingest.max_body_bytes", "must be between 64 and 1048576");
        }
        if self.ingest.max_connections == 0 {
            return invalid("ingest.max_connections", "must be at least 1");
        }
        if !(1..=3_600_000).contains(&self.ingest.header_read_timeout_ms) {
            return invalid(
                "ingest.header_read_timeout_ms",
                "must be between 1 and 3600000",
            );
        }
        if !(self.ingest.device_rate > 0.0 && self.ingest.device_rate.is_finite()) {
            return invalid("ingest.device_rate", "must be a positive number");
        }
        if !(1..=30 * 86_400).contains(&self.claims.pairing_code_ttl_secs) {
            return invalid(
                "claims.pairing_code_ttl_secs",
                "must be between 1 and 2592000",
            );
        }
        if !(1..=10_000).contains(&self.claims.bad_codes_per_minute) {
            return invalid("claims.bad_codes_per_minute", "must be between 1 and 10000");
        }
        if !(1..=100_000_000).contains(&self.registry.cache_devices) {
            return invalid("registry.cache_devices", "must be between 1 and 100000000");
        }
        if !(self.http.key_rate > 0.0 && self.http.key_rate.is_finite()) {
            return invalid("http.key_rate", "must be a positive number");
        }
        if let Some(o) = self.http.cors_origins.iter().find(|o| {
            o.as_str() != "*" && axum::http::HeaderValue::from_str(o).is_err()
                || !(o.as_str() == "*" || o.starts_with("http://") || o.starts_with("https://"))
        }) {
            return invalid(
                "http.cors_origins",
                &format!("{o:?} is not \"*\" or an origin like \"https://console.example\""),
            );
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        let sc = &self.sessions;
        if sc.outbox_max_bytes < sc.retention_bytes {
            return invalid(
                "sessions.outbox_max_bytes",
                "must be at least sessions.retention_bytes: offline sessions never hold devices",
            );
        }
        if sc.retention_messages == 0 || sc.retention_bytes == 0 || sc.retention_secs == 0 {
            return invalid("sessions.retention_*", "each bound must be at least 1");
        }
        if sc.max_per_account == 0 {
            return invalid("sessions.max_per_account", "must be at least 1");
        }
        if !(1..=65535).contains(&sc.max_inflight) {
            return invalid("sessions.max_inflight", "must be between 1 and 65535");
        }
        if self.verifier.queue == 0 {
            return invalid("verifier.queue", "must be at least 1");
        }
        if self.mqtt.max_packet_bytes < 64 {
            return invalid("mqtt.max_packet_bytes", "must be at least 64");
        }
        if u16::try_from(self.mqtt.topic_alias_maximum).is_err() {
            return invalid("mqtt.topic_alias_maximum", "must be at most 65535");
        }
        for (key, prefix) in [
            ("topics.sealed", &self.topics.sealed),
            ("topics.clean", &self.topics.clean),
            ("topics.events", &self.topics.events),
            ("topics.unverified", &self.topics.unverified),
            ("topics.tenants", &self.topics.tenants),
        ] {
            let checked =
                crate::topic::topic_name(prefix.as_bytes()).and_then(crate::topic::router_takes);
            if let Err(why) = checked {
                return invalid(key, &format!("is not a usable topic prefix: it {why}"));
            }
            if prefix.starts_with('/') || prefix.ends_with('/') {
                return invalid(key, "must not start or end with '/'");
            }
        }
        let t = &self.topics;
        let all = [&t.sealed, &t.clean, &t.events, &t.unverified, &t.tenants];
        if all
            .iter()
            .enumerate()
            .any(|(i, a)| all[i + 1..].contains(a))
        {
            return invalid(
                "topics",
                "sealed, clean, events, unverified and tenants prefixes must differ",
            );
        }
        // A mount inside another prefix (or around one) would mix tenants'
        // copies with what global accounts read.
        if all[..4]
            .iter()
            .any(|p| crate::topic::under(p, &t.tenants) || crate::topic::under(&t.tenants, p))
        {
            return invalid(
                "topics.tenants",
                "must not be under or above another topic prefix",
            );
        }
        // Nothing the gateway publishes may land under the sealed prefix:
        // wildcard filters such as `#` are granted because no sealed topic
        // ever enters the router (`front_door::acl`).
        if all[1..]
            .iter()
            .any(|p| crate::topic::under(p, &t.sealed) || crate::topic::under(&t.sealed, p))
        {
            return invalid(
                "topics.sealed",
                "must not be under or above another topic prefix",
            );
        }
        if self.router.max_segment_size < 1024 || self.router.max_segment_count == 0 {
            return invalid(
                "router",
                "max_segment_size must be >= 1024 and max_segment_count >= 1",
            );
        }
        let filters = self
            .acl
            .device_subscribe
            .iter()
            .map(|f| ("acl.device_subscribe", f))
            .chain(
                self.acl
                    .subscriber_subscribe
                    .iter()
                    .map(|f| ("acl.subscriber_subscribe", f)),
            )
            .chain(
                self.acl
                    .subscriber_publish
                    .iter()
                    .map(|f| ("acl.subscriber_publish", f)),
            )
            .chain(self.users.iter().flat_map(|u| {
                let s = u.subscribe.iter().flatten().map(|f| ("users.subscribe", f));
                s.chain(u.publish.iter().flatten().map(|f| ("users.publish", f)))
            }));
        for (key, f) in filters {
            if let Err(why) = crate::topic::filter(f) {
                return invalid(
                    key,
                    &format!("{f:?} is not a valid MQTT topic filter: it {why}"),
                );
            }
        }
        // Account names go into router client ids and shared-group names
        // (`crate::broker`): the router refuses `+ $ # /` there, and a
        // control character would reach its log lines.
        if let Some(u) = self.users.iter().find(|u| !valid_account_name(&u.name)) {
            return invalid(
                "users",
                &format!(
                    "account name {:?} must be 1 to 64 characters without '+', '#', '/', '$', spaces or control characters",
                    u.name
                ),
            );
        }
        if let Some(u) = self.users.iter().find(|u| {
            u.tenant
                .as_deref()
                .is_some_and(|t| !crate::tenants::valid_name(t))
        }) {
            return invalid(
                "users",
                &format!(
                    "account {:?}: tenant must match [a-z0-9][a-z0-9-]{{0,63}}",
                    u.name
                ),
            );
        }
        let mut names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return invalid("users", "user names must be unique");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_must_fit_router_ids() {
        for bad in ["a/b", "a+", "#", "$sys", "a b", "a\nb", ""] {
            assert!(!valid_account_name(bad), "{bad:?}");
        }
        for good in ["dash", "ops.team-1", "A_b:c"] {
            assert!(valid_account_name(good), "{good:?}");
        }
        let err = Config::load(None, &[("SEALGATE_USERS", "a/b:pw")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("users"), "{err}");
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.mqtt.listen.to_string(), "0.0.0.0:1883");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.verifier.window, 64);
        assert!(!c.verifier.auto_register && !c.verifier.allow_unsealed);
        assert_eq!(c.keys.rotation_grace_secs, 86400);
    }

    #[test]
    fn env_overrides() {
        let env = [
            ("SEALGATE_DATA_DIR", "/tmp/x"),
            ("SEALGATE_MQTT_LISTEN", "127.0.0.1:0"),
            ("SEALGATE_USERS", "dash:pw,ops:a:b"),
            ("SEALGATE_AUTO_REGISTER", "true"),
            ("SEALGATE_MASTER_KEY", &"ab".repeat(32)),
        ];
        let c = Config::load(None, &env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users[1].password, "a:b");
        assert!(c.verifier.auto_register);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let master = "c0ffee".repeat(10) + "abcd";
        let env = [
            ("SEALGATE_MASTER_KEY", master.as_str()),
            ("SEALGATE_ADMIN_TOKEN", "admin-token-do-not-print"),
            ("SEALGATE_USERS", "dash:password-do-not-print"),
        ];
        let c = Config::load(None, &env).unwrap();
        let shown = format!("{c:?} {c:#?}");
        for secret in [
            master.as_str(),
            "admin-token-do-not-print",
            "password-do-not-print",
        ] {
            assert!(!shown.contains(secret), "Debug printed {secret}: {shown}");
        }
        assert!(c.master_key.is_some() && c.admin_token.is_some());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("SEALGATE_MQTT_LISTEN", "localhost"),
            ("SEALGATE_HTTP_LISTEN", "1.2.3.4"),
            ("SEALGATE_INGEST_LISTEN", "nowhere"),
            ("SEALGATE_MASTER_KEY", "abc"),
            ("SEALGATE_ADMIN_TOKEN", "short"),
            ("SEALGATE_USERS", "nopassword"),
            ("SEALGATE_AUTO_REGISTER", "maybe"),
            ("SEALGATE_ALLOW_UNSEALED", "2"),
        ] {
            let err = Config::load(None, &[(var, val)]).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
            assert!(
                !err.contains("abc") || var != "SEALGATE_MASTER_KEY",
                "echoed a secret: {err}"
            );
        }
    }

    #[test]
    fn bad_file_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[verifier]\nwindow = 0\n").unwrap();
        let err = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(err.contains("verifier.window"), "{err}");
        std::fs::write(&p, "[verifier]\nwindwo = 3\n").unwrap();
        let err = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(err.contains("windwo"), "{err}");
        std::fs::write(&p, "[mqtt]\ntopic_alias_maximum = 65536\n").unwrap();
        let err = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(err.contains("mqtt.topic_alias_maximum"), "{err}");
        std::fs::write(&p, "[verifier]\ngroup_wait_us = 10001\n").unwrap();
        let err = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(err.contains("verifier.group_wait_us"), "{err}");
    }

    #[test]
    fn the_slow_subscriber_policy_and_its_bound_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load(Some(&p), &[])
        };
        let c = load("[[users]]\nname = \"a\"\npassword = \"p\"\nslow_subscriber = \"drop\"\n")
            .unwrap();
        assert_eq!(c.limits.slow_subscriber, SlowSubscriber::Block);
        assert_eq!(c.users[0].slow_subscriber, Some(SlowSubscriber::Drop));
        let err = load("[limits]\nslow_subscriber = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
        // 2 segments of 64 KiB keep 64 KiB for certain: 1,024 messages of 64 B.
        let small = "[router]\nmax_segment_size = 65536\nmax_segment_count = 2\n";
        assert!(load(&format!("{small}[limits]\nsubscriber_max_lag = 1024\n")).is_ok());
        let err = load(&format!("{small}[limits]\nsubscriber_max_lag = 1025\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.subscriber_max_lag"), "{err}");
        // Nobody blocks: the bound does not matter.
        assert!(load(&format!(
            "{small}[limits]\nsubscriber_max_lag = 1025\nslow_subscriber = \"drop\"\n"
        ))
        .is_ok());
        let err = load("[limits]\nwrite_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.write_timeout_secs"), "{err}");
        for (text, key) in [
            (
                "[http]\nheader_read_timeout_ms = 0\n",
                "http.header_read_timeout_ms",
            ),
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[ingest]\npath = \"process\"\n", "ingest.path"),
            ("[ingest]\npath = \"/process/\"\n", "ingest.path"),
            (
                "[ingest]\ndevice_header = \"bad header\"\n",
                "ingest.device_header",
            ),
            ("[ingest]\ntls_cert = \"/x\"\n", "ingest.tls_cert"),
            ("[ingest]\nstream = \"a/#\"\n", "ingest.stream"),
            ("[ingest]\nmax_body_bytes = 10\n", "ingest.max_body_bytes"),
            ("[ingest]\ndevice_rate = 0.0\n", "ingest.device_rate"),
            ("[http]\nkey_rate = 0.0\n", "http.key_rate"),
            (
                "[http]\ncors_origins = [\"console\"]\n",
                "http.cors_origins",
            ),
            (
                "[claims]\npairing_code_ttl_secs = 0\n",
                "claims.pairing_code_ttl_secs",
            ),
            (
                "[claims]\nbad_codes_per_minute = 0\n",
                "claims.bad_codes_per_minute",
            ),
            ("[registry]\ncache_devices = 0\n", "registry.cache_devices"),
            (
                "[database]\ndurability = \"fsync\"\n",
                "database.durability",
            ),
            (
                "[limits]\nslow_subscriber = \"x\"\n",
                "limits.slow_subscriber",
            ),
            (
                "[limits]\nmax_keep_alive_secs = 70000\n",
                "limits.max_keep_alive_secs",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        assert_eq!(load("").unwrap().limits.max_hold_secs, 60);
        let err = load("[limits]\nmax_hold_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_hold_secs"), "{err}");
    }

    #[test]
    fn subscription_caps_and_topics_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let err = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load(Some(&p), &[]).unwrap_err().to_string()
        };
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.limits.max_subscriptions_per_connection, 100);
        assert_eq!(c.limits.max_subscriptions_per_account, 1000);
        assert_eq!(c.limits.max_router_filters, 100_000);
        assert_eq!(c.limits.max_router_filters_per_account, 10_000);
        for (text, key) in [
            (
                "[limits]\nmax_subscriptions_per_connection = 0\n",
                "limits.max_subscriptions_per_connection",
            ),
            (
                "[limits]\nmax_subscriptions_per_account = 99\n",
                "limits.max_subscriptions_per_account",
            ),
            (
                "[limits]\nmax_router_filters = 999\n",
                "limits.max_router_filters",
            ),
            (
                "[limits]\nmax_router_filters_per_account = 999\n",
                "limits.max_router_filters_per_account",
            ),
            ("[topics]\nclean = \"é\"\n", "topics.clean"),
            ("[topics]\nunverified = \"$x\"\n", "topics.unverified"),
            ("[topics]\nevents = \"a/\"\n", "topics.events"),
            ("[topics]\ntenants = \"clean/t\"\n", "topics.tenants"),
            ("[topics]\nunverified = \"sealed\"\n", "topics"),
            ("[topics]\nclean = \"sealed/clean\"\n", "topics.sealed"),
            (
                "[topics]\nsealed = \"sealgate/events/s\"\n",
                "topics.sealed",
            ),
            (
                "[acl]\nsubscriber_subscribe = [\"$share/g\"]\n",
                "acl.subscriber_subscribe",
            ),
            (
                "[acl]\nsubscriber_publish = [\"a/#/b\"]\n",
                "acl.subscriber_publish",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
