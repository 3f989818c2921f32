//! `hraftd load --from FILE --to ADDR[,ADDR..] [--group G]`: loads a backup (from
//! `GET /backup` or `GET /groups/<g>/backup`) into a running cluster's group, through the
//! HTTP API: the pairs go in bounded batches (`POST /groups/<g>/key`, or `/key`), each one
//! log entry, as the user given (the password from `HRAFTD_PASSWORD` or a file, never the
//! command line). This is how a group is restored: create it (`POST /groups`), then load.
//! (`hraftd restore` seeds a whole new cluster offline instead.)

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Load a backup file into a running cluster's group through the HTTP API.
#[derive(Debug, Parser)]
#[command(name = "hraftd load", bin_name = "hraftd load")]
pub struct LoadArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// HTTP addresses of cluster nodes (writes follow redirects to the group's leader).
    #[arg(long, value_delimiter = ',', required = true)]
    pub to: Vec<String>,
    /// The group to load into (default: the default group).
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub client: hraftd::client_opts::ClientOpts,
}

/// Bytes of keys and values per request: well under the default body limit (1 MiB).
const CHUNK: usize = 256 << 10;

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    // 1. The file must be whole before anything is written.
    let info = hraftd_store::backup::verify(&a.from)
        .with_context(|| format!("checking {}", a.from.display()))?;
    // 2. A client of the cluster, as the user given.
    let b = a.client.builder(a.to.clone(), Duration::from_secs(30))?;
    let client = b.build().context("an HTTP client")?;
    let client = match &a.group {
        Some(g) => client.in_group(g),
        None => client,
    };
    // 3. The pairs, in bounded batches.
    let mut reader = hraftd_store::backup::BackupReader::open(&a.from)?;
    let mut keys = 0u64;
    loop {
        let pairs = reader.next_chunk(CHUNK)?;
        if pairs.is_empty() {
            break;
        }
        client
            .set(&pairs)
            .await
            .with_context(|| format!("loading after {keys} keys"))?;
        keys += pairs.len() as u64;
    }
    println!(
        "loaded {keys} keys (backup of applied index {}) into group {}",
        info.applied_index,
        a.group.as_deref().unwrap_or(hraftd_store::DEFAULT_GROUP)
    );
    Ok(())
}
