//! Where the CLI finds the master and the slave, and how it talks to them.

use anyhow::{Context, Result, anyhow};
use clap::Args;
use elton_proto::pb::master_client::MasterClient;
use tonic::transport::Channel;

use super::default_data_dir;

#[derive(Args, Debug, Clone)]
pub struct Endpoints {
    /// Master gRPC URL.
    #[arg(
        long,
        global = true,
        env = "ELTON_MASTER",
        default_value = "http://127.0.0.1:7100"
    )]
    pub master: String,
    /// Slave HTTP URL.
    #[arg(
        long,
        global = true,
        env = "ELTON_SLAVE",
        default_value = "http://127.0.0.1:7200"
    )]
    pub slave: String,
    /// Write token for the slave; default: the token file of `elton up`.
    #[arg(long, global = true, env = "ELTON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Endpoints {
    pub async fn master(&self) -> Result<MasterClient<Channel>> {
        let channel = Channel::from_shared(self.master.clone())
            .with_context(|| format!("master URL {:?}", self.master))?
            .connect()
            .await
            .with_context(|| format!("connecting to master {}", self.master))?;
        Ok(MasterClient::new(channel).max_decoding_message_size(64 << 20))
    }

    pub fn slave_url(&self, path: &str) -> String {
        format!("{}{path}", self.slave.trim_end_matches('/'))
    }

    pub fn token(&self) -> Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = default_data_dir().join("token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|_| {
                anyhow!(
                    "no write token: pass --token or ELTON_TOKEN (elton up writes one to {})",
                    path.display()
                )
            })
    }
}

/// A gRPC status as a one-line error.
pub fn status(e: tonic::Status) -> anyhow::Error {
    match e.code() {
        tonic::Code::Unavailable => anyhow!("master unavailable: {}", e.message()),
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
