#![allow(clippy::unwrap_used)]
//! Large files with content-defined chunking, end to end: a 256 MiB file
//! imported on slave 1 is read on slave 2 over HTTP (whole, and a range
//! that fetches only its chunks), edited by one byte through an Eltonfs
//! mount on slave 1 and committed (only the changed chunks are new), and
//! read again on slave 2 over HTTP and through an Eltonfs mount. Reads
//! through a mount fetch the chunks ahead of a sequential reader in the
//! background, and never more.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{Cluster, Mount, metric, wait_until};
use elton_proto::Recipe;
use eltonfs::chunking::MAX_CHUNK;
use eltonfs::fs::readahead::READ_AHEAD_CHUNKS;

const MIB: u64 = 1 << 20;
const BIG: usize = 256 << 20;
/// Most a small read through a mount may fetch besides the recipe: the
/// (at most 2) chunks it touches, and the chunks read-ahead makes local
/// after them if the kernel happened to split it into READs that look
/// sequential (a lone READ in the middle of a file does not trigger
/// read-ahead, so usually it is just the touched chunks).
const SMALL_READ_MOST: u64 = (2 + READ_AHEAD_CHUNKS as u64) * MAX_CHUNK as u64;
/// Large enough that a quarter of it is more than [`SMALL_READ_MOST`], so
/// "a small read moves less than a quarter of the file" is a claim about
/// the design, not about how large the chunks near the read happen to be.
const OTHER: usize = 176 << 20;
const _: () = assert!(OTHER as u64 / 4 > SMALL_READ_MOST + MIB);

/// Fast deterministic pseudo-random bytes (xorshift64*): the shared
/// BLAKE3-based generator is too slow for 256 MiB in a debug build.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    seed |= 1;
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
}

/// BLAKE3 of a response body, streamed (no 256 MiB buffer).
fn body_hash(resp: reqwest::blocking::Response) -> (blake3::Hash, u64) {
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut h = blake3::Hasher::new();
    let mut r = resp;
    let n = std::io::copy(&mut r, &mut h).unwrap();
    (h.finalize(), n)
}

fn file_hash(path: &Path) -> (blake3::Hash, u64) {
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut fs::File::open(path).unwrap(), &mut h).unwrap();
    (h.finalize(), n)
}

fn fetched(c: &Cluster, slave: usize) -> u64 {
    metric(&c.slave_url(slave), "fetched_bytes_total")
}

/// The recipe a volume file's ETag names.
fn recipe_of(c: &Cluster, slave: usize, url_tail: &str) -> (String, Recipe) {
    let s = c.slave_url(slave);
    let head = http()
        .head(format!("{s}/v1/volumes/{url_tail}"))
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    let etag = head.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let bytes = http()
        .get(format!("{s}/v1/objects/{etag}"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    (etag, Recipe::decode(&bytes).unwrap())
}

#[test]
fn large_files_move_only_the_chunks_that_are_read_or_changed() {
    // No backup copies: the test counts what slave 2 fetches on demand.
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut big = noise(BIG, 1);
    let other = noise(OTHER, 2);
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::write(src.join("other.bin"), &other).unwrap();
    fs::write(src.join("small.txt"), b"small\n").unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "data"]);
    let s2 = c.slave_url(2);

    // The file's entry names a recipe whose chunks are about 1 MiB.
    let (etag1, recipe1) = recipe_of(&c, 1, "data/1/big.bin");
    assert_eq!(recipe1.size, BIG as u64);
    let n = recipe1.chunks.len();
    assert!((64..=1024).contains(&n), "{n} chunks");
    let listing: serde_json::Value = http()
        .get(format!("{s2}/v1/volumes/data/1/"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let small = &listing["entries"][2];
    assert_eq!(small["name"], "small.txt");
    assert!(small.get("recipe").is_none(), "small files stay objects");

    // A range in the middle, read on slave 2: only the touched chunks move.
    let head = http()
        .head(format!("{s2}/v1/volumes/data/1/big.bin"))
        .send()
        .unwrap();
    assert_eq!(head.headers()["etag"], format!("\"{etag1}\"").as_str());
    assert_eq!(head.headers()["content-length"], BIG.to_string().as_str());
    let (start, len) = (100 * MIB + 12_345, 3 * MIB);
    let touched: u64 = recipe1
        .pieces(start, len)
        .iter()
        .map(|p| p.chunk.size)
        .sum();
    let before = fetched(&c, 2);
    let part = http()
        .get(format!("{s2}/v1/volumes/data/1/big.bin"))
        .header("Range", format!("bytes={start}-{}", start + len - 1))
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes {start}-{}/{BIG}", start + len - 1).as_str()
    );
    let bytes = part.bytes().unwrap();
    assert_eq!(bytes.as_ref(), &big[start as usize..(start + len) as usize]);
    assert_eq!(
        fetched(&c, 2) - before,
        touched,
        "exactly the chunks the range touches"
    );
    assert!(touched < len + 2 * 4 * MIB);

    // ETag, 304, whole file.
    let not_modified = http()
        .get(format!("{s2}/v1/volumes/data/1/big.bin"))
        .header("If-None-Match", format!("\"{etag1}\""))
        .send()
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    let t = std::time::Instant::now();
    let (h, len_read) = body_hash(
        http()
            .get(format!("{s2}/v1/volumes/data/1/big.bin"))
            .send()
            .unwrap(),
    );
    println!(
        "cold HTTP read of {} MiB on slave 2 (chunks fetched through the master): {:?}",
        BIG as u64 / MIB,
        t.elapsed()
    );
    assert_eq!(len_read, BIG as u64);
    assert_eq!(h, blake3::hash(&big), "byte-identical on slave 2");
    let v1_fetched = fetched(&c, 2);
    assert!(
        v1_fetched <= BIG as u64 + MIB,
        "each chunk crossed once: {v1_fetched}"
    );
    let cat = c.cli(2, &["cat", "data@1:big.bin"]);
    assert!(cat.status.success());
    assert_eq!(blake3::hash(&cat.stdout), blake3::hash(&big), "elton cat");

    // Edit one byte in the middle through a mount on slave 1 and commit.
    let mid = BIG / 2 + 777;
    {
        let m = Mount::new(
            &c,
            1,
            "data",
            &c.dir.path().join("mnt1"),
            &c.dir.path().join("state1"),
            &[],
        );
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        big[mid] ^= 0x5a;
        f.write_all_at(&big[mid..mid + 1], mid as u64).unwrap();
        drop(f);
        let out = m.elton(&["commit", m.mountpoint.to_str().unwrap(), "-m", "one byte"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("committed data@2"));
        // The mount now shows the new version, still the full bytes.
        assert_eq!(file_hash(&m.path("big.bin")).0, blake3::hash(&big));
    }
    let (etag2, recipe2) = recipe_of(&c, 1, "data/2/big.bin");
    assert_ne!(etag1, etag2);
    let old: std::collections::HashSet<_> = recipe1.chunks.iter().map(|c| c.object).collect();
    let new_chunks: Vec<_> = recipe2
        .chunks
        .iter()
        .filter(|c| !old.contains(&c.object))
        .collect();
    assert!(
        (1..=2).contains(&new_chunks.len()),
        "{} new chunks",
        new_chunks.len()
    );

    // Slave 2 reads version 2: only the changed chunks (and the recipe and
    // the root manifest) cross.
    let before = fetched(&c, 2);
    let (h, _) = body_hash(
        http()
            .get(format!("{s2}/v1/volumes/data/2/big.bin"))
            .send()
            .unwrap(),
    );
    assert_eq!(h, blake3::hash(&big), "version 2 byte-identical");
    let moved = fetched(&c, 2) - before;
    assert!(
        moved <= 4 * MIB,
        "slave 2 fetched {moved} bytes for a 1-byte edit"
    );
    println!(
        "1-byte edit of a {} MiB file: slave 2 fetched {moved} bytes ({} new chunks of {})",
        BIG as u64 / MIB,
        new_chunks.len(),
        recipe2.chunks.len()
    );

    // Through an Eltonfs mount on slave 2.
    let state2 = c.dir.path().join("state2");
    let m2 = Mount::new(&c, 2, "data", &c.dir.path().join("mnt2"), &state2, &[]);
    assert_eq!(fs::metadata(m2.path("big.bin")).unwrap().len(), BIG as u64);
    assert_eq!(
        file_hash(&m2.path("big.bin")).0,
        blake3::hash(&big),
        "FUSE read of a complete chunked file"
    );
    assert!(
        state2.join("assembled").join(&etag2).is_file(),
        "all chunks local: assembled for passthrough"
    );

    // other.bin was never read on slave 2: stat fetches nothing, a read in
    // the middle fetches only its chunks (served by the daemon), a full
    // read completes it, and a later open uses the assembled copy.
    let (other_etag, other_recipe) = recipe_of(&c, 1, "data/2/other.bin");
    let before = fetched(&c, 2);
    assert_eq!(
        fs::metadata(m2.path("other.bin")).unwrap().len(),
        OTHER as u64
    );
    assert_eq!(fetched(&c, 2), before, "stat fetches nothing");
    let f = fs::File::open(m2.path("other.bin")).unwrap();
    let before = fetched(&c, 2);
    let (start, len) = (20 * MIB + 4_321, 64 << 10);
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, start).unwrap();
    assert_eq!(buf, &other[start as usize..(start + len) as usize]);
    let moved = fetched(&c, 2) - before;
    let recipe_bytes = other_recipe.encode().len() as u64;
    assert!(
        moved <= SMALL_READ_MOST + recipe_bytes && moved < OTHER as u64 / 4,
        "a 64 KiB read fetched {moved} bytes"
    );
    assert!(!state2.join("assembled").join(&other_etag).exists());
    let mut all = Vec::new();
    let t = std::time::Instant::now();
    (&f).read_to_end(&mut all).unwrap();
    println!(
        "cold FUSE read of {} MiB served by the daemon: {:?}",
        OTHER as u64 / MIB,
        t.elapsed()
    );
    assert_eq!(
        blake3::hash(&all),
        blake3::hash(&other),
        "daemon-served read"
    );
    // Every chunk is local now, but this inode is served by the daemon: a
    // second open must be too (the kernel refuses to mix it with passthrough).
    let g = fs::File::open(m2.path("other.bin")).unwrap();
    let mut tail = vec![0u8; 1000];
    g.read_exact_at(&mut tail, OTHER as u64 - 1000).unwrap();
    assert_eq!(tail, &other[OTHER - 1000..]);
    assert!(!state2.join("assembled").join(&other_etag).exists());
    drop(g);
    drop(f);
    // The kernel sends RELEASE after close returns: until the daemon has
    // seen both, new opens are still served by it, so the assembled copy
    // appears at the first open after that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert_eq!(file_hash(&m2.path("other.bin")).0, blake3::hash(&other));
        if state2.join("assembled").join(&other_etag).is_file() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no assembled copy after every chunk was read"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let total = fetched(&c, 2);
    assert!(total <= (BIG + OTHER) as u64 + 5 * MIB, "{total}");
    drop(m2);
}

/// Whether slave `slave` stores object `id` (hex).
fn stored(c: &Cluster, slave: usize, id: &str) -> bool {
    c.slave_dir(slave)
        .join("objects")
        .join(&id[..2])
        .join(&id[2..])
        .is_file()
}

#[test]
fn sequential_fuse_reads_fetch_the_next_chunks_in_the_background() {
    const K: usize = READ_AHEAD_CHUNKS;
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = noise(32 << 20, 4);
    fs::write(src.join("f.bin"), &data).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "ra"]);
    let (_, recipe) = recipe_of(&c, 1, "ra/1/f.bin");
    let n = recipe.chunks.len();
    let starts: Vec<u64> = recipe
        .chunks
        .iter()
        .scan(0, |at, ch| {
            let s = *at;
            *at += ch.size;
            Some(s)
        })
        .collect();
    let chunk_at = |offset: u64| starts.partition_point(|&s| s <= offset) - 1;
    let local = |i: usize| stored(&c, 2, &recipe.chunks[i].object.to_hex());
    assert!((0..n).all(|i| !local(i)), "cold on slave 2");

    let m = Mount::new(
        &c,
        2,
        "ra",
        &c.dir.path().join("mnt"),
        &c.dir.path().join("state"),
        &[],
    );
    let f = fs::File::open(m.path("f.bin")).unwrap();
    // Read the first two chunks sequentially, 128 KiB at a time.
    let upto = starts[2];
    let mut buf = vec![0u8; 128 << 10];
    let mut at = 0;
    while at < upto {
        let len = buf.len().min((upto - at) as usize);
        f.read_exact_at(&mut buf[..len], at).unwrap();
        assert_eq!(&buf[..len], &data[at as usize..at as usize + len]);
        at += len as u64;
    }
    // The K chunks after the read position become local in the
    // background, with no further read.
    wait_until(
        "the chunks after the read position",
        Duration::from_secs(60),
        || (2..(2 + K).min(n)).all(local),
    );
    // And no more: the kernel's own read-ahead may have sent READs up to
    // 1 MiB past what was read, but nothing K chunks past those is fetched.
    let beyond = chunk_at(upto + MIB) + K + 1;
    assert!(beyond < n, "{n} chunks: the file is too small for the test");
    assert!(
        (beyond..n).all(|i| !local(i)),
        "read-ahead went further than {K} chunks"
    );

    // Random reads return the right bytes: inside the fetched chunks,
    // across the edge of them, in cold chunks, at the end of the file.
    let len = data.len() as u64;
    for (start, size) in [
        (starts[5] + 1_000, 300_000),
        (starts[beyond] - 5_000, 10_000),
        (17 * MIB + 3, 1),
        (starts[n - 2] + 7, 2 * MIB),
        (len - 100_000, 100_000),
    ] {
        let size = size.min(len - start) as usize;
        let mut got = vec![0u8; size];
        f.read_exact_at(&mut got, start).unwrap();
        assert!(
            got == data[start as usize..start as usize + size],
            "{size} bytes at {start}"
        );
    }
    let mut all = Vec::new();
    (&f).read_to_end(&mut all).unwrap();
    assert!(all == data, "whole file through the mount");
    drop(f);
    drop(m);
}

fn put_object(c: &Cluster, bytes: &[u8]) -> String {
    let id = blake3::hash(bytes).to_hex().to_string();
    let r = http()
        .put(format!("{}/v1/objects/{id}", c.slave_url(1)))
        .bearer_auth(common::TOKEN)
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    id
}

/// Commits a root holding one file entry named `name` on slave 1; returns
/// (status, body).
fn commit_entry(c: &Cluster, format: u32, object: &str, size: u64, recipe: bool) -> (u16, String) {
    let flag = if recipe { r#","recipe":true"# } else { "" };
    let manifest = format!(
        r#"{{"format":{format},"entries":[{{"name":"f","type":"file","mode":420,"uid":0,"gid":0,"size":{size},"mtime":0,"object":"{object}"{flag}}}]}}"#
    );
    let root = put_object(c, manifest.as_bytes());
    let r = http()
        .post(format!("{}/v1/volumes/d/versions", c.slave_url(1)))
        .bearer_auth(common::TOKEN)
        .json(&serde_json::json!({"parent": 1, "root": root}))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn missing_chunks_and_bad_recipes_are_errors_never_short_reads() {
    // No backup copies: the test counts what slave 2 fetches on demand.
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    let src = c.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = noise(12 << 20, 3);
    fs::write(src.join("big.bin"), &data).unwrap();
    c.ok(1, &["import", "--create", src.to_str().unwrap(), "d"]);
    let s2 = c.slave_url(2);
    let (etag, recipe) = recipe_of(&c, 1, "d/1/big.bin");
    let good = recipe.encode();

    // Bad recipes are refused at commit, with a clear error; nothing is published.
    let text = String::from_utf8(good.clone()).unwrap();
    let size = recipe.size;
    let lying = text.replacen(
        &format!(r#""size":{size}"#),
        &format!(r#""size":{}"#, size + 1),
        1,
    );
    let lying_id = put_object(&c, lying.as_bytes());
    let (status, body) = commit_entry(&c, 2, &lying_id, size + 1, true);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("malformed recipe") && body.contains("add up"),
        "{body}"
    );
    let (status, body) = commit_entry(&c, 2, &etag, size - 1, true);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("describes"), "{body}");
    let (status, body) = commit_entry(&c, 1, &etag, size, true);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed manifest"), "{body}");
    assert_eq!(c.ok(1, &["log", "d", "--json"]).lines().count(), 1);

    // Lose a chunk in the middle (slave 1 held the only copy).
    let k = recipe.chunks.len() / 2;
    assert!(
        k <= READ_AHEAD_CHUNKS,
        "read-ahead from the start reaches it"
    );
    let lost = recipe.chunks[k].object.to_hex().to_string();
    fs::remove_file(
        c.slave_dir(1)
            .join("objects")
            .join(&lost[..2])
            .join(&lost[2..]),
    )
    .unwrap();
    assert!(!stored(&c, 2, &lost));
    let lost_at: u64 = recipe.chunks[..k].iter().map(|c| c.size).sum();
    let url = format!("{s2}/v1/volumes/d/1/big.bin");

    // A range that avoids it still works: only touched chunks are needed.
    let r = http()
        .get(&url)
        .header("Range", "bytes=0-99")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..100]);
    // A range inside it is an error status.
    let r = http()
        .get(&url)
        .header("Range", format!("bytes={lost_at}-{}", lost_at + 9))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "no node holds the chunk");
    // The whole file: the status is sent before the lost chunk is reached,
    // so the body must end early and the client must see that.
    let r = http().get(&url).send().unwrap();
    assert_eq!(r.status(), 200, "the first chunk is there");
    assert!(r.bytes().is_err(), "a cut body was read as complete");
    // The CLI reports an error rather than printing a short file.
    let out = c.cli(2, &["cat", "d@1:big.bin"]);
    assert!(
        !out.status.success(),
        "cat succeeded with {} bytes",
        out.stdout.len()
    );
    assert!((out.stdout.len() as u64) < size);

    // Through a mount on slave 2: read-ahead from the start of the file
    // asks for the lost chunk too, and only logs the failure; the reads
    // before it succeed, and a read of it is an error, not a short read.
    // (The kernel reads whole pages, or larger folios, so the bytes just
    // before the lost chunk share a page with it: stay 2 MiB clear.)
    let m = Mount::new(
        &c,
        2,
        "d",
        &c.dir.path().join("mnt"),
        &c.dir.path().join("state"),
        &[],
    );
    let f = fs::File::open(m.path("big.bin")).unwrap();
    let clear = lost_at.checked_sub(2 * MIB).unwrap() as usize;
    let mut before = vec![0u8; clear];
    f.read_exact_at(&mut before, 0).unwrap();
    assert!(before == data[..clear]);
    let mut b = [0u8; 10];
    let e = f.read_exact_at(&mut b, lost_at).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let mut all = Vec::new();
    assert!((&f).read_to_end(&mut all).is_err());
    drop(f);
    drop(m);
}

/// Objects in slave `i`'s store.
fn stored_objects(c: &Cluster, i: usize) -> usize {
    fs::read_dir(c.slave_dir(i).join("objects"))
        .unwrap()
        .map(|shard| fs::read_dir(shard.unwrap().path()).unwrap().count())
        .sum()
}

#[test]
fn http_upload_of_a_large_file_is_chunked() {
    let c = Cluster::with_args(2, &["--replication", "1"], &[]);
    c.ok(1, &["volume", "create", "up"]);
    let put = |data: &[u8]| {
        let r = http()
            .put(format!("{}/v1/volumes/up/dir/big.bin", c.slave_url(1)))
            .bearer_auth(common::TOKEN)
            .body(data.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    };
    const SIZE: usize = 12 << 20;
    let mut data = noise(SIZE, 11);
    put(&data);

    // Stored as a recipe of chunks: the ETag names the recipe, and the
    // whole file is never an object of its own.
    let (_, recipe) = recipe_of(&c, 1, "up/1/dir/big.bin");
    assert_eq!(recipe.size, SIZE as u64);
    assert!(recipe.chunks.len() >= 3, "{} chunks", recipe.chunks.len());
    assert!(!stored(&c, 1, &elton_proto::ObjectId::of(&data).to_hex()));
    let got = http()
        .get(format!("{}/v1/volumes/up/1/dir/big.bin", c.slave_url(1)))
        .send()
        .unwrap();
    assert_eq!(body_hash(got), (blake3::hash(&data), SIZE as u64));

    // A range read on the other slave fetches only the chunks it touches.
    let before = fetched(&c, 2);
    let r = http()
        .get(format!("{}/v1/volumes/up/1/dir/big.bin", c.slave_url(2)))
        .header("Range", "bytes=6291456-6356991")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap(), &data[6 << 20..(6 << 20) + (64 << 10)]);
    let moved = fetched(&c, 2) - before;
    let recipe_bytes = recipe.encode().len() as u64;
    assert!(
        moved <= 2 * 4 * MIB + recipe_bytes && moved < SIZE as u64 / 2,
        "a 64 KiB range moved {moved} bytes"
    );

    // A one-byte change uploaded again adds its chunk or two, a recipe and
    // the manifests on the way, nothing else.
    let objects = stored_objects(&c, 1);
    data[SIZE / 2] ^= 0xff;
    put(&data);
    let added = stored_objects(&c, 1) - objects;
    assert!((2..=5).contains(&added), "{added} new objects");
    let got = http()
        .get(format!("{}/v1/volumes/up/2/dir/big.bin", c.slave_url(2)))
        .send()
        .unwrap();
    assert_eq!(body_hash(got), (blake3::hash(&data), SIZE as u64));

    // A mount whose assembled copies may not exceed 1 MiB never assembles
    // this file: every open stays daemon-served, and reads are right.
    let state = c.dir.path().join("state-up");
    let m = Mount::new(
        &c,
        2,
        "up@2",
        &c.dir.path().join("mnt-up"),
        &state,
        &["--assembled-max-bytes", "1048576"],
    );
    for _ in 0..3 {
        assert_eq!(file_hash(&m.path("dir/big.bin")).0, blake3::hash(&data));
        // Past the kernel's asynchronous RELEASE, so that the next open
        // would assemble if the bound allowed it.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let assembled = fs::read_dir(state.join("assembled")).map_or(0, |d| d.count());
    assert_eq!(assembled, 0, "a file above the bound was assembled");
    drop(m);
}
