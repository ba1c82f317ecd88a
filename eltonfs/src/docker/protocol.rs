//! Docker's volume plugin protocol (API v1.2): JSON over HTTP POSTs on a unix
//! socket. Every response carries `Err`, empty on success; Docker shows a
//! non-empty `Err` to the user as the command's error.
//!
//! <https://docs.docker.com/engine/extend/plugins_volume/>

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The media type Docker sends and expects.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateRequest {
    pub name: String,
    /// `-o key=value` options of `docker volume create`.
    #[serde(default)]
    pub opts: Option<BTreeMap<String, String>>,
}

/// `Remove`, `Path`, `Get`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameRequest {
    pub name: String,
}

/// `Mount`, `Unmount`: `ID` names one user (container) of the volume.
#[derive(Debug, Default, Deserialize)]
pub struct MountRequest {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "ID", default)]
    pub id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrResponse {
    pub err: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountpointResponse {
    pub mountpoint: String,
    pub err: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeView {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mountpoint: String,
    /// Shown by `docker volume inspect`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeView>,
    pub err: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListResponse {
    pub volumes: Vec<VolumeView>,
    pub err: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesResponse {
    pub capabilities: Scope,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Scope {
    /// "local": each host has its own mount of a volume (its own upper);
    /// what hosts share is the committed versions.
    pub scope: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_docker_requests() {
        let c: CreateRequest =
            serde_json::from_str(r#"{"Name":"webvol","Opts":{"volume":"web"}}"#).unwrap();
        assert_eq!(c.name, "webvol");
        assert_eq!(c.opts.unwrap()["volume"], "web");
        // Docker sends `"Opts": null` when no -o was given.
        let c: CreateRequest = serde_json::from_str(r#"{"Name":"v","Opts":null}"#).unwrap();
        assert!(c.opts.is_none());
        let m: MountRequest = serde_json::from_str(r#"{"Name":"v","ID":"abc"}"#).unwrap();
        assert_eq!((m.name.as_str(), m.id.as_str()), ("v", "abc"));
    }

    #[test]
    fn encodes_docker_responses() {
        let r = MountpointResponse {
            mountpoint: "/m".into(),
            err: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Mountpoint":"/m","Err":""}"#
        );
        let g = GetResponse {
            volume: Some(VolumeView {
                name: "v".into(),
                ..Default::default()
            }),
            err: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"Volume":{"Name":"v"},"Err":""}"#
        );
    }
}
