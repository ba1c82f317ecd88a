#![allow(clippy::unwrap_used)]
//! Deadlines and bounds of issue 10: a holder that trickles cannot stall a
//! read, stalled HTTP connections are shed by the slave, node addresses
//! are well formed and unique, location batches are bounded and a node's
//! location set corrects itself (resync). Real processes on loopback; the
//! tests that play a node speak gRPC through `Cluster::node_client`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, MasterGrpc, TOKEN, pseudo_random, wait_until};
use elton_proto::ObjectId;
use elton_proto::pb::{
    AddLocationsRequest, HeartbeatRequest, ListNodesRequest, LocateRequest, NodeInfo,
    RegisterNodeRequest, ResyncNodeRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Uploads `data` to slave `i` as an object; returns its id once the
/// master knows slave `i` holds it.
fn put_object(c: &Cluster, rt: &tokio::runtime::Runtime, i: usize, data: &[u8]) -> ObjectId {
    let id = ObjectId::of(data);
    let r = reqwest::blocking::Client::new()
        .put(format!("{}/v1/objects/{id}", c.slave_url(i)))
        .bearer_auth(TOKEN)
        .body(data.to_vec())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let node = format!("slave{i}");
    wait_until(
        "the upload to be announced",
        Duration::from_secs(10),
        || holders(c, rt, &id).iter().any(|h| h.node_id == node),
    );
    id
}

fn holders(c: &Cluster, rt: &tokio::runtime::Runtime, id: &ObjectId) -> Vec<NodeInfo> {
    rt.block_on(async {
        c.master_client()
            .await
            .locate(LocateRequest {
                object: id.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .holders
    })
}

fn nodes(c: &Cluster, rt: &tokio::runtime::Runtime) -> Vec<NodeInfo> {
    rt.block_on(async {
        c.master_client()
            .await
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes
    })
}

fn node_info(c: &Cluster, rt: &tokio::runtime::Runtime, node: &str) -> NodeInfo {
    nodes(c, rt)
        .into_iter()
        .find(|n| n.node_id == node)
        .unwrap()
}

/// Heartbeats as `node` every 200 ms (the harness's interval) until the
/// runtime is dropped.
fn keep_beating(rt: &tokio::runtime::Runtime, client: MasterGrpc, node: &str) {
    let node = node.to_string();
    rt.spawn(async move {
        let mut client = client;
        loop {
            let _ = client
                .heartbeat(HeartbeatRequest {
                    node_id: node.clone(),
                    copy_failed: Vec::new(),
                    ..Default::default()
                })
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// A fake holder: answers any request at once with a 200, the object's
/// true size as Content-Length, and then its bytes, one per 100 ms.
async fn trickling_holder(data: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let data = std::sync::Arc::new(data);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let headers = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", data.len());
                if sock.write_all(headers.as_bytes()).await.is_err() {
                    return;
                }
                for b in data.iter() {
                    if sock.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    addr
}

#[test]
fn a_trickling_holder_cannot_stall_a_read() {
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let rt = runtime();
    let data = pseudo_random(4 << 20, 10);
    let id = put_object(&c, &rt, 1, &data);

    // The fake holder sorts before "slave1", so the master tries it first.
    let fake = "aaa-trickler";
    let addr = rt.block_on(trickling_holder(data.clone()));
    let client = rt.block_on(async {
        let mut client = c.node_client(fake).await;
        client
            .register_node(RegisterNodeRequest {
                node_id: fake.into(),
                http_addr: addr,
            })
            .await
            .unwrap();
        client
            .add_locations(AddLocationsRequest {
                node_id: fake.into(),
                objects: vec![id.as_bytes().to_vec()],
                ..Default::default()
            })
            .await
            .unwrap();
        client
    });
    keep_beating(&rt, client, fake);
    let ids: Vec<String> = holders(&c, &rt, &id)
        .into_iter()
        .filter(|h| h.up)
        .map(|h| h.node_id)
        .collect();
    assert_eq!(ids, ["aaa-trickler", "slave1"]);

    // Slave 2 has no copy: it fetches through the master.
    let started = Instant::now();
    let got = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .get(format!("{}/v1/objects/{id}", c.slave_url(2)))
        .send()
        .unwrap();
    assert_eq!(got.status(), 200);
    let got = got.bytes().unwrap();
    let took = started.elapsed();
    assert!(got.as_ref() == data.as_slice(), "wrong bytes");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // The miss is counted against the fake holder, which keeps its location
    // (it did not say it lacks the object) but is asked last from now on.
    let info = node_info(&c, &rt, fake);
    assert!(info.failed_transfers >= 1, "{info:?}");
    assert_eq!(info.stale_locations, 0);
    assert_eq!(node_info(&c, &rt, "slave1").failed_transfers, 0);
    let log = c.master.log_text();
    assert!(
        log.contains("missed the progress deadline"),
        "master log: {log}"
    );
}

#[test]
fn stalled_http_connections_are_closed_while_requests_are_served() {
    let c = Cluster::with_args(1, &[], &["--http-header-timeout-ms", "2000"]);
    let port = c.slaves[0].port;
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /v1/objects/af13").unwrap();
            s
        })
        .collect();
    // Meanwhile a normal request is served.
    let r = reqwest::blocking::get(format!("{}/metrics", c.slave_url(1))).unwrap();
    assert_eq!(r.status(), 200);

    let mut buf = [0u8; 256];
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server closes without answering: end of stream (or a reset).
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!(
                "answered a partial request: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // The server still serves.
    let r = reqwest::blocking::get(format!("{}/metrics", c.slave_url(1))).unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn node_addresses_must_be_host_and_port_and_unique() {
    let c = Cluster::new(1);
    let rt = runtime();
    let slave1 = node_info(&c, &rt, "slave1");
    rt.block_on(async {
        let mut client = c.node_client("intruder").await;
        for bad in [
            "127.0.0.1:7460?",
            "127.0.0.1:7460#",
            "127.0.0.1:7460/x",
            "user@127.0.0.1:7460",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "host name:7460",
            "::1:7460",
            "",
        ] {
            let err = client
                .register_node(RegisterNodeRequest {
                    node_id: "intruder".into(),
                    http_addr: bad.into(),
                })
                .await
                .expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        }
        // Another node's address, while that node is up: refused, named.
        let err = client
            .register_node(RegisterNodeRequest {
                node_id: "intruder".into(),
                http_addr: slave1.http_addr.clone(),
            })
            .await
            .expect_err("address of slave1");
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        assert!(err.message().contains("slave1"), "{err:?}");
        client
            .register_node(RegisterNodeRequest {
                node_id: "intruder".into(),
                http_addr: "[::1]:7461".into(),
            })
            .await
            .unwrap();
    });
    let nodes: Vec<String> = nodes(&c, &rt)
        .into_iter()
        .map(|n| format!("{}={}", n.node_id, n.http_addr))
        .collect();
    assert!(
        nodes.contains(&"intruder=[::1]:7461".to_string()),
        "{nodes:?}"
    );
    assert!(nodes.contains(&format!("slave1={}", slave1.http_addr)));
}

#[test]
fn location_batches_are_bounded_and_a_resync_sweeps_what_a_node_no_longer_holds() {
    let c = Cluster::with_args(1, &["--replication", "1"], &[]);
    let rt = runtime();
    let real = put_object(&c, &rt, 1, b"held for real");
    let phantom = ObjectId::of(b"never stored on slave1");
    rt.block_on(async {
        // A location the slave does not back (as after a lost disk).
        let mut as_slave = c.node_client("slave1").await;
        as_slave
            .add_locations(AddLocationsRequest {
                node_id: "slave1".into(),
                objects: vec![phantom.as_bytes().to_vec()],
                ..Default::default()
            })
            .await
            .unwrap();
        let err = as_slave
            .add_locations(AddLocationsRequest {
                node_id: "slave1".into(),
                objects: vec![phantom.as_bytes().to_vec(); 10_001],
                ..Default::default()
            })
            .await
            .expect_err("an oversized batch");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("10000"), "{err:?}");
    });
    assert_eq!(holders(&c, &rt, &phantom).len(), 1);

    // The operator asks; the slave re-announces at its next heartbeat and
    // the master forgets what it did not name.
    rt.block_on(async {
        c.master_client()
            .await
            .resync_node(ResyncNodeRequest {
                node_id: "slave1".into(),
            })
            .await
            .unwrap();
    });
    wait_until("the resync to finish", Duration::from_secs(10), || {
        node_info(&c, &rt, "slave1").resyncs == 1
    });
    assert!(holders(&c, &rt, &phantom).is_empty());
    let kept: Vec<String> = holders(&c, &rt, &real)
        .into_iter()
        .map(|h| h.node_id)
        .collect();
    assert_eq!(kept, ["slave1"]);
    let err = rt.block_on(async {
        c.master_client()
            .await
            .resync_node(ResyncNodeRequest {
                node_id: "nobody".into(),
            })
            .await
            .expect_err("unknown node")
    });
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}
