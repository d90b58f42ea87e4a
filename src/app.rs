//! Wires the stages together and owns startup and shutdown order.
//!
//! Startup: data dir, secrets, sled, registry, router, verifier thread,
//! listeners. Shutdown (SIGTERM, Ctrl-C): stop accepting and reading, let the
//! verifier drain its queue (commit, publish, acknowledge), let connections
//! hand over what the router still holds, flush sled, return.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::broker::Broker;
use crate::config::Config;
use crate::front_door::{self, auth::Authenticator, Context, Transport};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replay::ReplayStore;
use crate::republish::Republisher;
use crate::verifier::{check::Checker, Input, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("database in {path} cannot be opened: {reason}")]
    Database { path: String, reason: String },
    #[error("cannot listen on {addr} ({what}): {reason}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("router: {0}")]
    Router(String),
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("the {0} thread died; exiting so that a supervisor restarts the gateway")]
    ThreadDied(String),
}

/// Runs the gateway until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| AppError::DataDir {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let secrets = crate::secrets::load(&config)?;
    let db_path = config.data_dir.join("db");
    let db_err = |e: sled::Error| AppError::Database {
        path: db_path.display().to_string(),
        reason: e.to_string(),
    };
    let metrics = Arc::new(Metrics::new());
    let db = crate::database::Database::open(&db_path, config.database.durability)
        .map_err(|e| db_err(sled::Error::Io(e)))?
        .count_syncs(metrics.database_syncs.clone());
    // Before anything reads the windows, the outbox or the retained
    // messages: what a crash left in the journal goes back into sled first.
    let journal_dir = config.data_dir.join("journal");
    let (journal, recovered) =
        crate::journal::Journal::open(&journal_dir, &db, config.database.durability).map_err(
            |e| AppError::Database {
                path: journal_dir.display().to_string(),
                reason: e.to_string(),
            },
        )?;
    if recovered.records > 0 {
        tracing::info!(
            records = recovered.records,
            writes = recovered.writes,
            "Replayed the commit journal left by a crash."
        );
    }
    let registry = Registry::open_reserving(
        &db,
        config.users.iter().map(|u| u.name.as_str()),
        config.registry.cache_devices,
    )
    .map_err(|e| AppError::Database {
        path: db_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let accounts =
        crate::accounts::Accounts::open(&db, registry.clone(), &config.users).map_err(|e| {
            AppError::Database {
                path: db_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
    let windows = journal.windows();
    let store = ReplayStore::new(windows.clone(), config.verifier.window);
    let started = std::time::Instant::now();
    let (outbox, outbox_writer) =
        crate::outbox::Outbox::open(&db, config.sessions.outbox_max_bytes).map_err(db_err)?;
    for u in &config.users {
        if crate::envelope::normalise_device_id(&u.name).is_ok_and(|id| registry.get(&id).is_some())
        {
            tracing::warn!(user = %u.name, "A subscriber account has the name of a registered device; that device can no longer log in.");
        }
    }
    let persistent =
        crate::sessions::Sessions::open(&db, outbox, config.sessions.clone(), metrics.clone())
            .map_err(db_err)?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "Outbox and persistent sessions opened."
    );
    let store_ok = Arc::new(AtomicBool::new(true));
    let health = crate::health::watch();

    let lag = crate::lag::Lag::new(
        config.limits.subscriber_max_lag,
        Duration::from_secs(config.limits.max_hold_secs),
        metrics.clone(),
    );
    let broker = Broker::start(&config.router);
    let (verifier_link, verifier_rx_link, _) = {
        let b = broker.clone();
        tokio::task::spawn_blocking(move || b.link("sealgate.verifier", true))
            .await
            .map_err(|e| AppError::Router(e.to_string()))?
            .map_err(|e| AppError::Router(e.to_string()))?
    };

    let stop = CancellationToken::new();
    let out = {
        let mut out = Republisher::new(verifier_link, config.topics.clone(), lag.clone());
        let outbox = outbox_writer.outbox().clone();
        tokio::task::spawn_blocking(move || {
            let n = out.restore_retained(outbox.all_retained())?;
            if n > 0 {
                tracing::info!(messages = n, "Retained messages restored into the router.");
            }
            Ok::<_, Box<rumqttd::local::LinkError>>(out)
        })
        .await
        .map_err(|e| AppError::Router(e.to_string()))?
        .map_err(|e| AppError::Router(e.to_string()))?
    };
    let (verifier_tx, verifier_rx) = mpsc::channel::<Input>(config.verifier.queue);
    let verifier = Verifier {
        checker: Checker::new(
            secrets.master.clone(),
            registry.clone(),
            config.topics.sealed.clone(),
            config.verifier.auto_register,
            config.verifier.allow_unsealed,
            metrics.clone(),
        ),
        store,
        journal,
        trees: crate::journal::Trees::open(&db).map_err(db_err)?,
        out,
        outbox: outbox_writer,
        topics: config.topics.clone(),
        metrics: metrics.clone(),
        store_ok: store_ok.clone(),
        max_batch: config.verifier.max_batch,
        group_wait: match config.database.durability {
            crate::database::Durability::PowerLoss => {
                std::time::Duration::from_micros(config.verifier.group_wait_us)
            }
            crate::database::Durability::ProcessCrash => std::time::Duration::ZERO,
        },
        passthrough: config.verifier.passthrough,
        stopping: stop.clone(),
        accounts: Some(accounts.clone()),
    };
    let verifier_done = CancellationToken::new();
    let verifier_thread = {
        let done = verifier_done.clone();
        std::thread::Builder::new()
            .name("verifier".into())
            .spawn(move || {
                // Held so the router keeps our link; the verifier only publishes.
                let _link_rx = verifier_rx_link;
                verifier.run(verifier_rx);
                done.cancel();
            })
            .map_err(|e| AppError::Router(e.to_string()))?
    };

    let listen = |what, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|e| AppError::Listen {
            what,
            addr,
            reason: e.to_string(),
        })
    };
    let mqtt = listen("mqtt", config.mqtt.listen).await?;
    let mut extra = Vec::new();
    if let (Some(addr), Some(cert), Some(key)) = (
        config.mqtt.tls_listen,
        &config.mqtt.tls_cert,
        &config.mqtt.tls_key,
    ) {
        let acceptor = crate::front_door::transport::tls_acceptor(cert, key)
            .map_err(|e| AppError::Tls(e.to_string()))?;
        extra.push((listen("mqtts", addr).await?, Transport::Tls(acceptor)));
    }
    if let Some(addr) = config.mqtt.ws_listen {
        extra.push((listen("ws", addr).await?, Transport::WebSocket));
    }
    let http = listen("http", config.http.listen).await?;
    let ingest_listener = if config.ingest.enabled {
        let tls = match (&config.ingest.tls_cert, &config.ingest.tls_key) {
            (Some(cert), Some(key)) => Some(
                crate::front_door::transport::tls_acceptor(cert, key)
                    .map_err(|e| AppError::Tls(e.to_string()))?,
            ),
            _ => None,
        };
        Some((listen("ingest", config.ingest.listen).await?, tls))
    } else {
        None
    };
    let mqtt_addr = mqtt
        .local_addr()
        .map_err(|e| AppError::Router(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| AppError::Router(e.to_string()))?;

    let broker_for_failpoint = broker.clone();
    let lag_monitor = tokio::spawn(lag.clone().monitor(stop.clone()));
    let housekeeping = tokio::spawn(persistent.clone().housekeep(stop.clone()));
    let (revoked, _) = tokio::sync::broadcast::channel::<String>(64);
    let wills = front_door::Wills::open(&db).map_err(db_err)?;
    let ctx = Arc::new(Context {
        config: config.clone(),
        auth: Authenticator::new(
            secrets.master.clone(),
            registry.clone(),
            accounts.clone(),
            !config.mqtt.refuse_tokens_without_expiry,
            config.verifier.auto_register,
        ),
        acl: crate::front_door::acl::Acl::new(&config.topics, &config.acl, &config.users),
        broker: broker.clone(),
        verifier: verifier_tx.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        verifier_done: verifier_done.clone(),
        revoked: revoked.clone(),
        sessions: Default::default(),
        slots: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
        lag,
        streams: front_door::limits::Streams::new(config.limits.max_streams_per_device),
        subscriptions: Arc::new(front_door::SubscriptionCaps::new(
            &config.limits,
            metrics.clone(),
        )),
        persistent: persistent.clone(),
        wills,
    });
    // Before any listener accepts: no client of theirs can be back yet.
    front_door::restore_wills(&ctx);
    let tracker = TaskTracker::new();
    let mut extra_addrs = String::new();
    let mut fronts = Vec::new();
    for (listener, transport) in extra {
        if let Ok(a) = listener.local_addr() {
            extra_addrs.push_str(&format!(" {}={a}", transport.name()));
        }
        fronts.push(tokio::spawn(front_door::serve(
            listener,
            transport,
            ctx.clone(),
            tracker.clone(),
        )));
    }
    fronts.push(tokio::spawn(front_door::serve(
        mqtt,
        Transport::Tcp,
        ctx,
        tracker.clone(),
    )));

    let ingest_stop = CancellationToken::new();
    let ingest_task = ingest_listener.map(|(listener, tls)| {
        if let Ok(a) = listener.local_addr() {
            extra_addrs.push_str(&format!(" ingest={a}"));
        }
        let ingest = Arc::new(crate::ingest::Ingest::new(
            config.ingest.clone(),
            config.topics.sealed.clone(),
            registry.clone(),
            crate::registry::vault::Vault::new(&secrets.master),
            verifier_tx.clone(),
            metrics.clone(),
        ));
        tokio::spawn(crate::ingest::serve(
            listener,
            ingest,
            tls,
            ingest_stop.clone(),
        ))
    });
    let tenants = crate::tenants::Tenants::open(&db).map_err(|e| AppError::Database {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let claims = crate::claims::Claims::open(
        &db,
        registry.clone(),
        secrets.master.clone(),
        metrics.clone(),
        crate::claims::ClaimSettings {
            pairing_code_ttl_ms: config.claims.pairing_code_ttl_secs.saturating_mul(1000),
            bad_codes_per_minute: config.claims.bad_codes_per_minute,
            auto_register: config.verifier.auto_register,
        },
    )
    .map_err(|e| AppError::Database {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let admin_state = Arc::new(AdminState {
        key_rates: Default::default(),
        key_rate: config.http.key_rate,
        cors_origins: config.http.cors_origins.clone(),
        tenants,
        accounts: accounts.clone(),
        sessions: persistent.clone(),
        claims: Arc::new(claims),
        registry,
        vault: crate::registry::vault::Vault::new(&secrets.master),
        master: secrets.master,
        metrics,
        store_ok,
        stopping: stop.clone(),
        windows,
        verifier: verifier_tx.clone(),
        token_digest: admin::digest(secrets.admin_token.expose()),
        rotation_grace_ms: config.keys.rotation_grace_secs.saturating_mul(1000),
        revoked,
        health: health.clone(),
    });
    let admin_stop = CancellationToken::new();
    let admin_task = {
        let admin_stop = admin_stop.clone();
        let app = admin::router(admin_state);
        let limits = admin::ServeLimits {
            header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
            max_connections: config.http.max_connections,
        };
        tokio::spawn(admin::serve(http, app, limits, admin_stop))
    };
    tracing::info!(
        mqtt = %mqtt_addr,
        http = %http_addr,
        also = %extra_addrs,
        data_dir = %config.data_dir.display(),
        "sealgate ready."
    );

    if crate::failpoint::enabled(crate::failpoint::ROUTER_PANIC) {
        poison_router(&broker_for_failpoint);
    }
    let died = tokio::select! {
        _ = shutdown => None,
        _ = health.died() => health.which().map(str::to_owned),
    };
    match &died {
        None => tracing::info!("Shutting down: draining queued messages."),
        Some(thread) => {
            tracing::error!(thread = %thread, "A critical thread died: /readyz answers 503, the gateway exits.");
            // Nothing will drain through a dead stage: connections close now.
            verifier_done.cancel();
        }
    }
    stop.cancel();
    // The ingest stops taking requests with the front doors; requests in
    // flight get their answer from the drain below.
    ingest_stop.cancel();
    // Released for good: no connection waits on a subscriber during drain.
    let _ = lag_monitor.await;
    let _ = housekeeping.await;
    for f in fronts {
        let _ = f.await;
    }
    // Every connection has stopped reading; what is queued gets verified,
    // committed, published and acknowledged.
    let _ = verifier_tx.send(Input::Close).await;
    drop(verifier_tx);
    let _ = tokio::task::spawn_blocking(move || verifier_thread.join()).await;
    tracker.close();
    // After a thread died, connections may wait on acknowledgements that
    // will never come: exit soon, their devices resend what was not acked.
    let grace = Duration::from_secs(if died.is_some() { 1 } else { 15 });
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("Some connections did not close in time.");
    }
    if let Some(task) = ingest_task {
        let _ = task.await;
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    if let Err(e) = db.flush_async().await {
        tracing::error!(error = %e, "Final database flush failed.");
    }
    if let Some(thread) = died {
        return Err(AppError::ThreadDied(thread));
    }
    tracing::info!("sealgate stopped.");
    Ok(())
}

/// The `router_panic` fail point: a topic whose first character is
/// multi-byte UTF-8 makes rumqttd 0.20's matcher panic on the router thread.
/// The front door never lets a client's topic through like this; the fail
/// point does it on purpose, so tests see a real router death.
fn poison_router(broker: &Broker) {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || {
        if let Ok((mut tx, _rx, _)) = broker.link("sealgate.failpoint", true) {
            let _ = tx.subscribe("failpoint/#");
            let _ = tx.publish("\u{e9}/failpoint", "x");
            // Keep the link until the router has read the publish.
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}
