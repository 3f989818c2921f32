//! `hraftd restore --from FILE [flags] DATA_DIR`: seeds a new single-node cluster from a
//! backup taken with `GET /backup`. Afterwards the node is started on DATA_DIR with the
//! same flags, and other nodes join it as usual.
//!
//! The backup is loaded through the Raft log of a freshly bootstrapped node (so the
//! restored state is an ordinary committed history), then snapshotted, so that nodes that
//! join later catch up from one snapshot rather than the whole log.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use hraftd_store::Store;

use crate::cli;
use crate::cli::Args;

/// Seed a new single-node cluster in DATA_DIR from a backup file (GET /backup). Give the
/// flags the node will later run with: its id and addresses are recorded in the cluster.
#[derive(Debug, Parser)]
#[command(name = "hraftd restore", bin_name = "hraftd restore")]
pub struct RestoreArgs {
    /// The backup file to restore.
    #[arg(long)]
    pub from: PathBuf,
    #[command(flatten)]
    pub node: Args,
}

/// Runs the restore; prints what was restored and how to start the node.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    // 1. The backup must be whole (structure, count and checksum) before anything is made.
    let info = hraftd_store::backup::verify(&args.from)
        .with_context(|| format!("checking {}", args.from.display()))?;

    // 2. Only into a new data directory: never over an existing node's state.
    let a = &args.node;
    let target = a.data_dir.clone();
    let occupied = std::fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        bail!(
            "{} already exists and is not empty; restore into a new directory",
            target.display()
        );
    }

    // 3. The node's identity, as a later `hraftd` with the same flags will have it, built
    //    in a directory beside DATA_DIR that becomes DATA_DIR only once complete: a restore
    //    that fails or is killed midway leaves no DATA_DIR a node could start on.
    let name_of = target
        .file_name()
        .with_context(|| format!("{} has no directory name", target.display()))?
        .to_string_lossy()
        .into_owned();
    let building = target.with_file_name(format!(".{name_of}.restoring"));
    if building.exists() {
        std::fs::remove_dir_all(&building).with_context(|| {
            format!(
                "removing an earlier failed restore in {}",
                building.display()
            )
        })?;
    }
    let (id, radv, hadv) = cli::identity(a, cli::port_of(&a.raddr)?, cli::port_of(&a.haddr)?)?;
    let mut opts = cli::node_options(a, &id, &radv, &hadv)?;
    opts.data_dir = building.clone();
    let store = Store::open(opts)
        .await
        .with_context(|| format!("creating the store in {}", building.display()))?;

    // 4. Bootstrap, wait to lead, load the backup, snapshot; then stop cleanly.
    let result = async {
        store.bootstrap().await.context("bootstrapping")?;
        store
            .wait_leader(Duration::from_secs(30))
            .await
            .context("waiting for the new single-node cluster to elect itself")?;
        store
            .restore(&args.from)
            .await
            .with_context(|| format!("loading {}", args.from.display()))
    }
    .await;
    store.shutdown().await;
    drop(store);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&building);
        return Err(e);
    }
    if target.exists() {
        // Checked empty above.
        std::fs::remove_dir(&target)
            .with_context(|| format!("replacing the empty {}", target.display()))?;
    }
    std::fs::rename(&building, &target).with_context(|| {
        format!(
            "moving {} into place as {}",
            building.display(),
            target.display()
        )
    })?;
    println!(
        "restored {} keys (backup taken at index {}) into {} as node {id:?} (raft {radv}, http {hadv}).\n\
         Start it with the same flags, without `restore --from`; other nodes can then -join it.",
        info.keys,
        info.applied_index,
        a.data_dir.display()
    );
    Ok(())
}
