use std::collections::HashMap;
use std::sync::Mutex;

use elton_proto::{DirManifest, Entry};

use super::*;

/// Objects by id; a read of anything else fails, a read of `stall` never
/// ends. Records what was read.
#[derive(Default)]
struct Fake {
    objects: HashMap<ObjectId, Vec<u8>>,
    stall: Option<ObjectId>,
    reads: Mutex<Vec<ObjectId>>,
}

impl Fake {
    fn put(&mut self, bytes: Vec<u8>) -> ObjectId {
        let id = ObjectId::of(&bytes);
        self.objects.insert(id, bytes);
        id
    }

    fn dir(&mut self, entries: Vec<Entry>) -> ObjectId {
        self.put(DirManifest::new(entries).unwrap().encode())
    }

    async fn read(&self, id: ObjectId) -> Result<Vec<u8>, String> {
        self.reads.lock().unwrap().push(id);
        if self.stall == Some(id) {
            std::future::pending::<()>().await;
        }
        self.objects
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("{id} is not held"))
    }
}

impl PathSource for Fake {
    async fn manifest(&self, id: ObjectId) -> Result<Arc<Vec<u8>>, String> {
        self.read(id).await.map(Arc::new)
    }

    async fn recipe(&self, id: ObjectId, limit: usize) -> Result<Vec<u8>, String> {
        let bytes = self.read(id).await?;
        if bytes.len() > limit {
            return Err(format!("{id} is larger than {limit} bytes"));
        }
        Ok(bytes)
    }
}

/// A chunked file's entry: `object` is its recipe.
fn chunked(name: &str, recipe: ObjectId) -> Entry {
    Entry {
        recipe: true,
        ..Entry::file(name, recipe, 1)
    }
}

/// `/a/b/big` (chunked), `/a/b/small` (whole), `/a/link` (symlink).
struct Tree {
    fake: Fake,
    root: ObjectId,
    a: ObjectId,
    b: ObjectId,
    recipe: ObjectId,
}

fn tree() -> Tree {
    let mut fake = Fake::default();
    let recipe = fake.put(b"a recipe's bytes".to_vec());
    let small = ObjectId::of(b"small file, not read by the walk");
    let b = fake.dir(vec![chunked("big", recipe), Entry::file("small", small, 1)]);
    let a = fake.dir(vec![
        Entry::dir("b", b, 2),
        Entry {
            kind: EntryKind::Symlink,
            object: None,
            target: Some("b/small".into()),
            ..Entry::file("link", small, 7)
        },
    ]);
    let root = fake.dir(vec![Entry::dir("a", a, 2)]);
    Tree {
        fake,
        root,
        a,
        b,
        recipe,
    }
}

fn ids(objects: &[Vec<u8>]) -> Vec<ObjectId> {
    objects.iter().map(|b| ObjectId::of(b)).collect()
}

async fn walk(t: &Tree, path: &str, budget: Budget) -> Vec<ObjectId> {
    let path = VolumePath::parse(path).unwrap();
    ids(&objects_along(&t.fake, t.root, &path, budget).await)
}

#[tokio::test]
async fn phase1_a_chunked_file_brings_every_manifest_on_its_path_and_its_recipe() {
    let t = tree();
    let got = walk(&t, "a/b/big", Budget::standard()).await;
    assert_eq!(got, vec![t.root, t.a, t.b, t.recipe]);
}

#[tokio::test]
async fn phase2_a_whole_file_a_directory_and_the_root_bring_their_manifests_only() {
    let t = tree();
    let manifests = vec![t.root, t.a, t.b];
    assert_eq!(walk(&t, "a/b/small", Budget::standard()).await, manifests);
    assert_eq!(walk(&t, "a/b", Budget::standard()).await, manifests);
    assert_eq!(walk(&t, "", Budget::standard()).await, vec![t.root]);
    assert_eq!(
        walk(&t, "a/link", Budget::standard()).await,
        vec![t.root, t.a],
        "a symlink has nothing to send"
    );
}

#[tokio::test]
async fn phase3_a_missing_name_or_a_file_in_the_middle_stops_the_walk() {
    let t = tree();
    assert_eq!(
        walk(&t, "a/nope/big", Budget::standard()).await,
        vec![t.root, t.a]
    );
    assert_eq!(
        walk(&t, "a/b/big/deeper", Budget::standard()).await,
        vec![t.root, t.a, t.b],
        "a file is not a directory; its recipe is not sent"
    );
}

#[tokio::test]
async fn phase4_an_object_that_cannot_be_read_ends_the_walk_with_what_was_read() {
    let mut t = tree();
    t.fake.objects.remove(&t.b);
    assert_eq!(
        walk(&t, "a/b/big", Budget::standard()).await,
        vec![t.root, t.a]
    );
}

#[tokio::test]
async fn phase5_the_first_object_beyond_the_byte_budget_ends_what_is_sent() {
    let t = tree();
    let root_len = t.fake.objects[&t.root].len();
    let budget = Budget {
        bytes: root_len + 16,
        ..Budget::standard()
    };
    let got = walk(&t, "a/b/big", budget).await;
    assert_eq!(got, vec![t.root], "a did not fit; what follows is not sent");

    // The recipe is read with what is left as its limit: too large, it is
    // refused by the source, not read whole and dropped.
    let manifests: usize = [t.root, t.a, t.b]
        .iter()
        .map(|id| t.fake.objects[id].len())
        .sum();
    let budget = Budget {
        bytes: manifests + 4,
        ..Budget::standard()
    };
    let got = walk(&t, "a/b/big", budget).await;
    assert_eq!(got, vec![t.root, t.a, t.b]);
}

#[tokio::test]
async fn phase6_a_read_past_the_deadline_answers_with_what_was_read() {
    let mut t = tree();
    t.fake.stall = Some(t.b);
    let budget = Budget {
        bytes: ALONG_PATH_BYTES,
        deadline: Instant::now() + Duration::from_millis(50),
    };
    let started = std::time::Instant::now();
    let got = walk(&t, "a/b/big", budget).await;
    assert_eq!(got, vec![t.root, t.a]);
    assert!(started.elapsed() < Duration::from_secs(5));
}
