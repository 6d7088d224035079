//! A virtual host's routes, indexed: the first route (in config order) that matches a path, in
//! time that grows with the path's length, not with the number of routes.
//!
//! Prefix and exact-path matches are both "these bytes, then something" questions, so one radix
//! tree per case mode holds them all: every prefix or path of the virtual host is a node, and
//! walking the request path down the tree passes exactly the nodes whose key the path starts
//! with. A node carries the smallest route index of any prefix route ending at it *or above it*
//! (so the deepest node reached answers for the whole walk) and the smallest exact-path route
//! ending at it (which counts only where the walk stands at the end of the path proper, before
//! the query string). Case-insensitive routes live in a second tree whose keys are lower-cased;
//! its walk lower-cases the request's bytes as it compares them, so a lookup never allocates.
//! The answer is the smaller of the two trees' answers: the linear scan's first match.
//!
//! Memory: at most two nodes per distinct key, and each key's bytes stored once at most, so the
//! index is proportional to the routes' total prefix and path bytes.

use super::{PathMatch, Route};
use std::borrow::Cow;
use std::collections::VecDeque;

/// No route: larger than any route index, so `min` ignores it.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
pub(super) struct RouteIndex {
    case_sensitive: Tree,
    case_insensitive: Tree,
    /// Whether any route matches a whole path: only then is the query string looked for.
    has_exact: bool,
}

impl RouteIndex {
    pub(super) fn build<C>(routes: &[Route<C>]) -> Self {
        let mut sensitive = Vec::new();
        let mut insensitive = Vec::new();
        let mut has_exact = false;
        for (i, r) in routes.iter().enumerate() {
            // More routes than u32 can count cannot come out of a config file.
            let i = u32::try_from(i).unwrap_or(NONE - 1);
            let (key, exact) = match &r.path_match {
                PathMatch::Prefix(p) => (p, false),
                PathMatch::Path(p) => (p, true),
            };
            has_exact |= exact;
            if r.case_sensitive {
                sensitive.push(Key::new(Cow::Borrowed(key.as_bytes()), i, exact));
            } else {
                let lower = key.as_bytes().to_ascii_lowercase();
                insensitive.push(Key::new(Cow::Owned(lower), i, exact));
            }
        }
        RouteIndex {
            case_sensitive: Tree::build(sensitive),
            case_insensitive: Tree::build(insensitive),
            has_exact,
        }
    }

    /// The index of the first route matching `path` (`:path`, query included).
    pub(super) fn find(&self, path: &str) -> Option<usize> {
        let path = path.as_bytes();
        // Exact paths end where the query starts; without exact routes no node is at that
        // position's mercy, so the search for `?` is skipped.
        let path_end = if self.has_exact {
            path.iter().position(|&b| b == b'?').unwrap_or(path.len())
        } else {
            usize::MAX
        };
        let a = self.case_sensitive.walk::<false>(path, path_end);
        let b = self.case_insensitive.walk::<true>(path, path_end);
        match a.min(b) {
            NONE => None,
            i => Some(i as usize),
        }
    }
}

struct Key<'a> {
    bytes: Cow<'a, [u8]>,
    prefix: u32,
    exact: u32,
}

impl<'a> Key<'a> {
    fn new(bytes: Cow<'a, [u8]>, route: u32, exact: bool) -> Self {
        let (prefix, exact) = if exact { (NONE, route) } else { (route, NONE) };
        Key {
            bytes,
            prefix,
            exact,
        }
    }
}

/// A radix tree in flat arrays. Node 0 is the root (the empty key); a node's children are the
/// nodes `children..children + child_count`, sorted by the first byte of their label, which
/// `first_byte` holds so that a step binary-searches bytes.
#[derive(Debug, Clone, Default)]
struct Tree {
    nodes: Vec<Node>,
    first_byte: Vec<u8>,
    /// Every node's label (the bytes on the edge from its parent), back to back.
    labels: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Node {
    label_start: u32,
    label_len: u32,
    children: u32,
    child_count: u32,
    /// The smallest index of a prefix route whose prefix ends here or at an ancestor.
    best_prefix: u32,
    /// The smallest index of an exact-path route whose path ends here.
    exact: u32,
}

impl Tree {
    fn build(mut keys: Vec<Key<'_>>) -> Self {
        let mut tree = Tree::default();
        if keys.is_empty() {
            return tree;
        }
        // Sorted, equal keys merged (the first route in config order keeps each role): the keys
        // below any node are then a contiguous run, split among its children by the next byte.
        keys.sort_by(|a, b| a.bytes.cmp(&b.bytes));
        keys.dedup_by(|later, kept| {
            if later.bytes != kept.bytes {
                return false;
            }
            kept.prefix = kept.prefix.min(later.prefix);
            kept.exact = kept.exact.min(later.exact);
            true
        });
        // Breadth first, with a queue rather than recursion (a config's keys may nest deeper
        // than a stack would like): a node's children are created together, so they are
        // neighbours in `nodes`. A queued node owns `keys[from..to]`, its own key excluded;
        // all of them start with its `depth` bytes.
        let root_here = keys[0].bytes.is_empty();
        tree.push(&[], root_here.then(|| &keys[0]), NONE);
        let mut queue = VecDeque::from([(0usize, usize::from(root_here), keys.len(), 0usize)]);
        while let Some((id, from, to, depth)) = queue.pop_front() {
            let first_child = tree.nodes.len();
            let inherited = tree.nodes[id].best_prefix;
            let mut at = from;
            while at < to {
                let first = &keys[at].bytes;
                let b = first[depth];
                let run = keys[at..to]
                    .iter()
                    .take_while(|k| k.bytes[depth] == b)
                    .count();
                // The child's label runs as far as its keys agree: for a sorted run, as far as
                // its first and last key agree.
                let last = &keys[at + run - 1].bytes;
                let shared = first[depth..]
                    .iter()
                    .zip(&last[depth..])
                    .take_while(|(x, y)| x == y)
                    .count();
                let child_depth = depth + shared;
                let here = (first.len() == child_depth).then(|| &keys[at]);
                let child = tree.push(&first[depth..child_depth], here, inherited);
                queue.push_back((
                    child,
                    at + usize::from(here.is_some()),
                    at + run,
                    child_depth,
                ));
                at += run;
            }
            let child_count = tree.nodes.len() - first_child;
            let node = &mut tree.nodes[id];
            node.children = first_child as u32;
            node.child_count = child_count as u32;
        }
        tree
    }

    fn push(&mut self, label: &[u8], here: Option<&Key<'_>>, inherited: u32) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            label_start: self.labels.len() as u32,
            label_len: label.len() as u32,
            children: 0,
            child_count: 0,
            best_prefix: here.map_or(inherited, |k| k.prefix.min(inherited)),
            exact: here.map_or(NONE, |k| k.exact),
        });
        self.first_byte.push(label.first().copied().unwrap_or(0));
        self.labels.extend_from_slice(label);
        id
    }

    /// The smallest route index matching `path` (whose query string starts at `path_end`).
    /// `FOLD`: the tree's keys are lower-case and the path's bytes are lower-cased as compared.
    #[inline]
    fn walk<const FOLD: bool>(&self, path: &[u8], path_end: usize) -> u32 {
        let Some(mut node) = self.nodes.first() else {
            return NONE;
        };
        let fold = |b: u8| if FOLD { b.to_ascii_lowercase() } else { b };
        let mut pos = 0;
        let mut exact = NONE;
        loop {
            if pos == path_end {
                exact = node.exact;
            }
            let Some(&b) = path.get(pos) else { break };
            let start = node.children as usize;
            let firsts = &self.first_byte[start..start + node.child_count as usize];
            let Ok(k) = firsts.binary_search(&fold(b)) else {
                break;
            };
            let child = &self.nodes[start + k];
            let label_start = child.label_start as usize;
            let label = &self.labels[label_start..label_start + child.label_len as usize];
            let Some(rest) = path.get(pos..pos + label.len()) else {
                break;
            };
            let same = if FOLD {
                rest.eq_ignore_ascii_case(label)
            } else {
                rest == label
            };
            if !same {
                break;
            }
            pos += label.len();
            node = child;
        }
        node.best_prefix.min(exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::router::Action;

    fn route(m: PathMatch, case_sensitive: bool) -> Route<()> {
        Route {
            name: String::new(),
            path_match: m,
            case_sensitive,
            action: Action::DirectResponse {
                status: 200,
                body: bytes::Bytes::new(),
            },
        }
    }

    fn prefix(p: &str) -> Route<()> {
        route(PathMatch::Prefix(p.into()), true)
    }

    fn path(p: &str) -> Route<()> {
        route(PathMatch::Path(p.into()), true)
    }

    #[test]
    fn first_in_config_order_wins_over_longest() {
        let idx = RouteIndex::build(&[prefix("/a/b"), prefix("/a"), prefix("/")]);
        assert_eq!(idx.find("/a/b/c"), Some(0));
        assert_eq!(idx.find("/a/x"), Some(1));
        assert_eq!(idx.find("/x"), Some(2));
        let idx = RouteIndex::build(&[prefix("/"), prefix("/a")]);
        assert_eq!(idx.find("/a"), Some(0));
    }

    #[test]
    fn exact_paths_ignore_the_query() {
        let idx = RouteIndex::build(&[path("/a"), prefix("/a"), path("/a/b")]);
        assert_eq!(idx.find("/a?x=1"), Some(0));
        assert_eq!(idx.find("/ab"), Some(1));
        assert_eq!(idx.find("/a/b?"), Some(1));
        let idx = RouteIndex::build(&[path("/a/b"), path("/a?b")]);
        assert_eq!(idx.find("/a/b?x"), Some(0));
        assert_eq!(idx.find("/a?b"), None);
        assert_eq!(idx.find("/a/"), None);
    }

    #[test]
    fn case_insensitive_routes_fold_ascii_only() {
        let idx = RouteIndex::build(&[
            route(PathMatch::Prefix("/API/É".into()), false),
            route(PathMatch::Path("/Exact".into()), false),
            prefix("/api"),
        ]);
        assert_eq!(idx.find("/api/É/x"), Some(0));
        assert_eq!(idx.find("/api/é/x"), Some(2));
        assert_eq!(idx.find("/eXACT?q"), Some(1));
        assert_eq!(idx.find("/EXACT/"), None);
    }

    #[test]
    fn empty_prefix_and_empty_table() {
        assert_eq!(RouteIndex::build::<()>(&[]).find("/"), None);
        let idx = RouteIndex::build(&[path("/x"), prefix("")]);
        assert_eq!(idx.find(""), Some(1));
        assert_eq!(idx.find("/x"), Some(0));
    }
}
