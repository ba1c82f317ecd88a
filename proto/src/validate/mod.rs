//! The one check a tree passes before it is published, shared by the
//! slave (before it asks for a commit) and the master (before it accepts
//! one): a master believes no node by default, so it cannot rely on the
//! slave having checked.
//!
//! A tree is accepted when every manifest and recipe it adds decodes in
//! canonical form, every chunked file's recipe describes the size its entry
//! records, and every object it adds (file contents, recipes, chunks, child
//! manifests) is held by some node.
//!
//! Only what differs from the parent's tree is visited, and within a
//! changed directory only the entries that differ from the parent's
//! manifest of the same directory are decoded ([`crate::manifest_diff`]):
//! an entry found byte for byte in it was checked when the parent was
//! published. An entry whose object (and, for a chunked file, recipe and
//! size) appears in a parent entry the walk has decoded (one replaced or
//! removed) was checked then too, so a commit costs O(changed entries),
//! plus a syntax scan of the changed directories' manifests, not O(tree).
//! Directories are paired with the parent's by name; a directory with no
//! counterpart (new, or moved) is visited after all paired ones, when every
//! parent manifest on the changed paths has been read: a subtree moved out
//! of a directory that still exists is then recognised and skipped.
//!
//! Where objects come from is the caller's business: [`TreeSource`].

use std::future::Future;
use std::sync::Arc;

use crate::error::{FetchError, TreeError};
use crate::manifest_diff::{self, DirDiff};
use crate::{DirManifest, Entry, EntryKind, ObjectId, Recipe, paged};

mod paged_dir;

/// The walk's sets hold tens of thousands of claims for a commit that
/// changes 100 large directories (every entry of the parent's pages it
/// compares): SipHash was a visible share of the check. Seeded per set.
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Where [`validate_tree`] reads manifests and recipes and learns which
/// objects are held.
pub trait TreeSource: Sync {
    type Error: Send;

    /// The bytes of manifest `id`, verified against `id` but not decoded:
    /// the walk decodes only what differs from the parent's manifest
    /// ([`crate::manifest_diff`]). `Ok` implies some node holds it.
    fn manifest(
        &self,
        id: ObjectId,
    ) -> impl Future<Output = Result<Arc<Vec<u8>>, FetchError<Self::Error>>> + Send;

    /// The recipe `id`, from bytes verified against `id` and decoded with
    /// [`Recipe::decode`]. `Ok` implies some node holds it.
    fn recipe(
        &self,
        id: ObjectId,
    ) -> impl Future<Output = Result<Arc<Recipe>, FetchError<Self::Error>>> + Send;

    /// Whether some node holds each of `ids`, in the same order. Asked once
    /// per directory (and per recipe's chunk list), not once per object.
    fn held(&self, ids: &[ObjectId])
    -> impl Future<Output = Result<Vec<bool>, Self::Error>> + Send;

    /// Page `id` of a paged directory, decoded: in canonical form when
    /// `canonical` (a page the tree adds), else as published
    /// ([`DirManifest::decode_published`], a page of the parent's tree or
    /// one the tree keeps). `Ok` implies some node holds it.
    ///
    /// Decoding is most of a commit's check: a commit that changes one
    /// entry in each of 100 large directories decodes about 300 pages of
    /// up to 256 entries. A source that keeps decoded pages between walks
    /// (the pages one commit adds are the parent's pages of the next)
    /// overrides this; the default decodes [`Self::manifest`]'s bytes.
    fn page(
        &self,
        id: ObjectId,
        canonical: bool,
    ) -> impl Future<Output = Result<Arc<DirManifest>, FetchError<Self::Error>>> + Send {
        async move {
            let bytes = self.manifest(id).await?;
            let decoded = if canonical {
                DirManifest::decode(&bytes)
            } else {
                DirManifest::decode_published(&bytes)
            };
            decoded.map(Arc::new).map_err(FetchError::Malformed)
        }
    }

    /// A hint: the walk will soon ask for these manifests. A source whose
    /// reads are round trips (a master reading from holders) reads them
    /// concurrently and keeps them; errors are left for the walk's own
    /// request to report. The default does nothing.
    fn prefetch(&self, ids: &[ObjectId]) -> impl Future<Output = ()> + Send {
        let _ = ids;
        async {}
    }

    /// A hint after [`Self::prefetch`]: the walk will soon ask for these
    /// [pages](Self::page). A source that keeps decoded pages may decode
    /// them now, several at once, and a new page from the base named with
    /// it ([`crate::manifest_delta`]); the default does nothing.
    fn decode_ahead(&self, pages: &[PageAhead]) -> impl Future<Output = ()> + Send {
        let _ = pages;
        async {}
    }
}

/// A page the walk will ask for ([`TreeSource::decode_ahead`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageAhead {
    pub id: ObjectId,
    /// Checked for canonical form: a page the tree adds.
    pub canonical: bool,
    /// For a new page: the parent's page in the same place, which it
    /// likely differs from by a few entries.
    pub base: Option<ObjectId>,
}

/// What an entry asks of the tree. Two entries with the same key need the
/// same checks, so a key seen in a parent manifest (or already checked by
/// this walk) is not checked again. The recipe flag and a chunked file's
/// size are part of the key: the same object as plain content, or the same
/// recipe under another size, is a new claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Claim {
    Dir(ObjectId),
    File(ObjectId),
    Chunked { recipe: ObjectId, size: u64 },
}

fn claim(e: &Entry) -> Option<Claim> {
    let object = e.object?;
    Some(match e.kind {
        EntryKind::Dir => Claim::Dir(object),
        EntryKind::File if e.recipe => Claim::Chunked {
            recipe: object,
            size: e.size,
        },
        EntryKind::File => Claim::File(object),
        EntryKind::Symlink => return None,
    })
}

/// A directory still to visit, with its parent-tree counterpart.
struct Dir {
    id: ObjectId,
    old: Option<ObjectId>,
    /// "" for the root, else ending in `/`.
    path: String,
}

/// Checks the tree under `root` against its parent's tree (`parent_root`,
/// `None` for a first version). Returns every object the tree adds, each
/// once (a slave announces the ones it stores), or why the tree must not be
/// published, naming the first bad entry found.
pub async fn validate_tree<S: TreeSource>(
    source: &S,
    root: ObjectId,
    parent_root: Option<ObjectId>,
) -> Result<Vec<ObjectId>, TreeError<S::Error>> {
    if parent_root == Some(root) {
        return Ok(Vec::new());
    }
    let mut walk = Walk {
        source,
        published: HashSet::default(),
        claimed: HashSet::from_iter([Claim::Dir(root)]),
        held: HashSet::default(),
        added: Vec::new(),
        paired: vec![Dir {
            id: root,
            old: parent_root,
            path: String::new(),
        }],
        unpaired: Vec::new(),
    };
    while let Some(dir) = walk.paired.pop().or_else(|| walk.unpaired.pop()) {
        walk.visit(dir).await?;
    }
    Ok(walk.added)
}

struct Walk<'a, S> {
    source: &'a S,
    /// Claims found in parent manifests: checked when the parent was
    /// published.
    published: HashSet<Claim>,
    /// Claims this walk has checked or queued.
    claimed: HashSet<Claim>,
    /// Objects known held, each also in `added`.
    held: HashSet<ObjectId>,
    added: Vec<ObjectId>,
    paired: Vec<Dir>,
    unpaired: Vec<Dir>,
}

/// The first problem of a directory, by entry index.
struct Problem {
    entry: usize,
    reason: String,
}

fn invalid<E>(path: &str, reason: String) -> TreeError<E> {
    let path = if path.is_empty() { "/" } else { path };
    // Names may hold control characters; keep them out of logs and
    // terminals that show the message.
    let mut shown = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    TreeError::Invalid {
        path: shown,
        reason,
    }
}

fn not_held(id: ObjectId) -> String {
    format!("refers to object {id}, which no node holds")
}

impl<S: TreeSource> Walk<'_, S> {
    fn note_held(&mut self, id: ObjectId) {
        if self.held.insert(id) {
            self.added.push(id);
        }
    }

    async fn visit(&mut self, dir: Dir) -> Result<(), TreeError<S::Error>> {
        // A directory queued unpaired may have turned up in a parent
        // manifest read since (a move).
        if self.published.contains(&Claim::Dir(dir.id)) {
            return Ok(());
        }
        let bytes = match self.source.manifest(dir.id).await {
            Ok(m) => m,
            Err(FetchError::NotHeld) => return Err(invalid(&dir.path, not_held(dir.id))),
            Err(FetchError::Malformed(e)) => {
                return Err(invalid(&dir.path, format!("manifest {}: {e}", dir.id)));
            }
            Err(FetchError::Failed(e)) => return Err(TreeError::Source(e)),
        };
        self.note_held(dir.id);
        let old = match dir.old {
            Some(id) => match self.source.manifest(id).await {
                Ok(m) => Some(m),
                // The parent's copy is gone or unreadable: check this
                // subtree in full rather than trust nothing or fail.
                Err(FetchError::NotHeld | FetchError::Malformed(_)) => None,
                Err(FetchError::Failed(e)) => return Err(TreeError::Source(e)),
            },
            None => None,
        };
        let paged = |m: &[u8]| m.starts_with(paged::INDEX_PREFIX);
        let diff: DirDiff = if paged(&bytes) || old.as_deref().is_some_and(|o| paged(o)) {
            self.paged_diff(&dir, &bytes, old.as_deref().map(Vec::as_slice))
                .await?
        } else {
            match manifest_diff::diff(&bytes, old.as_deref().map(Vec::as_slice)) {
                Ok(_) if manifest_diff::entry_count(&bytes) > paged::PAGED_MIN => {
                    return Err(invalid(
                        &dir.path,
                        format!(
                            "manifest {}: a directory of more than {} entries must be paged",
                            dir.id,
                            paged::PAGED_MIN
                        ),
                    ));
                }
                Ok(d) => d,
                Err(e) => return Err(invalid(&dir.path, format!("manifest {}: {e}", dir.id))),
            }
        };
        // Entries of the parent's manifest that are also in the new one
        // were not decoded and add no claims: a copy of one elsewhere is
        // checked again, which costs a lookup, not a wrong answer.
        self.published
            .extend(diff.replaced.iter().filter_map(claim));

        let mut problem = None;
        // (entry index, object) to ask about, in entry order.
        let mut wanted: Vec<(usize, ObjectId)> = Vec::new();
        let mut children = Vec::new();
        for (i, e) in diff.changed.iter().enumerate() {
            let Some(c) = claim(e) else { continue };
            if self.published.contains(&c) || !self.claimed.insert(c) {
                continue;
            }
            match c {
                Claim::Dir(id) => {
                    let old_child = diff
                        .replaced(&e.name)
                        .filter(|b| b.kind == EntryKind::Dir)
                        .and_then(|b| b.object);
                    children.push(Dir {
                        id,
                        old: old_child,
                        path: format!("{}{}/", dir.path, e.name),
                    });
                }
                Claim::File(id) => wanted.push((i, id)),
                Claim::Chunked { recipe, size } => match self.source.recipe(recipe).await {
                    Ok(r) if r.size != size => {
                        problem = Some(Problem {
                            entry: i,
                            reason: format!(
                                "recipe {recipe} describes {} bytes, the entry says {size}",
                                r.size
                            ),
                        });
                    }
                    Ok(r) => {
                        self.note_held(recipe);
                        wanted.extend(r.chunks.iter().map(|c| (i, c.object)));
                    }
                    Err(FetchError::NotHeld) => {
                        problem = Some(Problem {
                            entry: i,
                            reason: not_held(recipe),
                        });
                    }
                    Err(FetchError::Malformed(e)) => {
                        problem = Some(Problem {
                            entry: i,
                            reason: format!("recipe {recipe}: {e}"),
                        });
                    }
                    Err(FetchError::Failed(e)) => return Err(TreeError::Source(e)),
                },
            }
            // Later entries cannot hold an earlier problem; only the
            // objects wanted so far still need asking about.
            if problem.is_some() {
                break;
            }
        }

        let mut ask: Vec<ObjectId> = wanted
            .iter()
            .map(|&(_, id)| id)
            .filter(|id| !self.held.contains(id))
            .collect();
        ask.sort_unstable();
        ask.dedup();
        if !ask.is_empty() {
            let answers = self.source.held(&ask).await.map_err(TreeError::Source)?;
            // A short answer leaves the rest unconfirmed: not held.
            let mut missing: HashSet<ObjectId> = ask.iter().copied().collect();
            for (&id, _) in ask.iter().zip(&answers).filter(|(_, held)| **held) {
                missing.remove(&id);
                self.note_held(id);
            }
            if let Some(&(entry, id)) = wanted.iter().find(|(_, id)| missing.contains(id))
                && problem.as_ref().is_none_or(|p| entry <= p.entry)
            {
                problem = Some(Problem {
                    entry,
                    reason: not_held(id),
                });
            }
        }
        if let Some(p) = problem {
            let name = diff.changed.get(p.entry).map_or("", |e| e.name.as_str());
            return Err(invalid(&format!("{}{name}", dir.path), p.reason));
        }
        // A directory of new subdirectories (a first import, a new tree)
        // would otherwise cost one round trip per manifest, one after the
        // other.
        if children.len() > 1 {
            let ids: Vec<ObjectId> = children
                .iter()
                .flat_map(|c| std::iter::once(c.id).chain(c.old))
                .collect();
            self.source.prefetch(&ids).await;
            // Their pages too, for the paged ones: read one directory at a
            // time, a commit touching 100 large directories would wait
            // for 100 rounds of page reads.
            let pages = self.pages_to_compare(&children).await;
            self.read_ahead(&pages).await;
        }
        // Reversed onto the stacks, so directories are visited in name order.
        for child in children.into_iter().rev() {
            if child.old.is_some() {
                self.paired.push(child);
            } else {
                self.unpaired.push(child);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::Chunk;

    /// Objects in memory; every stored object counts as held.
    #[derive(Default)]
    struct Mem {
        objects: HashMap<ObjectId, Vec<u8>>,
        manifests_read: Mutex<Vec<ObjectId>>,
        asked_held: Mutex<Vec<ObjectId>>,
        prefetched: Mutex<Vec<Vec<ObjectId>>>,
    }

    impl Mem {
        fn put(&mut self, bytes: &[u8]) -> ObjectId {
            let id = ObjectId::of(bytes);
            self.objects.insert(id, bytes.to_vec());
            id
        }

        /// Stores a directory in its one form (paged when large).
        fn dir(&mut self, entries: Vec<Entry>) -> ObjectId {
            let m = DirManifest::new(entries).unwrap();
            let encoded = crate::listing::encode_dir(&m).unwrap();
            for (_, bytes) in &encoded.objects {
                self.put(bytes);
            }
            encoded.id
        }

        /// Stores a manifest exactly as given, valid or not.
        fn raw_dir(&mut self, entries: Vec<Entry>) -> ObjectId {
            let m = DirManifest { format: 1, entries };
            self.put(&serde_json::to_vec(&m).unwrap())
        }

        fn file(&mut self, name: &str, content: &[u8]) -> Entry {
            file_entry(name, self.put(content), content.len() as u64)
        }

        fn subdir(&mut self, name: &str, entries: Vec<Entry>) -> Entry {
            dir_entry(name, self.dir(entries))
        }

        fn chunked(&mut self, name: &str, chunks: &[&[u8]], size: u64) -> Entry {
            let chunks = chunks
                .iter()
                .map(|c| Chunk {
                    object: self.put(c),
                    size: c.len() as u64,
                })
                .collect();
            let recipe = self.put(&Recipe::new(chunks).unwrap().encode());
            Entry {
                recipe: true,
                ..file_entry(name, recipe, size)
            }
        }

        fn reads(&self) -> Vec<ObjectId> {
            std::mem::take(&mut *self.manifests_read.lock().unwrap())
        }

        fn check(&self, root: ObjectId, parent: Option<ObjectId>) -> Result<Vec<ObjectId>, String> {
            run(validate_tree(self, root, parent)).map_err(|e| e.to_string())
        }
    }

    impl TreeSource for Mem {
        type Error = String;

        async fn manifest(&self, id: ObjectId) -> Result<Arc<Vec<u8>>, FetchError<String>> {
            self.manifests_read.lock().unwrap().push(id);
            let bytes = self.objects.get(&id).ok_or(FetchError::NotHeld)?;
            Ok(Arc::new(bytes.clone()))
        }

        async fn recipe(&self, id: ObjectId) -> Result<Arc<Recipe>, FetchError<String>> {
            let bytes = self.objects.get(&id).ok_or(FetchError::NotHeld)?;
            Ok(Arc::new(
                Recipe::decode(bytes).map_err(FetchError::Malformed)?,
            ))
        }

        async fn held(&self, ids: &[ObjectId]) -> Result<Vec<bool>, String> {
            self.asked_held.lock().unwrap().extend_from_slice(ids);
            Ok(ids.iter().map(|id| self.objects.contains_key(id)).collect())
        }

        async fn prefetch(&self, ids: &[ObjectId]) {
            self.prefetched.lock().unwrap().push(ids.to_vec());
        }
    }

    /// Runs a future that never waits (the in-memory source never does).
    fn run<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the in-memory source never waits"),
        }
    }

    fn file_entry(name: &str, object: ObjectId, size: u64) -> Entry {
        Entry::file(name, object, size)
    }

    fn dir_entry(name: &str, object: ObjectId) -> Entry {
        Entry::dir(name, object, 1)
    }

    /// A root holding `sub/` with the given (possibly invalid) manifest.
    fn with_bad_sub(mem: &mut Mem, entries: Vec<Entry>) -> ObjectId {
        let bad = mem.raw_dir(entries);
        let ok = mem.file("ok.txt", b"ok");
        mem.dir(vec![ok, dir_entry("sub", bad)])
    }

    #[test]
    fn accepts_a_new_tree_and_lists_every_object_it_adds_once() {
        let mut mem = Mem::default();
        let a = mem.file("a.txt", b"a");
        let same = mem.file("same-as-a.txt", b"a");
        let inner = mem.file("b.txt", b"b");
        let sub = mem.subdir("sub", vec![inner]);
        let copy = Entry {
            name: "copy".into(),
            ..sub.clone()
        };
        let big = mem.chunked("big.bin", &[b"c1", b"c2", b"c1"], 6);
        let link = Entry {
            kind: EntryKind::Symlink,
            object: None,
            target: Some("a.txt".into()),
            ..file_entry("link", ObjectId::of(b""), 5)
        };
        let root = mem.dir(vec![a, same, sub, copy, big, link]);
        let mut added = mem.check(root, None).unwrap();
        added.sort();
        let mut want: Vec<ObjectId> = mem.objects.keys().copied().collect();
        want.sort();
        assert_eq!(added, want, "each object once, shared ones included");
        // The subtree under two names is read once.
        assert_eq!(mem.reads().len(), 2);
    }

    #[test]
    fn refuses_a_manifest_that_is_not_json() {
        let mut mem = Mem::default();
        let junk = mem.put(b"{not json");
        let root = mem.dir(vec![dir_entry("sub", junk)]);
        let e = mem.check(root, None).unwrap_err();
        assert!(
            e.starts_with(&format!("invalid tree: sub/: manifest {junk}: ")),
            "{e}"
        );
        let not_canonical = mem.put(b"{ \"format\":1,\"entries\":[]}");
        let root = mem.dir(vec![dir_entry("sub", not_canonical)]);
        let e = mem.check(root, None).unwrap_err();
        assert!(
            e.contains("sub/: manifest") && e.contains("canonical"),
            "{e}"
        );
        // The root itself is named `/`.
        let e = mem.check(junk, None).unwrap_err();
        assert!(e.starts_with("invalid tree: /: manifest"), "{e}");
    }

    #[test]
    fn refuses_dot_dot_and_slash_in_names() {
        for name in ["..", ".", "a/b", "/etc", ""] {
            let mut mem = Mem::default();
            let f = mem.file(name, b"x");
            let root = with_bad_sub(&mut mem, vec![f]);
            let e = mem.check(root, None).unwrap_err();
            assert!(
                e.starts_with("invalid tree: sub/: manifest") && e.contains("invalid entry name"),
                "{name:?}: {e}"
            );
        }
    }

    #[test]
    fn refuses_duplicate_and_unsorted_names() {
        let mut mem = Mem::default();
        let (a1, a2) = (mem.file("a", b"1"), mem.file("a", b"2"));
        let root = with_bad_sub(&mut mem, vec![a1, a2]);
        let e = mem.check(root, None).unwrap_err();
        assert!(e.contains("sub/: manifest") && e.contains("sorted"), "{e}");

        let mut mem = Mem::default();
        let (b, a) = (mem.file("b", b"1"), mem.file("a", b"2"));
        let root = with_bad_sub(&mut mem, vec![b, a]);
        let e = mem.check(root, None).unwrap_err();
        assert!(e.contains("sub/: manifest") && e.contains("sorted"), "{e}");
    }

    #[test]
    fn refuses_objects_no_node_holds_naming_the_first() {
        let mut mem = Mem::default();
        let gone = ObjectId::of(b"never stored");
        let ok = mem.file("a.txt", b"a");
        let docs = mem.subdir(
            "docs",
            vec![
                ok.clone(),
                file_entry("b.txt", gone, 3),
                file_entry("c", gone, 3),
            ],
        );
        let root = mem.dir(vec![docs]);
        let e = mem.check(root, None).unwrap_err();
        assert_eq!(
            e,
            format!("invalid tree: docs/b.txt: refers to object {gone}, which no node holds")
        );
        // A missing child directory.
        let root = mem.dir(vec![ok, dir_entry("sub", gone)]);
        let e = mem.check(root, None).unwrap_err();
        assert_eq!(
            e,
            format!("invalid tree: sub/: refers to object {gone}, which no node holds")
        );
        // A missing chunk, and a missing recipe.
        let mut big = mem.chunked("big", &[b"c1", b"c2"], 4);
        mem.objects.remove(&ObjectId::of(b"c2"));
        let root = mem.dir(vec![big.clone()]);
        let e = mem.check(root, None).unwrap_err();
        assert!(e.starts_with("invalid tree: big: refers to object"), "{e}");
        big.object = Some(gone);
        let root = mem.dir(vec![big]);
        assert!(
            mem.check(root, None)
                .unwrap_err()
                .contains("big: refers to object")
        );
    }

    #[test]
    fn refuses_a_recipe_whose_size_does_not_match_or_that_is_not_a_recipe() {
        let mut mem = Mem::default();
        let big = mem.chunked("big.bin", &[b"abc", b"de"], 6);
        let recipe = big.object.unwrap();
        let root = mem.dir(vec![big]);
        let e = mem.check(root, None).unwrap_err();
        assert_eq!(
            e,
            format!("invalid tree: big.bin: recipe {recipe} describes 5 bytes, the entry says 6")
        );
        let plain = mem.file("f", b"plain bytes");
        let flipped = Entry {
            recipe: true,
            ..plain
        };
        let root = mem.dir(vec![flipped]);
        let e = mem.check(root, None).unwrap_err();
        assert!(e.starts_with("invalid tree: f: recipe"), "{e}");
    }

    #[test]
    fn an_unchanged_subtree_is_not_visited() {
        let mut mem = Mem::default();
        // lib/ is three levels deep; only docs/a.txt changes.
        let deep = mem.file("x", b"x");
        let l2 = mem.subdir("l2", vec![deep]);
        let l1 = mem.subdir("l1", vec![l2]);
        let lib = mem.subdir("lib", vec![l1]);
        let a1 = mem.file("a.txt", b"v1");
        let keep = mem.file("keep.txt", b"keep");
        let docs1 = mem.subdir("docs", vec![a1, keep.clone()]);
        let v1 = mem.dir(vec![docs1.clone(), lib.clone()]);
        assert!(mem.check(v1, None).is_ok());
        mem.reads();
        mem.asked_held.lock().unwrap().clear();

        let a2 = mem.file("a.txt", b"v2");
        let docs2 = mem.subdir("docs", vec![a2, keep]);
        let v2 = mem.dir(vec![docs2.clone(), lib]);
        let added = mem.check(v2, Some(v1)).unwrap();
        let (new_docs, old_docs) = (docs2.object.unwrap(), docs1.object.unwrap());
        assert_eq!(mem.reads(), [v2, v1, new_docs, old_docs]);
        let new_file = ObjectId::of(b"v2");
        assert_eq!(*mem.asked_held.lock().unwrap(), [new_file]);
        assert_eq!(added, [v2, new_docs, new_file]);
        // Committing the same tree again reads nothing.
        assert_eq!(mem.check(v2, Some(v2)).unwrap(), []);
        assert!(mem.reads().is_empty());
    }

    #[test]
    fn a_large_changed_directory_checks_only_its_changed_entries() {
        let mut mem = Mem::default();
        let files: Vec<Entry> = (0..1000)
            .map(|i| mem.file(&format!("f{i:04}"), format!("{i}").as_bytes()))
            .collect();
        let d1 = mem.subdir("d", files.clone());
        let v1 = mem.dir(vec![d1]);
        assert!(mem.check(v1, None).is_ok());
        mem.asked_held.lock().unwrap().clear();

        let mut changed = files.clone();
        changed[500] = mem.file("f0500", b"new");
        let d2 = mem.subdir("d", changed.clone());
        let v2 = mem.dir(vec![d2]);
        assert!(mem.check(v2, Some(v1)).is_ok());
        assert_eq!(*mem.asked_held.lock().unwrap(), [ObjectId::of(b"new")]);

        // The same change naming an object no node holds is refused, and
        // so is one bad entry among the 999 unchanged (in a whole manifest,
        // refused for its form as well).
        changed[500] = file_entry("f0500", ObjectId::of(b"nowhere"), 7);
        let d3 = mem.subdir("d", changed.clone());
        let v3 = mem.dir(vec![d3]);
        let e = mem.check(v3, Some(v1)).unwrap_err();
        assert!(e.contains("d/f0500: refers to object"), "{e}");
        for bad in ["..", "a/b", "f0499", "f0502"] {
            let mut entries = files.clone();
            entries[500] = mem.file(bad, b"new");
            let d = dir_entry("d", mem.raw_dir(entries));
            let v = mem.dir(vec![d]);
            let e = mem.check(v, Some(v1)).unwrap_err();
            assert!(e.starts_with("invalid tree: d/: manifest"), "{bad}: {e}");
        }
    }

    #[test]
    fn new_subdirectories_are_announced_together_with_their_counterparts() {
        let mut mem = Mem::default();
        let (a, b, c) = (
            mem.file("a", b"a"),
            mem.file("b", b"b"),
            mem.file("c", b"c"),
        );
        let (x1, y1) = (mem.subdir("x", vec![a.clone()]), mem.subdir("y", vec![b]));
        let v1 = mem.dir(vec![x1.clone(), y1.clone()]);
        mem.check(v1, None).unwrap();
        let (x, y) = (x1.object.unwrap(), y1.object.unwrap());
        assert_eq!(*mem.prefetched.lock().unwrap(), [vec![x, y]]);

        // y changes and z is new: y comes with its old manifest, x (the
        // same as before) is not asked for.
        mem.prefetched.lock().unwrap().clear();
        let y2 = mem.subdir("y", vec![c.clone()]);
        let z = mem.subdir("z", vec![c, a]);
        let v2 = mem.dir(vec![x1, y2.clone(), z.clone()]);
        mem.check(v2, Some(v1)).unwrap();
        assert_eq!(
            *mem.prefetched.lock().unwrap(),
            [vec![y2.object.unwrap(), y, z.object.unwrap()]]
        );
        // A directory with one subdirectory announces nothing.
        mem.prefetched.lock().unwrap().clear();
        let one = mem.dir(vec![y2]);
        mem.check(one, None).unwrap();
        assert!(mem.prefetched.lock().unwrap().is_empty());
    }

    #[test]
    fn a_moved_subtree_is_recognised() {
        let mut mem = Mem::default();
        let f = mem.file("f", b"f");
        let x = mem.subdir("x", vec![f]);
        let other = mem.file("other", b"o");
        let a1 = mem.subdir("a", vec![x.clone(), other.clone()]);
        let v1 = mem.dir(vec![a1]);
        // a/x moves to b/x ("b" sorts after "a", but is visited after the
        // paired "a" all the same).
        let a2 = mem.subdir("a", vec![other]);
        let b = mem.subdir("b", vec![x.clone()]);
        let v2 = mem.dir(vec![a2.clone(), b.clone()]);
        mem.reads();
        mem.check(v2, Some(v1)).unwrap();
        let reads = mem.reads();
        assert!(!reads.contains(&x.object.unwrap()), "moved subtree re-read");
        assert!(reads.contains(&b.object.unwrap()));
        // Moved under a new name at the root, with its old directory gone,
        // it is checked in full (nothing of the parent says it is good).
        let v3 = mem.dir(vec![Entry {
            name: "y".into(),
            ..x.clone()
        }]);
        mem.check(v3, Some(v2)).unwrap();
        assert!(mem.reads().contains(&x.object.unwrap()));
    }

    #[test]
    fn a_parent_manifest_that_cannot_be_read_means_a_full_check() {
        let mut mem = Mem::default();
        let gone = ObjectId::of(b"no longer held");
        let f = mem.file("f", b"f");
        let root = mem.dir(vec![f]);
        assert!(mem.check(root, Some(gone)).is_ok());
        let bad = mem.file("g", b"g");
        mem.objects.remove(&bad.object.unwrap());
        let root = mem.dir(vec![bad]);
        assert!(mem.check(root, Some(gone)).is_err());
    }

    #[test]
    fn names_with_control_characters_are_escaped() {
        let mut mem = Mem::default();
        let gone = ObjectId::of(b"x");
        let root = mem.dir(vec![file_entry("evil\nline", gone, 1)]);
        let e = mem.check(root, None).unwrap_err();
        assert!(e.starts_with("invalid tree: evil\\nline: refers"), "{e}");
    }

    /// Directories stored as an index of pages.
    mod paged_dirs;
}
