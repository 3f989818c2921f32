//! `hraftctl`: the command-line client of hraftd, as etcdctl is etcd's. A thin shell over
//! the typed client (`hraftd-client`): the endpoint list with failover, `307`s followed
//! with method and body, typed errors. It owns only argument parsing, output (a plain
//! table, or `--json`) and the exit codes scripts rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | not found: the key (or the group named) does not exist; or a compare failed (`412` of `--cas`, a transaction whose compares did not hold) |
//! | 2 | usage: bad arguments, or the server refused the request as malformed or not allowed (4xx) |
//! | 3 | unavailable: no endpoint answered, no leader, a timeout, a server error (5xx) |
//!
//! Secrets never come from the command line: the password is read from `HRAFTD_PASSWORD`
//! or `--password-file`, the cluster key (for `join`) from a file.

use std::io::Read as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use hraftd_client::Client;
use hraftd_client::JoinRequest;
use hraftd_client::RangeQuery;
use hraftd_client::ReadLevel;
use hraftd_client::ReadOpts;
use serde_json::json;

/// Command-line client of hraftd.
#[derive(Debug, Parser)]
#[command(name = "hraftctl", version)]
struct Args {
    /// HTTP addresses of cluster nodes, tried in turn (comma-separated; default:
    /// `HRAFTD_ENDPOINTS`, else 127.0.0.1:11000).
    #[arg(short = 'H', long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The Raft group (default: the default group).
    #[arg(long, global = true)]
    group: Option<String>,
    /// Read level: stale, default or consistent.
    #[arg(long, global = true, default_value = "default", value_parser = parse_level)]
    level: ReadLevel,
    /// Print the server's answers as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    client: hraftd::client_opts::ClientOpts,
    /// Reads wait until the answering node has applied this index (read-your-writes:
    /// give the index a write printed); at most `--wait` seconds.
    #[arg(long, global = true)]
    min_index: Option<u64>,
    /// How long one request may take, in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a key's value (with `--json`: and its metadata).
    Get { key: String },
    /// Set a key.
    Put {
        key: String,
        value: String,
        /// Only if the key's mod_index is this (0: only if it does not exist).
        #[arg(long)]
        cas: Option<u64>,
        /// Attach the key to this lease (`hraftctl lease grant`): it goes when the lease does.
        #[arg(long, conflicts_with = "ttl")]
        lease: Option<String>,
        /// Give the key a lease of its own with this TTL (e.g. 30s); prints its id.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Print every change to KEY (or, with --prefix, to every key under it) as it
    /// happens, resuming where it stopped when the connection drops.
    Watch {
        key: String,
        /// Watch every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start after this index (default: now); changes after it are printed first.
        #[arg(long)]
        from: Option<u64>,
        /// Exit after this many entries.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Grant, keep alive, show or revoke leases.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Delete a key, or every key under a prefix.
    Del {
        key: String,
        /// Only if the key's mod_index is this.
        #[arg(long, conflicts_with = "prefix")]
        cas: Option<u64>,
        /// Delete every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// List the keys under PREFIX (all pages), with values and metadata.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        /// Keys and metadata only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Run a transaction read as JSON from stdin (the body of POST /txn); exit code 1
    /// when its compares did not hold.
    Txn,
    /// The answering node's status: role, term, leader, indexes.
    Status,
    /// The cluster's members (as the answering node sees them).
    Members,
    /// Add a node (learner first, then voter once caught up).
    Join {
        id: String,
        /// Its Raft (peer) address.
        raft_addr: String,
        /// Its HTTP address.
        http_addr: String,
        /// The cluster key file, where the cluster has one (`-cluster-key`).
        #[arg(long)]
        cluster_key: Option<PathBuf>,
    },
    /// Remove a node.
    Remove { id: String },
    /// Write a backup of the state machine to FILE (`hraftd restore` or `hraftd load`
    /// read it).
    Backup { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// A new lease with this TTL (e.g. 10s); prints its id.
    Grant {
        #[arg(value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Keep a lease alive: a keepalive every third of its TTL until interrupted (with
    /// --once: one).
    Keepalive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    /// Its TTL, time left and keys.
    Show { id: String },
    /// Revoke it: its keys are deleted in one entry.
    Revoke { id: String },
}

fn parse_level(s: &str) -> Result<ReadLevel, String> {
    ReadLevel::parse(s)
        .ok_or_else(|| format!("unknown level {s:?}; use stale, default or consistent"))
}

/// What ended a command other than success, and the exit code it maps to.
enum Failure {
    /// Not found, or a compare that did not hold.
    NotFound(String),
    Usage(String),
    Unavailable(String),
}

impl From<hraftd_client::Error> for Failure {
    fn from(e: hraftd_client::Error) -> Failure {
        match e.status() {
            Some(404) | Some(412) => Failure::NotFound(e.to_string()),
            Some(s) if (400..500).contains(&s) => Failure::Usage(e.to_string()),
            _ => Failure::Unavailable(e.to_string()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Usage(format!("{e:#}"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (code, msg) = match f {
                Failure::NotFound(m) => (1, m),
                Failure::Usage(m) => (2, m),
                Failure::Unavailable(m) => (3, m),
            };
            eprintln!("hraftctl: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Builds the client from the global options.
fn client(a: &Args) -> anyhow::Result<Client> {
    let endpoints = match (&a.endpoints[..], std::env::var("HRAFTD_ENDPOINTS")) {
        ([], Ok(env)) => env.split(',').map(str::trim).map(String::from).collect(),
        ([], Err(_)) => vec!["127.0.0.1:11000".to_string()],
        (given, _) => given.to_vec(),
    };
    let b = a
        .client
        .builder(endpoints, Duration::from_secs(a.timeout))?;
    let c = b.build().context("building the HTTP client")?;
    Ok(match &a.group {
        Some(g) => c.in_group(g),
        None => c,
    })
}

fn print(json: bool, value: serde_json::Value, table: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        print!("{}", table());
    }
}

/// `hraftctl watch`: prints each entry's changes; reconnects (any endpoint) from the last
/// index printed when the stream ends, so nothing is missed or printed twice.
async fn watch(
    c: &Client,
    json: bool,
    key: &str,
    prefix: bool,
    from: Option<u64>,
    count: Option<usize>,
) -> Result<(), Failure> {
    use hraftd_client::WatchItem;
    let target = if prefix {
        hraftd_client::WatchTarget::Prefix(key.to_string())
    } else {
        hraftd_client::WatchTarget::Key(key.to_string())
    };
    let mut from = from;
    let mut printed = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let mut w = match c.watch(&target, from).await {
            Ok(w) => w,
            // Unreachable, no leader, too many watchers: try again shortly.
            Err(e) if e.status().is_none_or(|s| s >= 500) => {
                eprintln!("hraftctl: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        from = Some(w.start_index());
        loop {
            match w.next().await {
                Ok(Some(WatchItem::Entry { index, events })) => {
                    for e in events {
                        let line = if json {
                            json!({ "type": e.kind.as_str(), "index": index, "kv": e.kv })
                                .to_string()
                        } else {
                            match &e.kv.value {
                                Some(v) => format!("PUT {} {v} index {index}", e.kv.key),
                                None => format!("DELETE {} index {index}", e.kv.key),
                            }
                        };
                        writeln!(out, "{line}").context("writing")?;
                    }
                    out.flush().context("writing")?;
                    from = Some(index);
                    printed += 1;
                    if count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
                Ok(Some(WatchItem::End(end))) if end.code == "compacted" => {
                    return Err(Failure::NotFound(end.error));
                }
                Ok(Some(WatchItem::End(end))) => {
                    eprintln!("hraftctl: {}; resuming", end.error);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("hraftctl: {e}; resuming");
                    break;
                }
            }
        }
    }
}

/// `hraftctl lease ...`
async fn lease(c: &Client, json: bool, cmd: &LeaseCommand) -> Result<(), Failure> {
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let r = c.lease_grant(*ttl).await?;
            let v = serde_json::to_value(&r).expect("an answer encodes");
            print(json, v, || format!("{}\n", r.id));
        }
        LeaseCommand::Keepalive { id, once } => loop {
            let r = c.lease_keepalive(id).await?;
            let v = serde_json::to_value(&r).expect("an answer encodes");
            print(json, v, || {
                format!("lease {} kept alive, ttl {} ms\n", r.id, r.ttl_ms)
            });
            if *once {
                break;
            }
            tokio::time::sleep(Duration::from_millis((r.ttl_ms / 3).max(100))).await;
        },
        LeaseCommand::Show { id } => {
            let r = c.lease_info(id).await?;
            let v = serde_json::to_value(&r).expect("an answer encodes");
            print(json, v, || {
                let mut t = format!(
                    "id\t{}\nttl_ms\t{}\nremaining_ms\t{}\ngranted_index\t{}\nkeys\t{}\n",
                    r.id,
                    r.ttl_ms,
                    r.remaining_ms,
                    r.granted_index,
                    r.keys.len()
                );
                for k in &r.keys {
                    t += &format!("{k}\n");
                }
                t
            });
        }
        LeaseCommand::Revoke { id } => {
            let r = c.lease_revoke(id).await?;
            let v = serde_json::to_value(r).expect("an answer encodes");
            print(json, v, || {
                format!("OK revoked, deleted {} index {}\n", r.deleted, r.index)
            });
        }
    }
    Ok(())
}

async fn run(a: Args) -> Result<(), Failure> {
    let c = client(&a)?;
    let read = ReadOpts {
        level: a.level,
        min_index: a.min_index,
        wait: None,
    };
    match &a.command {
        Command::Get { key } => match c.get_kv(key, read).await? {
            Some(kv) => {
                let v = serde_json::to_value(&kv).expect("a key encodes");
                print(a.json, v, || format!("{}\n", kv.value.unwrap_or_default()))
            }
            None => return Err(Failure::NotFound(format!("key not found: {key}"))),
        },
        Command::Put {
            key,
            value,
            cas,
            lease,
            ttl,
        } => {
            if let Some(ttl) = ttl {
                if cas.is_some() {
                    return Err(Failure::Usage(
                        "--ttl with --cas: use lease grant, then put --lease --cas".into(),
                    ));
                }
                let r = c.put_ttl(key, value, *ttl).await?;
                let lease = r.lease.clone().unwrap_or_default();
                let v = serde_json::to_value(&r).expect("an answer encodes");
                print(a.json, v, || {
                    format!("OK index {} lease {lease}\n", r.index)
                });
                return Ok(());
            }
            let index = match (cas, lease) {
                (_, Some(l)) => c.put_leased(key, value, l, *cas).await?,
                (Some(n), None) => c.put_cas(key, value, *n).await?,
                (None, None) => c.put(key, value).await?,
            };
            print(a.json, json!({ "index": index }), || {
                format!("OK index {index}\n")
            });
        }
        Command::Watch {
            key,
            prefix,
            from,
            count,
        } => watch(&c, a.json, key, *prefix, *from, *count).await?,
        Command::Lease { command } => lease(&c, a.json, command).await?,
        Command::Del {
            key,
            cas,
            prefix: true,
        } => {
            debug_assert!(cas.is_none());
            let r = c.delete_prefix(key).await?;
            let v = serde_json::to_value(r).expect("an answer encodes");
            print(a.json, v, || {
                format!("OK deleted {} index {}\n", r.deleted, r.index)
            });
        }
        Command::Del { key, cas, .. } => {
            let index = match cas {
                Some(n) => c.delete_cas(key, *n).await?,
                None => c.delete(key).await?,
            };
            print(a.json, json!({ "index": index }), || {
                format!("OK index {index}\n")
            });
        }
        Command::Ls { prefix, keys_only } => {
            // Page by page (each page consistent in itself), printed as it comes: memory
            // holds one page however many keys there are.
            let mut q = RangeQuery::prefix(prefix);
            q.keys_only = *keys_only;
            let mut out = std::io::stdout().lock();
            let mut first = true;
            if a.json {
                write!(out, "[").context("writing")?;
            } else {
                let value = if *keys_only { "" } else { "\tVALUE" };
                writeln!(out, "KEY\tVERSION\tMOD_INDEX\tCREATE_INDEX{value}").context("writing")?;
            }
            loop {
                let page = c.range(&q, read).await?;
                for kv in &page.kvs {
                    if a.json {
                        let sep = if first { "" } else { "," };
                        let kv = serde_json::to_string(kv).expect("a key encodes");
                        write!(out, "{sep}{kv}").context("writing")?;
                    } else {
                        write!(
                            out,
                            "{}\t{}\t{}\t{}",
                            kv.key, kv.version, kv.mod_index, kv.create_index
                        )
                        .context("writing")?;
                        match &kv.value {
                            Some(v) => writeln!(out, "\t{v}"),
                            None => writeln!(out),
                        }
                        .context("writing")?;
                    }
                    first = false;
                }
                match page.next {
                    Some(next) if page.more => q.after = Some(next),
                    _ => break,
                }
            }
            if a.json {
                writeln!(out, "]").context("writing")?;
            }
        }
        Command::Txn => {
            let mut body = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut body)
                .context("reading the transaction from stdin")?;
            let txn: hraftd_client::wire::TxnRequest = serde_json::from_str(&body)
                .context("the transaction on stdin is not valid JSON for POST /txn")?;
            let r = c.txn(&txn).await?;
            let v = serde_json::to_value(&r).expect("an answer encodes");
            print(a.json, v.clone(), || {
                let mut t = format!(
                    "{} index {}\n",
                    if r.succeeded { "SUCCEEDED" } else { "FAILED" },
                    r.index
                );
                for res in &r.results {
                    t += &format!(
                        "{}\n",
                        serde_json::to_string(res).expect("a result encodes")
                    );
                }
                t
            });
            if !r.succeeded {
                return Err(Failure::NotFound(
                    "the transaction's compares did not hold (its failure branch ran)".into(),
                ));
            }
        }
        Command::Status => {
            let s = c.status().await?;
            let leader = s.leader_id().unwrap_or("(none)").to_string();
            let v = serde_json::to_value(&s).expect("a status encodes");
            print(a.json, v, || {
                format!(
                    "id\t{}\nrole\t{}\nterm\t{}\nleader\t{leader}\ncommit_index\t{}\napplied_index\t{}\n",
                    s.id, s.role, s.term, s.commit_index, s.applied_index
                )
            });
        }
        Command::Members => {
            let s = c.status().await?;
            let v = serde_json::to_value(&s.members).expect("members encode");
            print(a.json, v, || {
                let mut t = String::from("ID\tRAFT ADDRESS\tHTTP ADDRESS\tVOTER\tLEADER\n");
                for m in &s.members {
                    let leads = s.leader_id() == Some(m.id.as_str());
                    t += &format!(
                        "{}\t{}\t{}\t{}\t{}\n",
                        m.id, m.raft_addr, m.http_addr, m.voter, leads
                    );
                }
                t
            });
        }
        Command::Join {
            id,
            raft_addr,
            http_addr,
            cluster_key,
        } => {
            let key = match cluster_key {
                Some(f) => Some(
                    hraftd_store::ClusterKey::load(f)
                        .with_context(|| format!("reading --cluster-key {}", f.display()))?,
                ),
                None => None,
            };
            let req = JoinRequest {
                id: id.clone(),
                addr: raft_addr.clone(),
                http_addr: http_addr.clone(),
            };
            let sign = |body: &[u8]| {
                key.as_ref().map(|k| {
                    (
                        hraftd_store::JoinProof::HEADER,
                        hraftd_store::JoinProof::make(k, body),
                    )
                })
            };
            let r = c.join(&req, sign).await?;
            let v = serde_json::to_value(&r).expect("a join answer encodes");
            print(a.json, v, || {
                format!("joined {} at index {}\n", r.joined, r.index)
            });
        }
        Command::Remove { id } => {
            let r = c.remove(id).await?;
            let v = serde_json::to_value(&r).expect("a remove answer encodes");
            print(a.json, v, || format!("removed {}\n", r.removed));
        }
        Command::Backup { file } => {
            let mut resp = c.backup(a.level).await?;
            // Written beside the target (FILE.partial) and renamed once whole, so FILE is
            // never a torn backup.
            let mut tmp = file.clone().into_os_string();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let mut out = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut bytes = 0u64;
            loop {
                let chunk = resp
                    .chunk()
                    .await
                    .map_err(|e| Failure::Unavailable(format!("reading the backup: {e}")))?;
                let Some(chunk) = chunk else { break };
                out.write_all(&chunk)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                bytes += chunk.len() as u64;
            }
            out.sync_all()
                .and_then(|()| std::fs::rename(&tmp, file))
                .with_context(|| format!("saving {}", file.display()))?;
            print(a.json, json!({ "file": file, "bytes": bytes }), || {
                format!("wrote {bytes} bytes to {}\n", file.display())
            });
        }
    }
    Ok(())
}
