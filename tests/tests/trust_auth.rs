#![allow(clippy::unwrap_used)]
//! Every call to a master is authenticated and authorized. The clients here
//! are plain tonic (TLS settings and metadata set by hand), playing an
//! attacker, a node, and clients with tokens of each scope.
//!
//! Phases: 1. no credentials; 2. a node's certificate speaking for another
//! node; 3. certificates of strangers and peer claims; 4. token scopes and
//! revocation; 5. the slave's HTTP writes.

mod common;

use common::{Cluster, Pki, TOKEN};
use elton_proto::pb::master_client::MasterClient;
use elton_proto::pb::{self};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TLS channel to the master, optionally presenting `identity`.
async fn channel(c: &Cluster, identity: Option<(&str, &str)>) -> Result<Channel, String> {
    let ca = std::fs::read_to_string(c.ca_path()).unwrap();
    let mut tls = ClientTlsConfig::new()
        .domain_name("elton-master")
        .ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(c.master_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// The code of every mutating method called with `token` (and whatever
/// certificate the channel presents).
async fn mutating_codes(ch: Channel, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let mut m = MasterClient::new(ch);
    let code = |r: Result<_, tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "CreateVolume",
            code(
                m.create_volume(with_token(
                    pb::CreateVolumeRequest {
                        name: "x".into(),
                        keep: 0,
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "Commit",
            code(
                m.commit(with_token(
                    pb::CommitRequest {
                        volume: "web".into(),
                        parent: 0,
                        root: vec![7; 32],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "RegisterNode",
            code(
                m.register_node(with_token(
                    pb::RegisterNodeRequest {
                        node_id: "slave1".into(),
                        http_addr: "127.0.0.1:9".into(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "Heartbeat",
            code(
                m.heartbeat(with_token(
                    pb::HeartbeatRequest {
                        node_id: "slave1".into(),
                        copy_failed: vec![],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "AddLocations",
            code(
                m.add_locations(with_token(
                    pb::AddLocationsRequest {
                        node_id: "slave1".into(),
                        objects: vec![vec![9; 32]],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "CreateToken",
            code(
                m.create_token(with_token(
                    pb::CreateTokenRequest {
                        name: "t".into(),
                        scope: "admin".into(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "RevokeToken",
            code(
                m.revoke_token(with_token(pb::RevokeTokenRequest { id: "x".into() }, token))
                    .await
                    .map(|_| ()),
            ),
        ),
    ]
}

fn read_pem(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[test]
fn every_call_to_a_master_is_authenticated_and_authorized() {
    let c = Cluster::new(1);
    c.ok(1, &["volume", "create", "web"]);
    let rt = rt();

    // Phase 1: no credentials at all.
    rt.block_on(async {
        let ch = channel(&c, None).await.unwrap();
        for (method, code) in mutating_codes(ch.clone(), None).await {
            assert_eq!(code, Code::Unauthenticated, "{method} without credentials");
        }
        let mut m = MasterClient::new(ch);
        let err = m.list_volumes(pb::ListVolumesRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // A wrong token is no better than none.
        let err = m
            .list_volumes(with_token(
                pb::ListVolumesRequest {},
                Some("not-a-real-token-at-all"),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // Plain gRPC without TLS does not even get a handshake.
        let plain = format!("http://127.0.0.1:{}", c.master.port);
        let plain = Endpoint::from_shared(plain).unwrap().connect().await;
        if let Ok(ch) = plain {
            let r = MasterClient::new(ch)
                .list_volumes(with_token(pb::ListVolumesRequest {}, Some(TOKEN)))
                .await;
            assert!(r.is_err(), "a master answered plaintext gRPC");
        }
    });

    // Phase 2: node A's certificate cannot act as node B.
    let a_dir = c.dir.path().join("certs-node-a");
    c.issue_cert("node-a", &a_dir);
    let (cert, key) = (read_pem(&a_dir, "node.pem"), read_pem(&a_dir, "node.key"));
    rt.block_on(async {
        let ch = channel(&c, Some((&cert, &key))).await.unwrap();
        // slave1 is another node: every node call as slave1 is refused.
        for (method, code) in mutating_codes(ch.clone(), None).await {
            assert_eq!(code, Code::PermissionDenied, "{method} as another node");
        }
        // As itself it may register and heartbeat, and read.
        let mut m = MasterClient::new(ch);
        m.register_node(pb::RegisterNodeRequest {
            node_id: "node-a".into(),
            http_addr: "127.0.0.1:9".into(),
        })
        .await
        .unwrap();
        m.heartbeat(pb::HeartbeatRequest {
            node_id: "node-a".into(),
            copy_failed: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
        m.get_volume(pb::GetVolumeRequest { name: "web".into() })
            .await
            .unwrap();
        let who = m.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
        assert_eq!((who.kind.as_str(), who.name.as_str()), ("node", "node-a"));
    });

    // Phase 3: a certificate of a cluster this master does not know fails
    // the handshake; a peer claim from a non-peer is not believed.
    let stranger = Pki::new("stranger");
    let s_dir = stranger.dir.path();
    let (cert, key) = (read_pem(s_dir, "node.pem"), read_pem(s_dir, "node.key"));
    rt.block_on(async {
        match channel(&c, Some((&cert, &key))).await {
            Err(_) => {}
            Ok(ch) => {
                let r = MasterClient::new(ch)
                    .list_volumes(pb::ListVolumesRequest {})
                    .await;
                assert!(r.is_err(), "a stranger's certificate was accepted");
            }
        }
        let ch = channel(&c, None).await.unwrap();
        let mut m = MasterClient::new(ch);
        let mut req = with_token(
            pb::CommitRequest {
                volume: "web".into(),
                parent: 0,
                root: vec![7; 32],
                ..Default::default()
            },
            None,
        );
        req.metadata_mut()
            .insert("x-elton-peer", "stranger".parse().unwrap());
        let err = m.commit(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let info = m
            .get_volume(with_token(
                pb::GetVolumeRequest { name: "web".into() },
                Some(TOKEN),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.head, 0, "nothing was committed");
    });

    // Phase 4: scopes and revocation.
    let read = token(&c, "reader", "read");
    let write = token(&c, "writer", "write");
    rt.block_on(async {
        let ch = channel(&c, None).await.unwrap();
        let mut m = MasterClient::new(ch.clone());
        m.list_volumes(with_token(pb::ListVolumesRequest {}, Some(&read.1)))
            .await
            .unwrap();
        for (method, code) in mutating_codes(ch.clone(), Some(&read.1)).await {
            assert_eq!(code, Code::PermissionDenied, "{method} with a read token");
        }
        // A write token may create volumes and commit, not manage tokens or
        // speak for nodes.
        m.create_volume(with_token(
            pb::CreateVolumeRequest {
                name: "w".into(),
                keep: 0,
            },
            Some(&write.1),
        ))
        .await
        .unwrap();
        for (method, code) in mutating_codes(ch.clone(), Some(&write.1)).await {
            match method {
                "CreateVolume" => assert_eq!(code, Code::Ok, "{method}"),
                "Commit" => assert_ne!(code, Code::PermissionDenied, "{method}"),
                _ => assert_eq!(code, Code::PermissionDenied, "{method} with a write token"),
            }
        }
    });
    revoke(&c, &write.0);
    rt.block_on(async {
        let mut m = MasterClient::new(channel(&c, None).await.unwrap());
        let err = m
            .list_volumes(with_token(pb::ListVolumesRequest {}, Some(&write.1)))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "a revoked token: {err:?}"
        );
    });

    // Phase 5: the slave's HTTP writes ask the master about the token.
    let http = reqwest::blocking::Client::new();
    let put = |token: Option<&str>| {
        let mut r = http
            .put(format!("{}/v1/volumes/web/a.txt", c.slave_url(1)))
            .body("hello");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(put(None), 401);
    assert_eq!(put(Some("not-a-real-token-at-all")), 401);
    assert_eq!(put(Some(&read.1)), 403);
    assert_eq!(put(Some(&write.1)), 401, "revoked");
    assert_eq!(put(Some(TOKEN)), 201);
    // Reads stay public, like a CDN's.
    let body = http
        .get(format!("{}/v1/volumes/web/1/a.txt", c.slave_url(1)))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(body, "hello");
}

/// Creates a token with the CLI; returns (id, secret).
fn token(c: &Cluster, name: &str, scope: &str) -> (String, String) {
    let out = c.ok(
        1,
        &[
            "token", "create", "--name", name, "--scope", scope, "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

fn revoke(c: &Cluster, id: &str) {
    c.ok(1, &["token", "revoke", id]);
    let listed = c.ok(1, &["token", "ls", "--json"]);
    assert!(!listed.contains(id), "{listed}");
}
