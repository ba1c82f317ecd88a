#![allow(clippy::unwrap_used)]
//! Masters publish only valid trees (issue 10, "Validation at the master").
//!
//! Bad objects are stored on a slave through its HTTP upload, so they are
//! held and the master can read them; then `Commit` is called on the master
//! directly, past the slave's own check, the way a misbehaving node would.
//! Every malformed tree must be refused with INVALID_ARGUMENT naming the
//! bad entry, leaving the head where it was.

mod common;

use common::{Cluster, MasterGrpc, TOKEN};
use elton_proto::listing::{encode_dir, page_spans};
use elton_proto::paged::split;
use elton_proto::pb;
use elton_proto::{Chunk, DirManifest, Entry, ObjectId, PEER_METADATA_KEY, Recipe};

const VOLUME: &str = "trusted";

struct Fixture {
    c: Cluster,
    http: reqwest::blocking::Client,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    /// Stores `bytes` on slave 1 (held, announced); returns their id.
    fn put(&self, bytes: &[u8]) -> ObjectId {
        let id = ObjectId::of(bytes);
        let resp = self
            .http
            .put(format!("{}/v1/objects/{id}", self.c.slave_url(1)))
            .bearer_auth(TOKEN)
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "PUT {id}: {}", resp.status());
        id
    }

    fn file(&self, name: &str, content: &[u8]) -> Entry {
        file_entry(name, self.put(content), content.len() as u64)
    }

    /// A directory in its one form: paged when it is large.
    fn dir(&self, name: &str, entries: Vec<Entry>) -> Entry {
        let encoded = encode_dir(&DirManifest::new(entries).unwrap()).unwrap();
        for (_, bytes) in &encoded.objects {
            self.put(bytes);
        }
        dir_entry(name, encoded.id)
    }

    /// A directory whose manifest is stored exactly as given, valid or not.
    fn raw_dir(&self, name: &str, entries: Vec<Entry>) -> Entry {
        let m = DirManifest { format: 1, entries };
        dir_entry(name, self.put(&serde_json::to_vec(&m).unwrap()))
    }

    fn root(&self, entries: Vec<Entry>) -> ObjectId {
        self.put(&DirManifest::new(entries).unwrap().encode())
    }

    async fn master(&self) -> MasterGrpc {
        self.c.master_client().await
    }

    fn commit(&self, parent: u64, root: ObjectId) -> Result<u64, tonic::Status> {
        self.rt.block_on(async {
            let req = commit_request(parent, root);
            let record = self.master().await.commit(req).await?.into_inner();
            Ok(record.version)
        })
    }

    fn head(&self) -> u64 {
        self.rt.block_on(async {
            let req = pb::GetVolumeRequest {
                name: VOLUME.into(),
            };
            self.master()
                .await
                .get_volume(req)
                .await
                .unwrap()
                .into_inner()
                .head
        })
    }

    /// Commits `root` on `parent` and expects it refused, naming `path`
    /// and saying `why`, with the head unchanged.
    fn refused(&self, parent: u64, root: ObjectId, path: &str, why: &str) {
        let status = self.commit(parent, root).unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            status.message()
        );
        let msg = status.message();
        assert!(
            msg.starts_with(&format!("invalid tree: {path}: ")) && msg.contains(why),
            "expected {path:?} / {why:?} in {msg:?}"
        );
        assert_eq!(self.head(), parent, "a refused commit changes nothing");
    }
}

fn commit_request(parent: u64, root: ObjectId) -> pb::CommitRequest {
    pb::CommitRequest {
        volume: VOLUME.into(),
        parent,
        root: root.as_bytes().to_vec(),
        message: "m".into(),
        author: "a".into(),
        host: "h".into(),
        ..Default::default()
    }
}

fn file_entry(name: &str, object: ObjectId, size: u64) -> Entry {
    Entry::file(name, object, size)
}

fn dir_entry(name: &str, object: ObjectId) -> Entry {
    Entry::dir(name, object, 1)
}

/// A cluster of one slave with the volume created.
fn fixture() -> Fixture {
    let f = Fixture {
        c: Cluster::new(1),
        http: reqwest::blocking::Client::new(),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    f.rt.block_on(async {
        let req = pb::CreateVolumeRequest {
            name: VOLUME.into(),
            keep: 0,
        };
        f.master().await.create_volume(req).await.unwrap();
    });
    f
}

/// A manifest's bytes from entries serialized one by one (`raw` replaces
/// entry `at`'s bytes), so a test can place one non-canonical entry among
/// canonical ones.
fn manifest_bytes(entries: &[Entry], at: usize, raw: &str) -> Vec<u8> {
    let mut parts: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    parts[at] = raw.to_string();
    format!(r#"{{"format":1,"entries":[{}]}}"#, parts.join(",")).into_bytes()
}

#[test]
fn master_refuses_malformed_trees_and_accepts_a_changed_subtree() {
    let f = fixture();

    // Version 1: docs/a.txt and lib/x.txt.
    let lib = f.dir("lib", vec![f.file("x.txt", b"x\n")]);
    let docs = f.dir("docs", vec![f.file("a.txt", b"a v1\n")]);
    assert_eq!(f.commit(0, f.root(vec![docs, lib.clone()])).unwrap(), 1);

    // Each bad docs/ beside the unchanged lib/.
    let with_docs = |docs: Entry| f.root(vec![docs, lib.clone()]);

    let junk = f.put(b"{not json");
    let not_json = with_docs(dir_entry("docs", junk));
    f.refused(1, not_json, "docs/", "manifest");

    let dot_dot = f.raw_dir("docs", vec![f.file("..", b"up\n")]);
    f.refused(1, with_docs(dot_dot), "docs/", "invalid entry name \"..\"");

    let slash = f.raw_dir("docs", vec![f.file("etc/passwd", b"x\n")]);
    f.refused(1, with_docs(slash), "docs/", "invalid entry name");

    let twice = f.raw_dir(
        "docs",
        vec![f.file("a.txt", b"1\n"), f.file("a.txt", b"2\n")],
    );
    f.refused(1, with_docs(twice), "docs/", "not strictly sorted");

    let nowhere = ObjectId::of(b"never uploaded anywhere");
    let orphan = f.dir(
        "docs",
        vec![f.file("a.txt", b"a v1\n"), file_entry("b.txt", nowhere, 23)],
    );
    f.refused(
        1,
        with_docs(orphan),
        "docs/b.txt",
        &format!("refers to object {nowhere}, which no node holds"),
    );
    let missing_dir = f.root(vec![dir_entry("docs", nowhere), lib.clone()]);
    f.refused(1, missing_dir, "docs/", "which no node holds");

    let chunks = [b"first chunk ".as_slice(), b"second chunk"]
        .iter()
        .map(|c| Chunk {
            object: f.put(c),
            size: c.len() as u64,
        })
        .collect();
    let recipe = f.put(&Recipe::new(chunks).unwrap().encode());
    let big = Entry {
        recipe: true,
        ..file_entry("big.bin", recipe, 1 << 20)
    };
    let lying_size = f.dir("docs", vec![big]);
    f.refused(
        1,
        with_docs(lying_size),
        "docs/big.bin",
        "describes 24 bytes, the entry says 1048576",
    );

    // The root itself, and a call claiming to come from a peer this master
    // does not know: checked all the same.
    f.refused(1, junk, "/", "manifest");
    let status = f.rt.block_on(async {
        let mut req = tonic::Request::new(commit_request(1, not_json));
        req.metadata_mut()
            .insert(PEER_METADATA_KEY, "not-a-peer".parse().unwrap());
        f.master().await.commit(req).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(f.head(), 1);

    // A valid change of one subtree is published; lib/ is not re-read.
    let docs2 = f.dir("docs", vec![f.file("a.txt", b"a v2\n")]);
    assert_eq!(f.commit(1, with_docs(docs2)).unwrap(), 2);
    assert_eq!(f.head(), 2);
    let served = f
        .http
        .get(format!(
            "{}/v1/volumes/{VOLUME}/2/docs/a.txt",
            f.c.slave_url(1)
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(served.as_ref(), b"a v2\n");
}

/// The master decodes only the pages of a changed paged directory that
/// differ from the parent's (issue 16); one bad entry in a page among the
/// 1,000 unchanged entries is still refused, whatever is wrong with it.
#[test]
fn one_bad_entry_in_a_large_changed_directory_is_refused() {
    let f = fixture();
    let content = f.put(b"same bytes\n");
    let files: Vec<Entry> = (0..1000)
        .map(|i| file_entry(&format!("f{i:04}"), content, 11))
        .collect();
    let big = f.dir("big", files.clone());
    assert_eq!(f.commit(0, f.root(vec![big])).unwrap(), 1);

    // The page holding f0500, and a position inside it (its neighbours
    // on both sides are in the same page).
    let (index, pages) = split(&DirManifest::new(files.clone()).unwrap())
        .unwrap()
        .unwrap();
    let spans = page_spans(&index);
    let page = spans.iter().position(|s| s.contains(&500)).unwrap();
    let span = spans[page].clone();
    assert!(span.len() >= 3, "{span:?}");
    let at = span.start + span.len() / 2;
    // The big/ whose page holds `raw` in place of entry `at`.
    let with_page = |bytes: Vec<u8>| {
        let mut bad = index.clone();
        bad.pages[page].manifest = f.put(&bytes);
        f.root(vec![dir_entry("big", f.put(&bad.encode()))])
    };
    let with = |at: usize, raw: &str| {
        with_page(manifest_bytes(&pages[page].entries, at - span.start, raw))
    };
    let json = |e: &Entry| serde_json::to_string(e).unwrap();
    let name = |i: usize| files[i].name.clone();

    let nowhere = ObjectId::of(b"never uploaded anywhere");
    f.refused(
        1,
        with(at, &json(&file_entry(&name(at), nowhere, 3))),
        &format!("big/{}", name(at)),
        "which no node holds",
    );
    let slashed = format!("{}/x", name(at));
    f.refused(
        1,
        with(at, &json(&file_entry(&slashed, content, 11))),
        "big/",
        "invalid entry name",
    );
    f.refused(
        1,
        with(at, &json(&file_entry(&name(at - 1), content, 11))),
        "big/",
        "not strictly sorted",
    );
    f.refused(
        1,
        with(at, &json(&file_entry(&name(at + 1), content, 11))),
        "big/",
        "not strictly sorted",
    );
    let spaced =
        json(&file_entry(&name(at), content, 12)).replacen(r#""size":12"#, r#""size": 12"#, 1);
    f.refused(1, with(at, &spaced), "big/", "canonical");
    // The framing is checked even when every entry is unchanged.
    let mut loose = pages[page].encode();
    loose.push(b'\n');
    f.refused(1, with_page(loose), "big/", "canonical");
    // And the whole form of more than 256 entries is refused.
    let whole = f.put(&DirManifest::new(files.clone()).unwrap().encode());
    f.refused(
        1,
        f.root(vec![dir_entry("big", whole)]),
        "big/",
        "must be paged",
    );

    // One valid change among the 1,000 is published.
    let changed = f.file(&name(at), b"new\n");
    assert_eq!(f.commit(1, with(at, &json(&changed))).unwrap(), 2);
    let served = f
        .http
        .get(format!(
            "{}/v1/volumes/{VOLUME}/2/big/{}",
            f.c.slave_url(1),
            name(at)
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(served.as_ref(), b"new\n");
}
