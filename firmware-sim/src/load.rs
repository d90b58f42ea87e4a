//! A load run: provision, connect the subscriber then the fleet, publish on a
//! schedule for the duration, wait for the tail, and report.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::collector::{self, Observed};
use crate::device::{self, Link, PublishPlan};
use crate::fleet::{self, SimDevice};
use crate::ledger::{Ledger, Tally};
use crate::message;
use crate::procstat;
use crate::report::{LoadCounts, LoadReport, LoadSettings};
use crate::Common;

pub struct LoadPlan {
    /// Messages per second across the fleet; 0 for as fast as possible.
    pub rate: f64,
    pub duration: Duration,
    pub progress: bool,
    /// `--latency-timeline`: where to write the latency over time.
    pub timeline: Option<std::path::PathBuf>,
}

/// The tail is done when the gateway has been quiet this long...
const QUIET: Duration = Duration::from_secs(3);
/// ...and given up on after this long.
const MAX_DRAIN: Duration = Duration::from_secs(30);
/// Connects in flight at once: enough to be quick, few enough not to look
/// like a SYN flood to the gateway's accept queue.
const CONNECT_PARALLEL: usize = 128;

pub async fn run(common: &Common, plan: LoadPlan) -> Result<LoadReport, String> {
    let (source, imp) = (common.source.clone(), common.sealer);
    let fleet: Vec<Arc<SimDevice>> =
        tokio::task::spawn_blocking(move || fleet::provision(&source, None, imp))
            .await
            .map_err(|e| format!("provisioning stopped: {e}"))??
            .into_iter()
            .map(Arc::new)
            .collect();

    let (tx, rx) = mpsc::unbounded_channel();
    let collector =
        collector::start(&common.target, &common.subscriber, &common.topics, tx).await?;

    let epoch = std::time::Instant::now();
    let tally = Arc::new(Tally::new(epoch)?);
    let links = connect_all(&fleet, common, &tally).await?;

    let base = message::first_nonce(message::now_ms());
    let ids: Vec<(String, u64)> = fleet.iter().map(|d| (d.id.clone(), base)).collect();
    let ledger = Arc::new(Ledger::new(&ids, epoch));
    let matcher = tokio::spawn(match_deliveries(rx, ledger.clone(), tally.clone()));

    let start = Instant::now() + Duration::from_millis(20);
    let end = start + plan.duration;
    let bar = progress_bar(plan.progress, plan.duration);
    let ticker = tokio::spawn(tick_progress(bar.clone(), tally.clone(), start));

    let cpu = procstat::Window::open(&common.cpu_pids);
    let (stop_tx, stop_rx) = watch::channel(false);
    let publish_plan = Arc::new(PublishPlan {
        sealed_prefix: common.topics.sealed.clone(),
        stream: common.stream.clone(),
        qos: common.qos,
        style: common.style,
        payload_bytes: common.payload_bytes,
        per_device_rate: plan.rate / fleet.len() as f64,
        start,
        end,
    });
    let mut publishers = JoinSet::new();
    for (i, (dev, link)) in fleet.iter().zip(&links).enumerate() {
        let offset = if plan.rate > 0.0 {
            Duration::from_secs_f64(i as f64 / plan.rate)
        } else {
            Duration::ZERO
        };
        publishers.spawn(device::publish_loop(
            i,
            dev.clone(),
            link.client.clone(),
            publish_plan.clone(),
            offset,
            base,
            ledger.clone(),
            tally.clone(),
            stop_rx.clone(),
        ));
    }

    // Ctrl-C ends publishing early; the tail is still drained (a second
    // Ctrl-C cuts that short too), so the report stays meaningful.
    tokio::select! {
        _ = tokio::time::sleep_until(end) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    let stopped = Instant::now();
    if tokio::time::timeout(Duration::from_secs(5), async {
        while publishers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        publishers.abort_all();
    }
    let publish_secs = stopped
        .min(end)
        .saturating_duration_since(start)
        .as_secs_f64();

    let drain_start = Instant::now();
    let drained = drain(&tally, drain_start).await;
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let watched_cpu = cpu.close();
    let last_activity = epoch
        + Duration::from_micros(
            tally
                .last_activity_us
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    let active_secs = last_activity
        .saturating_duration_since(start.into_std())
        .as_secs_f64();

    ticker.abort();
    bar.finish_and_clear();
    let mut closing = JoinSet::new();
    for link in links {
        closing.spawn(link.close());
    }
    while closing.join_next().await.is_some() {}
    collector.close().await;
    // The collector's sender is gone now; let the matcher finish the queue.
    let _ = tokio::time::timeout(Duration::from_secs(2), matcher).await;

    let counts = LoadCounts {
        sent: Tally::get(&tally.sent),
        acked: Tally::get(&tally.acked),
        delivered: Tally::get(&tally.delivered),
        duplicates: Tally::get(&tally.duplicates),
        unexpected: Tally::get(&tally.unexpected),
        rejected: tally.rejected_by_reason(),
        reconnects: Tally::get(&tally.reconnects),
        publish_secs,
        drain_secs,
        active_secs,
        drained,
    };
    let settings = LoadSettings {
        devices: fleet.len(),
        target_rate: plan.rate,
        qos: common.qos as u8,
        format: if common.style.binary {
            "binary"
        } else {
            "json"
        },
        encrypt: common.style.encrypt,
        payload_bytes: common.payload_bytes,
        stream: common.stream.clone(),
        sealer: common.sealer.name(),
    };
    if let Some(path) = &plan.timeline {
        write_timeline(path, &tally.timeline())?;
    }
    let mut report = LoadReport::new(settings, counts, &tally.latency());
    report.watched_cpu = watched_cpu;
    Ok(report)
}

/// The CSV of `--latency-timeline`: one line per step with deliveries.
fn write_timeline(path: &std::path::Path, steps: &[(u64, u64)]) -> Result<(), String> {
    use std::fmt::Write as _;
    let step_ms = crate::ledger::TIMELINE_STEP.as_millis();
    let mut csv = String::from("ms,delivered,max_latency_us\n");
    for (i, (n, max)) in steps.iter().enumerate().filter(|(_, (n, _))| *n > 0) {
        let _ = writeln!(csv, "{},{n},{max}", i as u128 * step_ms);
    }
    std::fs::write(path, csv).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Connects every device, a bounded number at a time. The first failure ends
/// the run: a fleet that cannot connect measures nothing useful.
async fn connect_all(
    fleet: &[Arc<SimDevice>],
    common: &Common,
    tally: &Arc<Tally>,
) -> Result<Vec<Link>, String> {
    let permits = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let mut set = JoinSet::new();
    for (i, dev) in fleet.iter().enumerate() {
        let (dev, target, opts) = (dev.clone(), common.target.clone(), common.link);
        let (tally, permits) = (tally.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, device::connect(&dev, &target, opts, tally).await)
        });
    }
    let mut links: Vec<Option<Link>> = (0..fleet.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, link) = joined.map_err(|e| format!("connect task failed: {e}"))?;
        links[i] = Some(link?);
    }
    links
        .into_iter()
        .map(|l| l.ok_or_else(|| "a device did not connect".to_owned()))
        .collect()
}

async fn match_deliveries(
    mut rx: mpsc::UnboundedReceiver<Observed>,
    ledger: Arc<Ledger>,
    tally: Arc<Tally>,
) {
    while let Some(o) = rx.recv().await {
        match o {
            Observed::Clean {
                device_id,
                payload,
                at,
            } => {
                let d = match message::nonce_in_clean(&payload) {
                    Some(n) => ledger.deliver(&device_id, n, at),
                    None if ledger.knows(&device_id) => crate::ledger::Delivery::Unexpected,
                    None => crate::ledger::Delivery::Foreign,
                };
                tally.delivery(d, at);
            }
            Observed::Event {
                device_id,
                reason,
                at,
                ..
            } => {
                if ledger.knows(&device_id) {
                    tally.reject(&reason, at);
                }
            }
        }
    }
}

/// Waits for the tail: done when every send is accounted for, or when the
/// gateway has been quiet for [`QUIET`] (counted from the start of the drain
/// at the earliest), or after [`MAX_DRAIN`]. True when all was accounted for.
async fn drain(tally: &Tally, started: Instant) -> bool {
    loop {
        let accounted = Tally::get(&tally.delivered) + Tally::get(&tally.rejected);
        if accounted >= Tally::get(&tally.sent) {
            return true;
        }
        let now = Instant::now();
        let quiet = tally.idle_for(now.into_std()).min(now - started);
        if quiet >= QUIET || now - started >= MAX_DRAIN {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::signal::ctrl_c() => return false,
        }
    }
}

fn progress_bar(enabled: bool, duration: Duration) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(duration.as_millis() as u64),
        ProgressDrawTarget::stderr(),
    );
    let style = ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

async fn tick_progress(bar: ProgressBar, tally: Arc<Tally>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let delivered = Tally::get(&tally.delivered);
        let dt = (now - last.0).as_secs_f64();
        let rate = if dt > 0.0 {
            (delivered - last.1.min(delivered)) as f64 / dt
        } else {
            0.0
        };
        last = (now, delivered);
        bar.set_position(now.saturating_duration_since(start).as_millis() as u64);
        bar.set_message(format!(
            "sent {} delivered {} rejected {} ({rate:.0} msg/s)",
            Tally::get(&tally.sent),
            delivered,
            Tally::get(&tally.rejected),
        ));
    }
}
