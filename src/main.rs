//! hraftd: one Raft node and its HTTP API, in the start-up order of the Go hraftd:
//! flags -> listeners -> store -> peer transport -> HTTP -> bootstrap or join -> wait for a
//! signal (or removal from the cluster, or a fatal Raft error) -> shut down in order.
//! `hraftd restore` seeds a new single-node cluster from a backup (`restore.rs`);
//! `hraftd load` loads one into a running cluster's group (`load.rs`);
//! `hraftd gen-key FILE` writes a new cluster key.

mod api;
mod cli;
mod join;
mod load;
mod restore;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hraftd_httpd::auth::Auth;
use hraftd_httpd::forward::Forwarder;
use hraftd_httpd::tls::Tls;
use hraftd_httpd::Settings;
use hraftd_store::Store;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::cli::Args;

/// Binds `addr` with SO_REUSEADDR, so a restarted node gets its port back at once.
async fn listen(addr: &str, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let sa = cli::bind_addr(addr).await?;
    let socket = if sa.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(sa)
        .with_context(|| format!("binding the {what} address {addr} ({sa})"))?;
    let l = socket.listen(1024)?;
    Ok(l.into_std()?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        _ = term.recv() => log::info!("SIGTERM received"),
    }
}

/// `hraftd hash-password`: reads a password from stdin (one line) and prints its argon2id
/// PHC string for an `-auth` file. The password is never a command-line argument.
fn hash_password(argv: &[String]) -> anyhow::Result<()> {
    if argv.len() > 2 {
        anyhow::bail!("usage: hraftd hash-password < file (the password is read from stdin)");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    let hash = hraftd_httpd::auth::hash_password(password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}

/// How this node forwards leader-only requests (always with `-forward`, else when a client
/// asks with `X-Hraftd-Forward: 1`): trusting `-join-ca` for an HTTPS leader, and with
/// this node's own certificate where the cluster requires client certificates.
fn forwarder(args: &Args, roots: Option<&[u8]>) -> anyhow::Result<Forwarder> {
    let identity = match (&args.tls_client_ca, &args.tls_cert, &args.tls_key) {
        (Some(_), Some(cert), Some(key)) => {
            let mut pem = std::fs::read(cert).with_context(|| cert.display().to_string())?;
            pem.extend(std::fs::read(key).with_context(|| key.display().to_string())?);
            Some(pem)
        }
        _ => None,
    };
    // The leader waits up to -write-timeout for a write, as long for a consistent read.
    let timeout = args.write_timeout * 2 + Duration::from_secs(1);
    Forwarder::new(args.forward, roots, identity.as_deref(), timeout)
        .map_err(|e| anyhow::anyhow!("setting up forwarding: {e}"))
}

/// Re-reads the `-auth` file and the HTTPS certificate and key on every SIGHUP; what does
/// not load leaves what is in force, and the log says which.
async fn reload_on_sighup(auth: Option<Arc<Auth>>, tls: Option<Arc<Tls>>) {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return log::warn!("cannot watch SIGHUP; -auth and certificates will not be re-read");
    };
    while hup.recv().await.is_some() {
        if let Some(auth) = &auth {
            match auth.reload() {
                Ok(n) => log::info!("SIGHUP: reloaded {n} users from {}", auth.path().display()),
                Err(e) => log::warn!("SIGHUP: keeping the users in force: {e}"),
            }
        }
        if let Some(tls) = &tls {
            let (cert, key) = tls.files();
            match tls.reload() {
                Ok(()) => log::info!(
                    "SIGHUP: loaded the certificate {} and key {}",
                    cert.display(),
                    key.display()
                ),
                Err(e) => log::warn!("SIGHUP: keeping the certificate in force: {e}"),
            }
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("hraftd: {e:#}");
        std::process::exit(1);
    }
}

/// Raises the soft limit on open files to the hard one (as Go programs do): every watch
/// stream holds a connection, and `-max-watchers` of them should not run out of files.
/// Warns when even the hard limit is below what `max_watchers` streams need.
fn raise_fd_limit(max_watchers: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    let need = max_watchers + 1024;
    if r.rlim_cur < need {
        log::warn!(
            "open files are limited to {} here, fewer than -max-watchers {max_watchers} streams need ({need}); raise `ulimit -n`",
            r.rlim_cur
        );
    }
}

async fn run() -> anyhow::Result<()> {
    // 1. Flags and logging; `hraftd restore ...` is its own short sequence.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("hash-password") {
        return hash_password(&argv);
    }
    if argv.get(1).map(String::as_str) == Some("gen-key") {
        let [_, _, file] = &argv[..] else {
            anyhow::bail!("usage: hraftd gen-key FILE");
        };
        hraftd_store::ClusterKey::generate(file.as_ref())?;
        println!("wrote a new cluster key to {file} (mode 0600); give it to every node with -cluster-key {file}");
        return Ok(());
    }
    if argv.get(1).map(String::as_str) == Some("load") {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
        let rest = argv[..1].iter().chain(&argv[2..]).cloned();
        return load::run(load::LoadArgs::parse_from(rest)).await;
    }
    let is_restore = argv.get(1).map(String::as_str) == Some("restore");
    // A node logs its progress; the one-shot restore only what goes wrong.
    let level = if is_restore { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if is_restore {
        let rest = argv[..1].iter().chain(&argv[2..]).cloned();
        let mut args = restore::RestoreArgs::parse_from(cli::go_style(rest));
        args.node = args.node.resolve()?;
        return restore::run(args).await;
    }
    let args = Args::parse_go_style(argv)?;
    raise_fd_limit(args.max_watchers);
    // HTTPS and users first: a file that does not load is refused before anything is bound
    // or created.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Tls::load(cert, key, args.tls_client_ca.as_deref())
                .map_err(|e| anyhow::anyhow!("-tls-cert/-tls-key: {e}"))?;
            log::info!(
                "HTTPS with {} and {}{}",
                cert.display(),
                key.display(),
                if tls.requires_client_certs() {
                    "; client certificates required"
                } else {
                    ""
                }
            );
            Some(Arc::new(tls))
        }
        (None, None) if args.tls_client_ca.is_none() => None,
        _ => anyhow::bail!(
            "HTTPS needs both -tls-cert and -tls-key (and -tls-client-ca only with them)"
        ),
    };
    let auth = match &args.auth {
        Some(path) => {
            let auth = Auth::load(path).map_err(|e| anyhow::anyhow!("-auth: {e}"))?;
            log::info!("users and permissions from {}", path.display());
            Some(Arc::new(auth))
        }
        None => {
            log::warn!(
                "no -auth: every client that reaches {} may read, write and administer",
                args.haddr
            );
            None
        }
    };

    // The cluster's CA (for https:// joins and forwarding) and the forwarder, likewise.
    let join_ca = match &args.join_ca {
        Some(f) => Some(std::fs::read(f).with_context(|| format!("-join-ca {}", f.display()))?),
        None => None,
    };
    let forward = forwarder(&args, join_ca.as_deref())?;

    // 2. Listeners first: a busy port fails fast, before any state is touched.
    let raft_listener = listen(&args.raddr, "raft").await?;
    let http_listener = listen(&args.haddr, "HTTP").await?;
    let (id, radv, hadv) = cli::identity(
        &args,
        raft_listener.local_addr()?.port(),
        http_listener.local_addr()?.port(),
    )?;
    // Members and clients learn from the advertised address that this node serves HTTPS
    // (redirects to it, /status).
    let hadv = match (&tls, hadv.starts_with("https://")) {
        (Some(_), false) => format!("https://{hadv}"),
        _ => hadv,
    };
    log::info!(
        "node {id:?}: raft {radv}, http {hadv}, data {}",
        args.data_dir.display()
    );

    // 3. Peer authentication, then open the store (RocksDB + openraft).
    let opts = cli::node_options(&args, &id, &radv, &hadv)?;
    match opts.peer_auth.mode() {
        "none" => log::warn!(
            "the raft port {} is UNAUTHENTICATED: anyone who can reach it can join, read and \
             overwrite the cluster's data. Use -cluster-key FILE (hraftd gen-key FILE) or \
             -peer-cert/-peer-key/-peer-ca.",
            args.raddr
        ),
        mode => log::info!("peer authentication: {mode}"),
    }
    let join_key = opts.peer_auth.clone();
    let store = Store::open(opts)
        .await
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;

    // 4. Serve the peer transport.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let raft_listener = tokio::net::TcpListener::from_std(raft_listener)?;
    // The store owns the transport's task: `Store::shutdown` stops it and waits for it.
    store.serve_raft(raft_listener);

    // 5. Serve the HTTP API (with the users and certificates loaded in step 1, re-read on
    //    SIGHUP).
    tokio::spawn(reload_on_sighup(auth.clone(), tls.clone()));
    let settings = Settings {
        body_limit: args.body_limit,
        max_key_bytes: args.max_key_bytes,
        auth,
        tls,
        forward: Some(Arc::new(forward)),
        watchers: Arc::new(hraftd_httpd::watch::Limit::new(args.max_watchers as usize)),
        keepalive: args.watch_keepalive.max(Duration::from_millis(100)),
        ..Settings::default()
    };
    let api = Arc::new(api::Api(store.clone()));
    let http_task = tokio::spawn(hraftd_httpd::serve(
        http_listener,
        api,
        settings,
        stopped(stop_rx),
    ));

    // 6. Bootstrap, join, or resume; then act on our own view of membership from the
    //    point this node (re)entered the cluster.
    if store.is_initialized().await? {
        if !args.join.is_empty() {
            log::info!(
                "{} has Raft state; resuming and ignoring -join",
                args.data_dir.display()
            );
        }
        store.watch_removal_after(0);
    } else if args.join.is_empty() {
        log::info!("no Raft state and no -join: bootstrapping a single-node cluster");
        store.bootstrap().await.context("bootstrapping")?;
        store.watch_removal_after(0);
    } else {
        let creds = cli::join_credentials(&args)?;
        let target = join::Target {
            addrs: &args.join,
            credentials: creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            ca: join_ca.clone(),
        };
        match join::join(target, &id, &radv, &hadv, &join_key, args.join_timeout).await {
            Ok(index) => store.watch_removal_after(index),
            Err(e) => {
                let _ = stop_tx.send(true);
                store.shutdown().await;
                return Err(e);
            }
        }
    }

    // 7. Run until a signal, until this node is removed from the cluster, or until Raft
    //    stops on a fatal (e.g. storage) error: then exit non-zero, so that an
    //    orchestrator restarts the node rather than leave it half alive.
    let mut fatal = None;
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = store.removed() => log::warn!("removed from the cluster; shutting down"),
        why = store.fatal_error() => {
            log::error!("raft stopped on a fatal error: {why}; exiting");
            fatal = Some(why);
        }
    }

    // 8. Stop HTTP (no new requests; in-flight ones finish), hand off if leading, then
    //    stop the store: its background tasks (the peer transport among them), Raft and
    //    RocksDB.
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(15), http_task).await {
        Ok(Ok(Err(e))) => log::warn!("HTTP server: {e}"),
        Err(_) => log::warn!("HTTP server did not stop within 15s"),
        _ => {}
    }
    if let Some(to) = store.hand_off(Duration::from_secs(5)).await {
        log::info!("stepping down as leader: {to} holds the whole log and can take over");
    }
    store.shutdown().await;
    if let Some(why) = fatal {
        anyhow::bail!("raft stopped on a fatal error: {why}");
    }
    log::info!("stopped");
    Ok(())
}
