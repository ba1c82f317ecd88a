//! Where the CLI finds the master and the slave, and how it talks to them.
//!
//! The master is reached over TLS, trusting the cluster's CA (`--ca`,
//! default `$ELTON_HOME/pki/ca.pem`, which `elton up` writes), and every
//! call carries the bearer token (`--token`, default `$ELTON_HOME/token`).
//! An `http://` master URL means an insecure master: no TLS.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use elton_proto::pb::master_client::MasterClient;
use elton_trust::BearerAuth;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::default_data_dir;

/// A client of the master that sends the CLI's token with every call.
pub type Master = MasterClient<InterceptedService<Channel, BearerAuth>>;

#[derive(Args, Debug, Clone)]
pub struct Endpoints {
    /// Master gRPC URL (https; http only for an --insecure master).
    #[arg(
        long,
        global = true,
        env = "ELTON_MASTER",
        hide_env_values = true,
        default_value = "https://127.0.0.1:7100"
    )]
    pub master: String,
    /// Slave HTTP URL.
    #[arg(
        long,
        global = true,
        env = "ELTON_SLAVE",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7200"
    )]
    pub slave: String,
    /// Bearer token; default: the file $ELTON_HOME/token (`elton up` writes it).
    #[arg(long, global = true, env = "ELTON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (keeps it out of `ps` and the
    /// shell history); takes precedence over --token.
    #[arg(long, global = true, env = "ELTON_TOKEN_FILE", hide_env_values = true)]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate that the master's must chain to
    /// [default: $ELTON_HOME/pki/ca.pem].
    #[arg(long, global = true, env = "ELTON_CA", hide_env_values = true)]
    pub ca: Option<PathBuf>,
}

impl Endpoints {
    pub fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| default_data_dir().join("pki").join("ca.pem"))
    }

    pub async fn master(&self) -> Result<Master> {
        let channel = self.master_channel().await?;
        let auth = BearerAuth::new(self.token_opt()?.as_deref()).map_err(|e| anyhow!("{e}"))?;
        Ok(MasterClient::with_interceptor(channel, auth)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// The bearer token interceptor of every call (none when there is no
    /// token).
    pub fn auth(&self) -> Result<BearerAuth> {
        BearerAuth::new(self.token_opt()?.as_deref()).map_err(|e| anyhow!("{e}"))
    }

    /// A connection to the master (TLS unless its URL is http), for any of
    /// the services it serves.
    pub async fn master_channel(&self) -> Result<Channel> {
        let mut endpoint = Endpoint::from_shared(self.master.clone())
            .with_context(|| format!("master URL {:?}", self.master))?;
        if !self.master.starts_with("http://") {
            let path = self.ca_path();
            let ca = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading the cluster CA {} (pass --ca or ELTON_CA; on the master's \
                     host, `elton cert export-ca` prints it)",
                    path.display()
                )
            })?;
            endpoint = endpoint
                .tls_config(elton_trust::tls::anonymous_client(&ca))
                .context("TLS settings")?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to master {}", self.master))
    }

    pub fn slave_url(&self, path: &str) -> String {
        format!("{}{path}", self.slave.trim_end_matches('/'))
    }

    pub fn token_path() -> PathBuf {
        default_data_dir().join("token")
    }

    /// The token, or none when none is configured; a --token-file that
    /// cannot be read is an error, not "no token".
    pub fn token_opt(&self) -> Result<Option<String>> {
        if self.token_file.is_some() || self.token.is_some() {
            return self.token().map(Some);
        }
        // No error value for the usual "no token here" (an insecure
        // master): with RUST_BACKTRACE set, each one captures a backtrace,
        // a millisecond of a short call's time.
        Ok(std::fs::read_to_string(Self::token_path())
            .ok()
            .map(|t| t.trim().to_string()))
    }

    pub fn token(&self) -> Result<String> {
        // The file first: it is the one way to keep a token out of the
        // environment, so a stray ELTON_TOKEN must not override it.
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            let t = t.trim();
            anyhow::ensure!(!t.is_empty(), "the token file {} is empty", path.display());
            return Ok(t.to_string());
        }
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = Self::token_path();
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|_| {
                anyhow!(
                    "no token: pass --token or ELTON_TOKEN (elton up writes one to {})",
                    path.display()
                )
            })
    }
}

/// A gRPC status as a one-line error.
pub fn status(e: tonic::Status) -> anyhow::Error {
    match e.code() {
        tonic::Code::Unavailable => anyhow!("master unavailable: {}", e.message()),
        tonic::Code::Unauthenticated => anyhow!(
            "{} (pass a token with --token or ELTON_TOKEN; `elton up` writes one to {})",
            e.message(),
            Endpoints::token_path().display()
        ),
        _ => anyhow!("{}", e.message()),
    }
}

/// Turns a non-success HTTP response into an error carrying the server's
/// message (`{"error": "..."}`).
pub async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(body);
    Err(anyhow!("{msg} (HTTP {})", status.as_u16()))
}
