//! `weir serve`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use weir_broker::Broker;
use weir_net::Shutdown;

use crate::config::Config;

pub async fn run(config_path: Option<PathBuf>) -> Result<()> {
    let config = Config::load(config_path.as_deref(), std::env::vars())?;
    init_logging(&config);
    for d in &config.deprecated {
        tracing::warn!("deprecated setting: {d}");
    }
    if !config.ignored_env.is_empty() {
        tracing::warn!(
            variables = %config.ignored_env.join(", "),
            "ignoring WEIR_* environment variables that name no setting (settings are \
             WEIR_<KEY> for data_dir and shutdown_grace_ms, WEIR_<SECTION>__<KEY> for the rest)"
        );
    }
    let metrics = crate::metrics::install();
    let _lock = lock_data_dir(&config.data_dir)?;
    let broker_config = config.broker_config()?;
    let broker = tokio::task::spawn_blocking(move || Broker::open(broker_config))
        .await?
        .context("opening the data directory")?;
    let tracer = match &config.tracing.otlp_endpoint {
        Some(endpoint) => {
            let provider = crate::otel::provider(endpoint, &config.tracing.service_name)?;
            broker.set_produce_observer(crate::otel::broker_observer(&provider));
            tracing::info!(%endpoint, "exporting traces over OTLP");
            Some(provider)
        }
        None => None,
    };
    // Pipelines, built on this broker (checked when the configuration was loaded); a reload
    // reads the configuration again.
    let pipelines = {
        let path = config_path.clone();
        let load: weir_pipeline::manager::Loader = Box::new(move || {
            crate::config::Config::load(path.as_deref(), std::env::vars())
                .and_then(|c| c.pipeline_declarations())
                .map_err(|e| format!("{e:#}"))
        });
        weir_pipeline::manager::Manager::start(
            weir_pipeline::config::Host::Server(broker.clone()),
            config.pipeline_declarations()?,
            load,
        )
        .await?
    };
    let tls = config.tls()?;
    let auth = config.auth()?;
    if let Some(auth) = &auth {
        broker.set_auth(auth.clone());
        let users = auth.users();
        if users.is_empty() {
            tracing::warn!(
                users_file = %users.path().display(),
                "authentication is required but there are no users yet: add one with \
                 `weir user add NAME` (the server reads the file again when it changes)"
            );
        }
        tracing::info!(
            users = users.len(),
            users_file = %users.path().display(),
            mechanisms = %auth.mechanism_names().join(","),
            "clients must authenticate (Kafka: SASL; native: Authenticate; HTTP: bearer tokens)"
        );
        match auth.acls() {
            Some(acls) => tracing::info!(
                rules = acls.len(),
                acls_file = %acls.path().display(),
                super_users = %config.auth.super_users.join(","),
                "requests are authorized by the access control lists: what no rule allows is \
                 refused (`weir acl add`)"
            ),
            None => tracing::info!(
                "no access control lists (auth.acls = false): every authenticated client may \
                 do everything"
            ),
        }
    }
    let authenticated = auth.is_some();
    let listener = TcpListener::bind(&config.native.listen)
        .await
        .with_context(|| format!("binding the native listener to {}", config.native.listen))?;
    let addr = listener.local_addr()?;
    // Whether any listener can be reached from beyond this machine (each one that can without
    // authentication is warned about: docs/security.md).
    let mut reachable = exposed("native", addr, authenticated);
    // Listeners where no one gets in unchecked: client certificates or authentication.
    let guarded = config.tls.client_ca.is_some() || authenticated;
    tracing::info!(native = %addr, data_dir = %config.data_dir.display(), "weir is serving");
    // A line scripts and tests can wait for, on stdout whatever the log format.
    println!("weir listening native={addr}");

    // The server's one lifetime: every door accepts on it and spawns its connections on it;
    // this function alone ends it and closes the broker, once, last.
    let shutdown = Shutdown::new();
    let mut native = vec![(listener, None)];
    if let Some(at) = &config.native.tls_listen {
        let listener = bind_tls(at, "native", guarded, &mut reachable).await?;
        native.push((listener, tls.clone()));
    }
    shutdown.spawn(weir_server::serve(
        native,
        broker.clone(),
        config.server_config(),
        shutdown.clone(),
    ));
    if config.kafka.enabled {
        let mut listeners = vec![(config.kafka.listen.clone(), None)];
        if let Some(at) = &config.kafka.tls_listen {
            listeners.push((at.clone(), tls.clone()));
        }
        let mut kafka_listeners = Vec::new();
        for (at, tls) in listeners {
            let listener = if tls.is_some() {
                bind_tls(&at, "kafka", guarded, &mut reachable).await?
            } else {
                let l = TcpListener::bind(&at)
                    .await
                    .with_context(|| format!("binding the Kafka listener to {at}"))?;
                let addr = l.local_addr()?;
                reachable |= exposed("kafka", addr, authenticated);
                if authenticated
                    && !addr.ip().is_loopback()
                    && config.auth.mechanisms.iter().any(|m| m == "PLAIN")
                {
                    tracing::warn!(
                        kafka = %addr,
                        "SASL PLAIN on a plain-TCP Kafka listener beyond loopback: passwords \
                         cross the network in the clear; offer PLAIN on kafka.tls_listen only \
                         (auth.mechanisms without PLAIN) or firewall the port"
                    );
                }
                tracing::info!(kafka = %addr, "serving the Kafka protocol");
                println!("weir listening kafka={addr}");
                l
            };
            let addr = listener.local_addr()?;
            // Metadata names the listener the client came in on.
            let advertised = weir_kafka::Advertised {
                host: config
                    .kafka
                    .advertised_host
                    .clone()
                    .unwrap_or_else(|| addr.ip().to_string()),
                port: i32::from(addr.port()),
            };
            kafka_listeners.push(weir_kafka::Listener {
                listener,
                advertised,
                tls,
            });
        }
        shutdown.spawn(weir_kafka::serve(
            kafka_listeners,
            broker.clone(),
            config.kafka.max_connections,
            shutdown.clone(),
        ));
    }
    if config.http.enabled {
        let listener = TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", config.http.listen))?;
        let addr = listener.local_addr()?;
        reachable |= exposed("http", addr, authenticated);
        tracing::info!(http = %addr, "serving HTTP and WebSocket");
        println!("weir listening http={addr}");
        let mut http_config = config.http_config();
        http_config.pipelines = Some(pipelines.clone());
        let source = broker.clone();
        http_config.metrics = Some(weir_http::MetricsSource(std::sync::Arc::new(move || {
            crate::metrics::render(&metrics, &source)
        })));
        let mut listeners = vec![(listener, None)];
        if let Some(at) = &config.http.tls_listen {
            listeners.push((
                bind_tls(at, "http", guarded, &mut reachable).await?,
                tls.clone(),
            ));
        }
        let http = weir_http::serve(listeners, broker.clone(), http_config, shutdown.clone());
        shutdown.spawn(async move {
            if let Err(e) = http.await {
                tracing::error!(error = %e, "HTTP listener failed");
            }
        });
    }
    if let Some(tls) = tls.clone() {
        shutdown.spawn(reload_tls(tls, shutdown.begun()));
    }
    if let Some(auth) = auth {
        shutdown.spawn(reload_users(auth, shutdown.begun()));
    }
    if !reachable && !authenticated {
        tracing::info!(
            "every listener is on loopback, with no authentication: open to this machine only \
             (docs/security.md)"
        );
    }
    {
        let broker = broker.clone();
        let stop = shutdown.begun();
        shutdown.spawn(async move { broker.run_maintenance(stop).await });
    }
    shutdown_signal().await;
    // Readiness first (`/ready` answers 503, so a load balancer stops sending) and long polls
    // answer now with what they have; then every door stops accepting and its connections
    // answer what they have read.
    tracing::info!(
        grace_ms = config.shutdown_grace_ms,
        "shutdown requested: finishing in-flight requests"
    );
    // Pipelines stop reading first (the broker then stops holding fetches), and drain (each
    // within its own grace period) while the doors finish their requests.
    tokio::join!(pipelines.stop_all(), async {
        broker.begin_shutdown();
        shutdown.begin();
    });
    if !shutdown.drain(config.shutdown_grace()).await {
        tracing::warn!(
            tasks = shutdown.tasks(),
            "connections still open after the shutdown grace period; closing anyway"
        );
    }
    // Requests still running past the grace period get ShuttingDown (retriable at every door).
    let closed = broker.close().await;
    if let Some(provider) = tracer {
        // Export what is queued; the exporter blocks, so off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    closed.context("closing the broker")?;
    tracing::info!("weir stopped cleanly");
    Ok(())
}

/// Holds an exclusive lock on `<data_dir>/.lock` for the life of the process: two processes
/// on one data directory (a second server, or `weir pipeline run` beside a server) would
/// corrupt each other's logs.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => anyhow::bail!(
            "another weir process (a server or `weir pipeline run`) is using the data directory {}",
            dir.display()
        ),
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Warns, loudly, when a listener can be reached from other machines without
/// authentication: anyone who reaches it can read, write and delete every topic. True for a
/// listener beyond loopback.
fn exposed(door: &'static str, addr: std::net::SocketAddr, authenticated: bool) -> bool {
    if addr.ip().is_loopback() {
        return false;
    }
    if authenticated {
        return true;
    }
    tracing::warn!(
        door,
        %addr,
        "LISTENING BEYOND LOOPBACK WITHOUT AUTHENTICATION: anyone who can reach {addr} can read, \
         write and delete every topic. Require authentication ([auth], docs/security.md), \
         firewall the port, or use mutual TLS (tls.client_ca) on a tls_listen address"
    );
    true
}

/// Binds a door's TLS listener and says so (`weir listening <door>_tls=ADDR` on stdout).
/// A `guarded` listener (client certificates required, or authentication) is not open to
/// anyone: no warning.
async fn bind_tls(
    at: &str,
    door: &'static str,
    guarded: bool,
    reachable: &mut bool,
) -> Result<TcpListener> {
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("binding the {door} TLS listener to {at}"))?;
    let addr = listener.local_addr()?;
    if !guarded {
        *reachable |= exposed(door, addr, false);
    }
    tracing::info!(door, tls = %addr, "serving over TLS");
    println!("weir listening {door}_tls={addr}");
    Ok(listener)
}

/// Reads the users file and the access control lists again when they changed (looked at
/// every 2 s) and on SIGHUP, until the shutdown begins. A file that cannot be read keeps what
/// it held in force and says why, once.
async fn reload_users(
    auth: std::sync::Arc<weir_auth::Auth>,
    stop: impl std::future::Future<Output = ()>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tokio::pin!(stop);
    let mut failing = [false; 2];
    loop {
        tokio::select! {
            _ = &mut stop => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {}
            _ = tick.tick() => {}
        }
        let store = std::sync::Arc::clone(&auth);
        let reloaded = tokio::task::spawn_blocking(move || {
            let users = store.users();
            let users = (
                users.reload_if_changed(),
                users.len(),
                users.path().to_path_buf(),
            );
            let acls = store
                .acls()
                .map(|a| (a.reload_if_changed(), a.len(), a.path().to_path_buf()));
            (users, acls)
        })
        .await;
        let (users, acls) = match reloaded {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "users reload task failed");
                continue;
            }
        };
        for (i, (what, outcome)) in [("users", Some(users)), ("access control lists", acls)]
            .into_iter()
            .enumerate()
        {
            let Some((result, len, path)) = outcome else {
                continue;
            };
            match result {
                Ok(true) => {
                    failing[i] = false;
                    tracing::info!(entries = len, file = %path.display(), "{what} reloaded");
                }
                Ok(false) => {}
                // Said once, not every 2 s, until the file reads again.
                Err(e) if !failing[i] => {
                    failing[i] = true;
                    tracing::error!(error = %e, file = %path.display(), "{what} file unreadable; what it held stays in force");
                }
                Err(_) => {}
            }
        }
    }
}

/// Reads the TLS files again on SIGHUP, and when one of them changed (looked at every 10 s),
/// until the shutdown begins. A failed reload keeps the certificate in force and says why.
async fn reload_tls(
    tls: std::sync::Arc<weir_net::Tls>,
    stop: impl std::future::Future<Output = ()>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: TLS files are reloaded when they change only");
            None
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tokio::pin!(stop);
    loop {
        let why = tokio::select! {
            _ = &mut stop => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => {
                if !tls.changed() {
                    continue;
                }
                "a file changed"
            }
        };
        match tls.reload() {
            Ok(()) => {
                tracing::info!(why, cert = %tls.files().cert.display(), "TLS certificate reloaded")
            }
            Err(e) => {
                tracing::error!(why, error = %e, "TLS reload failed; the certificate in force stays")
            }
        }
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logging for `weir pipeline run`: to stderr (stdout may carry the pipeline's output), at
/// `RUST_LOG` or info.
pub fn init_stderr_logging() {
    let config = Config::default();
    init_logging(&config);
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colour codes only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
