//! Asking a running plugin over its socket, the way Docker does: used by
//! `elton commit --docker-volume` to find the volume's mount.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::protocol::{CONTENT_TYPE, MountpointResponse};

/// `POST endpoint` with a JSON body; the decoded JSON answer.
pub async fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    endpoint: &str,
    body: &serde_json::Value,
) -> Result<T> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the plugin at {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking to the plugin")?;
    tokio::spawn(conn);
    let req = hyper::Request::post(endpoint)
        .header(hyper::header::HOST, "plugin")
        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    let resp = sender
        .send_request(req)
        .await
        .context("talking to the plugin")?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("reading the plugin's answer")?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "plugin answered HTTP {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("bad answer from the plugin: {e}"))
}

/// Where the plugin mounted Docker volume `name`; an error when it is not
/// mounted (no container uses it).
pub async fn mountpoint(socket: &Path, name: &str) -> Result<std::path::PathBuf> {
    let r: MountpointResponse = call(
        socket,
        "/VolumeDriver.Path",
        &serde_json::json!({ "Name": name }),
    )
    .await?;
    if !r.err.is_empty() {
        bail!("{}", r.err.trim_start_matches("elton: "));
    }
    if r.mountpoint.is_empty() {
        bail!("Docker volume {name:?} is not mounted (no container uses it)");
    }
    Ok(r.mountpoint.into())
}
