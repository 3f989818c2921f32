//! The client options that `hraftctl` and `hraftd load` share: the CA to trust for
//! `https://` endpoints and the user to act as. The password comes from `HRAFTD_PASSWORD`
//! or a file, never from a flag, so it is not in `ps` or shell history.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hraftd_client::Builder;
use hraftd_client::Client;

/// `--ca`, `--user` and `--password-file`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// The CA that signed the nodes' certificates (for https:// endpoints).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Act as this user (`-auth`); the password is read from `HRAFTD_PASSWORD`, or from
    /// `--password-file`.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// File holding the `--user`'s password (a trailing newline is dropped).
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
}

impl ClientOpts {
    /// A client builder for `endpoints` with these options and a request `timeout`.
    pub fn builder(&self, endpoints: Vec<String>, timeout: Duration) -> anyhow::Result<Builder> {
        let mut b = Client::builder(endpoints).timeout(timeout);
        if let Some(ca) = &self.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
            b = b.ca_pem(pem);
        }
        if let Some(user) = &self.user {
            let password = match (&self.password_file, std::env::var("HRAFTD_PASSWORD")) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading --password-file {}", f.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                (None, Ok(p)) => p,
                (None, Err(_)) => {
                    anyhow::bail!("--user needs HRAFTD_PASSWORD or --password-file")
                }
            };
            b = b.basic_auth(user.clone(), password);
        }
        Ok(b)
    }
}
