//! Command-line flags, accepted Go-style (`-haddr :11001`) as well as `--haddr`, and the
//! address rules: `:port` binds every interface and is advertised as `127.0.0.1:port`.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use hraftd_store::ClusterKey;
use hraftd_store::Mtls;
use hraftd_store::Options;
use hraftd_store::PeerAuth;

/// hraftd: a replicated key-value store. One Raft node per process, served over HTTP.
///
/// The first node bootstraps a cluster; others join it with -join. A node restarted on
/// its DATA_DIR resumes with the state there and ignores -join.
///
/// A DATA_DIR that does not exist yet is created only when it is given as a path
/// (`./data`, `~/node0`, `/var/lib/hraftd`) or with --data-dir: a bare word such as
/// `hraftd bootstrap` is refused as an unknown command instead of starting a new cluster
/// in `./bootstrap`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "hraftd",
    version,
    after_help = "Commands:\n  \
                  hraftd restore --from FILE [flags] DATA_DIR   seed a new single-node cluster \
                  from a backup (GET /backup)\n  \
                  hraftd load --from FILE --to ADDR [--group G]  load a backup into a running \
                  cluster's group\n  \
                  hraftd gen-key FILE                           make a cluster key for \
                  -cluster-key (mode 0600)\n  \
                  hraftd hash-password < password-file          print an argon2id hash for \
                  an -auth file\n\
                  Durations take a unit (500ms, 5s, 2m); a bare number means seconds."
)]
pub struct Args {
    /// Node ID (a string). Default: the ID stored in DATA_DIR, else the advertised Raft address.
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP (client API) bind address.
    #[arg(long, default_value = "localhost:11000")]
    pub haddr: String,
    /// Raft (peer) bind address.
    #[arg(long, default_value = "localhost:12000")]
    pub raddr: String,
    /// HTTP address advertised to clients and peers. Default: -haddr, with an empty or
    /// unspecified host replaced by 127.0.0.1.
    #[arg(long)]
    pub hadv: Option<String>,
    /// Raft address advertised to peers. Default: -raddr, as for -hadv.
    #[arg(long)]
    pub radv: Option<String>,
    /// HTTP address(es) of any cluster member to join, comma-separated. Used only when
    /// DATA_DIR holds no Raft state.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Build a snapshot and purge the log every N applied entries.
    #[arg(long = "snapshot-threshold", default_value_t = 10_000)]
    pub snapshot_threshold: u64,
    /// Changes each Raft group keeps for watches (`GET /watch?from=`): a watch may start
    /// at most this many changes back (also bounded to 256 MiB of records).
    #[arg(long = "watch-history", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub watch_history: u64,
    /// Most watch streams (and blocking reads) this node holds at once; past it, 503.
    #[arg(long = "max-watchers", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_watchers: u64,
    /// How often an idle watch stream gets a comment line (keeps proxies from closing it;
    /// also how soon a node notices a watcher that went away).
    #[arg(long = "watch-keepalive", default_value = "10s", value_parser = duration)]
    pub watch_keepalive: Duration,
    /// Largest accepted request body, in bytes.
    #[arg(long = "body-limit", default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// How long a write waits to commit before answering "outcome unknown" (504); also
    /// how long a consistent read waits for the leader's quorum round.
    #[arg(long = "write-timeout", default_value = "5s", value_parser = duration)]
    pub write_timeout: Duration,
    /// Longest key accepted, in bytes; longer keys get 400 on every write and read.
    #[arg(long = "max-key-bytes", default_value_t = 4096)]
    pub max_key_bytes: usize,
    /// File holding the cluster's shared secret (at least 16 bytes; see `hraftd gen-key`).
    /// Every peer connection and /join must prove it holds the same key.
    #[arg(long = "cluster-key", value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// This node's certificate (PEM) for mutual TLS on the Raft port; with -peer-key and -peer-ca.
    #[arg(long = "peer-cert", value_name = "FILE")]
    pub peer_cert: Option<PathBuf>,
    /// This node's private key (PEM) for mutual TLS on the Raft port.
    #[arg(long = "peer-key", value_name = "FILE")]
    pub peer_key: Option<PathBuf>,
    /// The CA (PEM) that signs every member's peer certificate.
    #[arg(long = "peer-ca", value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,
    /// Serve the HTTP API over HTTPS with this certificate chain (PEM); with -tls-key.
    /// Re-read on SIGHUP. The node then advertises `https://` + -hadv.
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of -tls-cert.
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require HTTPS clients to present a certificate signed by this CA (PEM).
    #[arg(long = "tls-client-ca", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// On a follower, forward leader-only requests to the leader and return its answer
    /// (with the client's credentials), instead of a 307; per request: `X-Hraftd-Forward: 1`.
    #[arg(long)]
    pub forward: bool,
    /// The CA (PEM) to trust for `https://` -join addresses (and for forwarding to an
    /// HTTPS leader).
    #[arg(long = "join-ca", value_name = "FILE")]
    pub join_ca: Option<PathBuf>,
    /// Users and permissions: a JSON list of {"username","password_hash","perms"}
    /// (`hraftd hash-password` makes the hash; perms: read, write, admin, metrics; the
    /// username "*" without a hash gives anonymous clients' perms). Re-read on SIGHUP.
    #[arg(long = "auth", value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// The user this node joins as (needs the admin permission where the cluster uses
    /// -auth); the password comes from -join-password-file or HRAFTD_JOIN_PASSWORD.
    #[arg(long = "join-as", value_name = "USER")]
    pub join_as: Option<String>,
    /// File holding the -join-as user's password (surrounding whitespace trimmed).
    #[arg(long = "join-password-file", value_name = "FILE")]
    pub join_password_file: Option<PathBuf>,
    /// How long this joining node keeps retrying -join before it gives up and exits.
    #[arg(long = "join-timeout", default_value = "120s", value_parser = duration)]
    pub join_timeout: Duration,
    /// On the leader: how long a joining node may take to catch up with the log before
    /// it is promoted to voter; one that does not is removed again and its /join fails.
    #[arg(long = "catch-up-timeout", default_value = "60s", value_parser = duration)]
    pub catch_up_timeout: Duration,
    /// Data directory: Raft log, state machine and snapshots (or give it as DATA_DIR).
    #[arg(long = "data-dir", value_name = "DIR", conflicts_with = "dir")]
    pub data_dir_flag: Option<PathBuf>,
    /// Data directory: Raft log, state machine and snapshots. Created if missing only when
    /// given as a path (with a `/`, e.g. ./data) or with --data-dir.
    #[arg(value_name = "DATA_DIR")]
    pub dir: Option<PathBuf>,
    /// The data directory, resolved from DATA_DIR or --data-dir by [`Args::resolve`].
    #[arg(skip)]
    pub data_dir: PathBuf,
}

impl Args {
    /// Parses `argv`, first turning Go-style `-flag` into `--flag`; exits with clap's
    /// message on a usage error.
    pub fn parse_go_style(argv: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
        Args::parse_from(go_style(argv)).resolve()
    }

    /// Settles where the data directory is (see [`data_dir`]).
    pub fn resolve(mut self) -> anyhow::Result<Args> {
        self.data_dir = data_dir(self.data_dir_flag.as_deref(), self.dir.as_deref())?;
        Ok(self)
    }
}

/// The commands `hraftd` knows besides running a node (see `main`).
pub const COMMANDS: &[&str] = &["restore", "gen-key", "hash-password"];

/// The data directory from `--data-dir` or the positional DATA_DIR. A positional word
/// that names nothing yet and has no `/` in it is taken for a mistyped or unknown command
/// and refused, so that e.g. `hraftd hash-password` never bootstraps a cluster in
/// `./hash-password`.
pub fn data_dir(flag: Option<&Path>, positional: Option<&Path>) -> anyhow::Result<PathBuf> {
    match (flag, positional) {
        (Some(d), None) => Ok(d.to_path_buf()),
        (None, Some(d)) => {
            let bare = !d.as_os_str().as_encoded_bytes().contains(&b'/');
            if bare && !d.exists() {
                bail!(
                    "{:?} is not a hraftd command ({}) and no directory of that name exists; \
                     to make a new data directory there, give it as a path (./{}) or with \
                     --data-dir {}",
                    d.display().to_string(),
                    COMMANDS.join(", "),
                    d.display(),
                    d.display()
                );
            }
            Ok(d.to_path_buf())
        }
        (None, None) => bail!("no data directory: give DATA_DIR (e.g. ~/node0) or --data-dir DIR"),
        (Some(_), Some(_)) => bail!("give either DATA_DIR or --data-dir, not both"),
    }
}

/// The credentials a joining node presents: `-join-as`, with the password from
/// `-join-password-file` or the environment variable `HRAFTD_JOIN_PASSWORD` (never a
/// flag, so it is not in `ps` or shell history).
pub fn join_credentials(args: &Args) -> anyhow::Result<Option<(String, String)>> {
    let Some(user) = &args.join_as else {
        if args.join_password_file.is_some() {
            bail!("-join-password-file needs -join-as USER");
        }
        return Ok(None);
    };
    let password = match &args.join_password_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading -join-password-file {}", f.display()))?
            .trim()
            .to_string(),
        None => std::env::var("HRAFTD_JOIN_PASSWORD").map_err(|_| {
            anyhow::anyhow!(
                "-join-as {user} needs -join-password-file FILE or HRAFTD_JOIN_PASSWORD"
            )
        })?,
    };
    Ok(Some((user.clone(), password)))
}

/// A duration with a unit (`500ms`, `5s`, `2m`), or a bare number of seconds, as the
/// earlier whole-second flags took it.
pub fn duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 5s, 500ms): {e}"))
}

/// `-haddr` becomes `--haddr`; `-h`, `--x`, values and everything after `--` stay as they are.
pub fn go_style(argv: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = false;
    for (i, a) in argv.into_iter().enumerate() {
        if a == "--" {
            rest = true;
        }
        let single = a.starts_with('-') && !a.starts_with("--") && a.len() > 2;
        if i > 0 && !rest && single {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

/// Splits `host:port`, allowing an empty host.
fn split(addr: &str) -> anyhow::Result<(&str, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("address {addr:?} must be host:port or :port"))?;
    let port = port
        .parse()
        .with_context(|| format!("address {addr:?} has a bad port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// Where to bind for `addr`: `:port` means every interface; names are resolved.
pub async fn bind_addr(addr: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = split(addr)?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {addr:?}"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

/// The address to advertise: `explicit` if given, else `bind` with an empty or
/// unspecified host replaced by 127.0.0.1; a port of 0 becomes the port actually bound.
pub fn advertised(explicit: Option<&str>, bind: &str, bound_port: u16) -> anyhow::Result<String> {
    let addr = explicit.unwrap_or(bind);
    let (host, port) = split(addr)?;
    let host = match host {
        "" | "0.0.0.0" | "::" => "127.0.0.1",
        h => h,
    };
    let port = if port == 0 { bound_port } else { port };
    if host.contains(':') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

/// The port of a `host:port` or `:port` address.
pub fn port_of(addr: &str) -> anyhow::Result<u16> {
    Ok(split(addr)?.1)
}

/// The node's id and advertised Raft and HTTP addresses, given the ports actually bound:
/// the id is `-id`, else the one stored in DATA_DIR, else the advertised Raft address.
pub fn identity(
    args: &Args,
    raft_port: u16,
    http_port: u16,
) -> anyhow::Result<(String, String, String)> {
    let radv = advertised(args.radv.as_deref(), &args.raddr, raft_port)?;
    let hadv = advertised(args.hadv.as_deref(), &args.haddr, http_port)?;
    let id = match (&args.id, hraftd_store::stored_id(&args.data_dir)) {
        (Some(id), _) => id.clone(),
        (None, Some(stored)) => stored,
        (None, None) => radv.clone(),
    };
    Ok((id, radv, hadv))
}

/// How this node authenticates peers, from -cluster-key or -peer-cert/-peer-key/-peer-ca.
pub fn peer_auth(args: &Args) -> anyhow::Result<PeerAuth> {
    let tls = [&args.peer_cert, &args.peer_key, &args.peer_ca];
    let tls_given = tls.iter().filter(|f| f.is_some()).count();
    match (&args.cluster_key, tls_given) {
        (Some(_), n) if n > 0 => {
            bail!("use either -cluster-key or -peer-cert/-peer-key/-peer-ca, not both")
        }
        (Some(path), _) => Ok(PeerAuth::ClusterKey(Arc::new(ClusterKey::load(path)?))),
        (None, 0) => Ok(PeerAuth::None),
        (None, 3) => {
            let f = |o: &Option<PathBuf>| o.clone().expect("checked");
            Ok(PeerAuth::Mtls(Arc::new(Mtls::load(
                &f(&args.peer_cert),
                &f(&args.peer_key),
                &f(&args.peer_ca),
            )?)))
        }
        (None, _) => bail!("mutual TLS needs all of -peer-cert, -peer-key and -peer-ca"),
    }
}

/// The store's options for a node started with `args` under this identity.
pub fn node_options(args: &Args, id: &str, radv: &str, hadv: &str) -> anyhow::Result<Options> {
    if args.write_timeout < Duration::from_millis(100) {
        bail!(
            "-write-timeout {:?} is too short to commit anything; use at least 100ms",
            args.write_timeout
        );
    }
    let mut opts = Options::new(id, radv, hadv, &args.data_dir);
    opts.snapshot_threshold = args.snapshot_threshold;
    opts.watch_history = args.watch_history;
    opts.write_timeout = args.write_timeout;
    opts.read_timeout = args.write_timeout;
    opts.catch_up_timeout = args.catch_up_timeout;
    opts.peer_auth = peer_auth(args)?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        let argv = v(&[
            "hraftd", "-haddr", ":11001", "-raddr", ":12001", "-join", ":11000", "-h", "--id", "x",
            "dir",
        ]);
        assert_eq!(
            go_style(argv),
            v(&[
                "hraftd", "--haddr", ":11001", "--raddr", ":12001", "--join", ":11000", "-h",
                "--id", "x", "dir"
            ])
        );
    }

    #[test]
    fn parses_the_readme_command() {
        let a = Args::parse_go_style(v(&[
            "hraftd",
            "-haddr",
            ":11001",
            "-raddr",
            ":12001",
            "-join",
            ":11000,:11002",
            "-write-timeout",
            "2",
            "/tmp/n1",
        ]))
        .unwrap();
        assert_eq!(a.haddr, ":11001");
        assert_eq!(a.join, v(&[":11000", ":11002"]));
        assert_eq!(a.data_dir, PathBuf::from("/tmp/n1"));
        assert_eq!(a.snapshot_threshold, 10_000);
        assert_eq!(a.write_timeout, Duration::from_secs(2));
        assert_eq!(a.join_timeout, Duration::from_secs(120));
        let d = Args::parse_go_style(v(&["hraftd", "/tmp/n0", "-write-timeout", "750ms"])).unwrap();
        assert_eq!(d.write_timeout, Duration::from_millis(750));
        assert_eq!(
            (d.haddr.as_str(), d.raddr.as_str()),
            ("localhost:11000", "localhost:12000")
        );
    }

    /// Found by review: an unknown word was taken as DATA_DIR, so `hraftd hash-password`
    /// bootstrapped a new cluster in `./hash-password`.
    #[test]
    fn an_unknown_command_is_not_a_new_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let word = Path::new("hash-password-not-here");
        let e = data_dir(None, Some(word)).unwrap_err().to_string();
        assert!(e.contains("not a hraftd command"), "{e}");
        assert!(e.contains("./hash-password-not-here"), "{e}");
        assert!(!word.exists());
        // As a path, or with --data-dir, a new directory is fine; so is an existing one.
        let p = PathBuf::from("./hash-password-not-here");
        assert_eq!(data_dir(None, Some(&p)).unwrap(), p);
        assert_eq!(data_dir(Some(word), None).unwrap(), word);
        assert_eq!(data_dir(None, Some(tmp.path())).unwrap(), tmp.path());
        assert!(data_dir(None, None).is_err());
        assert!(Args::parse_go_style(v(&["hraftd", "hash-password-not-here"])).is_err());
        let flag = Args::parse_go_style(v(&["hraftd", "--data-dir", "d0"])).unwrap();
        assert_eq!(flag.data_dir, PathBuf::from("d0"));
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn advertised_addresses() {
        assert_eq!(
            advertised(None, ":11001", 11001).unwrap(),
            "127.0.0.1:11001"
        );
        assert_eq!(advertised(None, "0.0.0.0:5", 5).unwrap(), "127.0.0.1:5");
        assert_eq!(
            advertised(None, "localhost:11000", 11000).unwrap(),
            "localhost:11000"
        );
        assert_eq!(
            advertised(Some("db1:80"), ":11001", 11001).unwrap(),
            "db1:80"
        );
        assert_eq!(
            advertised(None, "127.0.0.1:0", 4242).unwrap(),
            "127.0.0.1:4242"
        );
        assert!(advertised(None, "nonsense", 1).is_err());
    }
}
