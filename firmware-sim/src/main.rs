//! firmware-sim: behaves like a fleet of ESP32 devices sealing telemetry for
//! sealgate, for demos, attacks and load tests. The wire format comes from
//! a library, never from here: sealgate-envelope (`--impl rust`) or the C
//! library of `c/` over FFI (`--impl c`).

mod attack;
mod bench;
mod c_sealer;
mod collector;
mod device;
mod fleet;
mod ledger;
mod load;
mod message;
mod plot;
mod procstat;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rumqttc::QoS;

use crate::attack::AttackKind;
use crate::collector::{Subscriber, Topics};
use crate::device::{LinkOptions, MqttTarget};
use crate::fleet::Source;
use crate::message::{SealImpl, SealStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Binary,
}

/// Behaves like a fleet of ESP32 devices publishing sealed telemetry to
/// sealgate, and checks what comes out on clean/ and the events topic.
///
/// Messages are sealed by sealgate-envelope (--impl rust) or by the C
/// library real firmware runs, firmware-sim/c, over FFI (--impl c).
#[derive(Debug, Parser)]
#[command(name = "firmware-sim", version, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Which library seals the devices' messages (load, honest attack
    /// messages and the hostile ones built from them). With c, it also makes
    /// each device's MQTT password (expiry 0). Messages forged with a key no
    /// device has (--attack wrong-key) are sealed in Rust either way.
    #[arg(long = "impl", value_enum, value_name = "IMPL", default_value_t = SealImpl::Rust)]
    sealer: SealImpl,

    /// MQTT listener of the gateway.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", value_parser = parse_target)]
    mqtt: MqttTarget,

    /// Admin API of the gateway, used to provision devices.
    #[arg(
        long,
        env = "SEALGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    admin_url: String,

    /// Bearer token of the admin API.
    #[arg(long, env = "SEALGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Devices to register through the admin API (ids PREFIX0001...).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,

    /// Use the credentials written by `sealgate device add-bulk --out FILE`
    /// instead of the admin API.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["devices", "prefix"])]
    devices_file: Option<PathBuf>,

    /// Device id prefix for --devices.
    #[arg(long, default_value = "sim-")]
    prefix: String,

    /// Dashboard account that subscribes to clean/# and the events topic.
    #[arg(long, value_name = "USER:PASSWORD", env = "SEALGATE_SIM_SUBSCRIBER",
          hide_env_values = true, value_parser = parse_subscriber, required = true)]
    // An Option only because seal-bench lifts the requirement.
    subscriber: Option<Subscriber>,

    /// The subscriber keeps a persistent session (clean session 0): the
    /// gateway then serves it from the durable outbox.
    #[arg(long)]
    persistent_subscriber: bool,

    /// Messages per second across the whole fleet; 0 = as fast as the
    /// inflight window allows.
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    rate: f64,

    /// How long to publish, e.g. 30s, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Envelope encoding.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,

    /// Encrypt bodies with AES-128-CBC (a fresh random IV per message).
    #[arg(long)]
    encrypt: bool,

    /// Plaintext size in bytes (at least the JSON skeleton with the nonce).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    payload_bytes: u32,

    /// MQTT QoS of device publishes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,

    /// Stream: the topic levels after the device id (may be empty).
    #[arg(long, default_value = "telemetry", value_parser = parse_stream)]
    stream: String,

    /// Most unacknowledged QoS 1/2 publishes per device connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,

    /// Send hostile traffic instead of load (uses two devices).
    #[arg(long, value_enum)]
    attack: Option<AttackKind>,

    /// Hostile messages per attack.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    hostile: u32,

    /// Print the final report as one JSON object on stdout, nothing else.
    #[arg(long)]
    json: bool,

    /// A process whose CPU time (all threads) to report for the window
    /// from the start of publishing to the end of the drain, in clock
    /// ticks (`watched_cpu` in the report). Repeatable: the gateway, a
    /// broker and its helpers. Linux only.
    #[arg(long, value_name = "PID")]
    cpu_pid: Vec<u32>,

    /// No progress bar on stderr.
    #[arg(long)]
    no_progress: bool,

    /// After a load run, write its latency over time to FILE as CSV: per
    /// 10 ms of delivery time since the fleet connected, the deliveries and
    /// the largest latency in microseconds. For finding where a tail comes
    /// from: a stall is a run of slow steps.
    #[arg(long, value_name = "FILE")]
    latency_timeline: Option<std::path::PathBuf>,

    /// Topic prefix devices publish under (gateway `topics.sealed`).
    #[arg(long, default_value = "sealed", value_parser = parse_prefix)]
    sealed_prefix: String,

    /// Topic prefix of verified messages (gateway `topics.clean`).
    #[arg(long, default_value = "clean", value_parser = parse_prefix)]
    clean_prefix: String,

    /// Topic prefix of security events (gateway `topics.events`).
    #[arg(long, default_value = "sealgate/events", value_parser = parse_prefix)]
    events_prefix: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seals per second of the Rust and the C sealer, in-process.
    ///
    /// JSON and binary, with and without AES; prints the median of the runs
    /// and the ratio C/Rust (--json: one object). Needs no gateway or
    /// subscriber; both sealers are measured whatever --impl says.
    SealBench {
        /// Runs per sealer and cell; the sealers alternate.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
        /// Length of one run, e.g. 500ms, 2s.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        per_run: Duration,
        /// Plaintext size in bytes.
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        body_bytes: u32,
    },
    /// Draws the PNG charts a benchmark results file describes
    /// (benches/compare.py writes it), one file per chart.
    Plot {
        /// The results file (JSON with a "plots" list).
        results: PathBuf,
        /// Directory the PNG files go to (created if missing).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// A TrueType font for the labels.
        #[arg(long, default_value = plot::DEFAULT_FONT)]
        font: PathBuf,
    },
    /// Claims a device for a tenant as the device would (spec section 10):
    /// POST /api/v1/claim with the claim MAC under the device's key, no
    /// bearer token. Prints the gateway's answer.
    Claim {
        /// The device's id.
        #[arg(long)]
        device_id: String,
        /// The device secret S, 64 hex digits (as `sealgate device add` showed it).
        #[arg(long, env = "SEALGATE_DEVICE_SECRET", hide_env_values = true)]
        secret: String,
        /// The pairing code the tenant got from `sealgate tenant pairing-code`.
        #[arg(long)]
        pairing_code: String,
        /// The claim nonce; by default the time in microseconds, which a
        /// device would not reuse.
        #[arg(long)]
        nonce: Option<u64>,
    },
}

/// `firmware-sim claim`: what a device sends, and the answer.
fn claim(
    admin_url: &str,
    device_id: &str,
    secret: &str,
    pairing_code: &str,
    nonce: Option<u64>,
) -> Result<String, String> {
    let id = sealgate_envelope::normalise_device_id(device_id)
        .map_err(|e| format!("device id {device_id:?}: {e}"))?;
    let mut s = [0u8; 32];
    hex::decode_to_slice(secret.trim(), &mut s)
        .map_err(|_| "the secret must be 64 hex digits".to_owned())?;
    let keys = sealgate_envelope::DeviceKeys::from_secret(&s);
    let nonce = nonce.unwrap_or_else(|| message::now_ms().saturating_mul(1000));
    let mac = sealgate_envelope::claim_mac(&keys.auth, &id, pairing_code, nonce);
    // The claim takes no bearer token; the client sends an empty one.
    let client = sealgate_client::AdminClient::new(admin_url, "");
    let claimed = client
        .claim(&id, pairing_code, nonce, &hex::encode(mac))
        .map_err(|e| format!("claim refused: {e}"))?;
    serde_json::to_string(&claimed).map_err(|e| e.to_string())
}

/// What load and attack runs share.
pub struct Common {
    pub target: MqttTarget,
    pub topics: Topics,
    pub subscriber: Subscriber,
    pub source: Source,
    pub link: LinkOptions,
    pub stream: String,
    pub qos: QoS,
    pub style: SealStyle,
    pub payload_bytes: usize,
    pub sealer: SealImpl,
    /// `--cpu-pid`: processes whose CPU time a load run reports.
    pub cpu_pids: Vec<u32>,
}

fn parse_target(s: &str) -> Result<MqttTarget, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port number (1-65535)"))?;
    Ok(MqttTarget {
        host: host.to_owned(),
        port,
    })
}

fn parse_subscriber(s: &str) -> Result<Subscriber, String> {
    match s.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(Subscriber {
            user: user.to_owned(),
            password: password.to_owned(),
            persistent: false,
        }),
        _ => Err("expected USER:PASSWORD of a dashboard account".into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (try 30s, 2m, 1h)"))?;
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate (messages per second, >= 0)")),
    }
}

fn parse_stream(s: &str) -> Result<String, String> {
    if s.len() > sealgate_envelope::MAX_STREAM_LEN {
        return Err(format!(
            "at most {} bytes",
            sealgate_envelope::MAX_STREAM_LEN
        ));
    }
    if s.contains(['+', '#', '\0']) {
        return Err("MQTT wildcards (+ #) and NUL are not allowed in a topic".into());
    }
    Ok(s.to_owned())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.starts_with('/') || s.ends_with('/') || s.contains(['+', '#', '\0']) {
        return Err("a topic prefix without wildcards or leading/trailing /".into());
    }
    Ok(s.to_owned())
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Cli {
    fn common(&self) -> Result<Common, String> {
        let subscriber = self
            .subscriber
            .clone()
            .ok_or("--subscriber USER:PASSWORD is required")?;
        let source = match &self.devices_file {
            Some(path) => Source::File(path.clone()),
            None => Source::Admin {
                url: self.admin_url.clone(),
                token: self.admin_token.clone(),
                prefix: self.prefix.clone(),
                count: if self.attack.is_some() {
                    2
                } else {
                    self.devices
                },
            },
        };
        let payload_bytes = self.payload_bytes as usize;
        Ok(Common {
            target: self.mqtt.clone(),
            topics: Topics {
                sealed: self.sealed_prefix.clone(),
                clean: self.clean_prefix.clone(),
                events: self.events_prefix.clone(),
            },
            subscriber: Subscriber {
                persistent: self.persistent_subscriber,
                ..subscriber
            },
            source,
            link: LinkOptions {
                inflight: self.inflight,
                // Room for the envelope around the plaintext (base64, IV,
                // MAC, topic); the gateway enforces its own limit.
                max_packet: payload_bytes * 2 + 4096,
            },
            stream: self.stream.clone(),
            qos: qos(self.qos),
            style: SealStyle {
                binary: self.format == Format::Binary,
                encrypt: self.encrypt,
            },
            payload_bytes,
            sealer: self.sealer,
            cpu_pids: self.cpu_pid.clone(),
        })
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    let s = serde_json::to_string(value).map_err(|e| format!("cannot encode the report: {e}"))?;
    println!("{s}");
    Ok(())
}

/// `Err` is a run that could not happen; `Ok(Some(msg))` a run that happened
/// and failed its checks.
async fn run(cli: Cli) -> Result<Option<String>, String> {
    // Before provisioning: a run that cannot seal must not register devices.
    if cli.sealer == SealImpl::C {
        c_sealer::available()?;
    }
    let common = cli.common()?;
    match cli.attack {
        Some(kind) => {
            let summary = attack::run(&common, kind, cli.hostile).await?;
            if cli.json {
                print_json(&summary)?;
            } else {
                print!("{}", summary.text());
            }
            Ok(summary.failure())
        }
        None => {
            let plan = load::LoadPlan {
                rate: cli.rate,
                duration: cli.duration,
                progress: !(cli.no_progress || cli.json),
                timeline: cli.latency_timeline.clone(),
            };
            let report = load::run(&common, plan).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", report.text());
            }
            Ok(None)
        }
    }
}

fn seal_bench(plan: &bench::BenchPlan, json: bool) -> Result<(), String> {
    let report = bench::run(plan)?;
    if json {
        print_json(&report)
    } else {
        print!("{}", report.text());
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Claim {
        device_id,
        secret,
        pairing_code,
        nonce,
    }) = &cli.command
    {
        return match claim(&cli.admin_url, device_id, secret, pairing_code, *nonce) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("firmware-sim: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Plot {
        results,
        out_dir,
        font,
    }) = &cli.command
    {
        return match plot::run(results, out_dir, font) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("firmware-sim: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::SealBench {
        runs,
        per_run,
        body_bytes,
    }) = cli.command
    {
        let plan = bench::BenchPlan {
            runs,
            per_run,
            body_bytes: body_bytes as usize,
        };
        return match seal_bench(&plan, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("firmware-sim: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("firmware-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run(cli));
    // A blocked admin call must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(failure)) => {
            eprintln!("firmware-sim: FAILED: {failure}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("firmware-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("127.0.0.1:18830"),
            Ok(MqttTarget {
                host: "127.0.0.1".into(),
                port: 18830
            })
        );
        assert_eq!(parse_target("[::1]:1883").map(|t| t.host), Ok("::1".into()));
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target(":1883").is_err());
        assert!(parse_target("h:0").is_err());
        assert!(parse_target("h:99999").is_err());
    }

    #[test]
    fn subscribers() {
        let s = parse_subscriber("dash:pw:with:colons").expect("ok");
        assert_eq!(
            (s.user.as_str(), s.password.as_str()),
            ("dash", "pw:with:colons")
        );
        assert!(parse_subscriber("dash").is_err());
        assert!(parse_subscriber(":pw").is_err());
    }

    #[test]
    fn rates_streams_prefixes() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_stream("power/inv/1").is_ok());
        assert!(parse_stream("").is_ok());
        assert!(parse_stream("a/#").is_err());
        assert!(parse_prefix("sealgate/events").is_ok());
        assert!(parse_prefix("clean/").is_err());
    }

    #[test]
    fn cli_shape() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "firmware-sim",
            "--subscriber",
            "dash:pw",
            "--devices",
            "100",
            "--rate",
            "20000",
            "--duration",
            "30s",
            "--encrypt",
            "--qos",
            "1",
        ])
        .expect("parses");
        assert_eq!(cli.devices, 100);
        assert_eq!(cli.duration, Duration::from_secs(30));
        assert!(
            Cli::try_parse_from(["firmware-sim", "--subscriber", "d:p", "--qos", "3"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "firmware-sim",
            "--subscriber",
            "d:p",
            "--devices",
            "3",
            "--devices-file",
            "x.json"
        ])
        .is_err());
        let a = Cli::try_parse_from([
            "firmware-sim",
            "--subscriber",
            "d:p",
            "--attack",
            "wrong-key",
        ])
        .expect("parses");
        assert_eq!(a.attack, Some(AttackKind::WrongKey));
        assert!(matches!(
            a.common().expect("common").source,
            Source::Admin { count: 2, .. }
        ));
        assert_eq!(a.common().expect("common").sealer, SealImpl::Rust);
        let c = Cli::try_parse_from(["firmware-sim", "--subscriber", "d:p", "--impl", "c"])
            .expect("parses");
        assert_eq!(c.common().expect("common").sealer, SealImpl::C);
        assert!(
            Cli::try_parse_from(["firmware-sim", "--subscriber", "d:p", "--impl", "go"]).is_err()
        );
        // The bench needs no gateway, so no subscriber either.
        let b = Cli::try_parse_from(["firmware-sim", "seal-bench", "--runs", "3"]).expect("parses");
        assert!(matches!(
            b.command,
            Some(Command::SealBench { runs: 3, .. })
        ));
        assert!(Cli::try_parse_from(["firmware-sim"]).is_err());
        let p = Cli::try_parse_from(["firmware-sim", "plot", "r.json", "--out-dir", "d"])
            .expect("parses");
        assert!(matches!(p.command, Some(Command::Plot { .. })));
        let w = Cli::try_parse_from([
            "firmware-sim",
            "--subscriber",
            "d:p",
            "--cpu-pid",
            "10",
            "--cpu-pid",
            "11",
        ])
        .expect("parses");
        assert_eq!(w.common().expect("common").cpu_pids, [10, 11]);
    }
}
