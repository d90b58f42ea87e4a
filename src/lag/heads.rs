//! What went into the router per tracked filter, and the trie that finds the
//! filters a topic matches.
//!
//! Every message handed to the router is matched here, so the cost must not
//! grow with filters that cannot match it: 20,000 filters under
//! `clean/+/...` must not all be tried against every `clean/` topic. The
//! trie walks a topic level by level and only follows branches that can
//! still match (the level's literal child and the `+` child), collecting `#`
//! entries on the way, so a topic visits at most one node per level per
//! matching wildcard branch.
//!
//! Matching is our own, on bytes: rumqttd 0.20's `protocol::matches` slices
//! the first byte of a topic as `&str` and panics on a multi-byte first
//! character. Nothing here indexes into a string, and no walk recurses, so
//! neither odd bytes nor a filter with thousands of levels can take the
//! gateway down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A position before the reader's first message on a filter.
pub(super) const UNKNOWN: u64 = u64::MAX;
/// A skew before any reader of the filter has seen a message.
pub(super) const NO_SKEW: i64 = i64::MAX;

/// What went into the router for one filter.
pub(super) struct Head {
    pub(super) filter: String,
    pub(super) published: AtomicU64,
    pub(super) skew: AtomicI64,
}

impl Head {
    pub(super) fn new(filter: &str) -> Head {
        Head {
            filter: filter.to_owned(),
            published: AtomicU64::new(0),
            skew: AtomicI64::new(NO_SKEW),
        }
    }

    /// Messages published on this filter after `next`; 0 while unknown.
    pub(super) fn behind(&self, next: u64) -> u64 {
        let skew = self.skew.load(Ordering::Relaxed);
        if skew == NO_SKEW || next == UNKNOWN {
            return 0;
        }
        let head = self.published.load(Ordering::Relaxed) as i64 - skew;
        u64::try_from(head - next as i64).unwrap_or(0)
    }
}

/// One level of a filter on its way down the trie.
enum Step<'a> {
    Literal(&'a [u8]),
    Plus,
}

/// A filter as the trie stores it: its levels, and whether a final `#`
/// follows them. A `#` anywhere else is not a wildcard (MQTT forbids it and
/// the front door refuses it); it is kept as a literal level so that two
/// such filters never share a slot.
fn parse(filter: &str) -> (Vec<Step<'_>>, bool) {
    let mut levels: Vec<&[u8]> = filter.as_bytes().split(|b| *b == b'/').collect();
    let rest = levels.last() == Some(&&b"#"[..]);
    if rest {
        levels.pop();
    }
    let steps = levels
        .into_iter()
        .map(|l| {
            if l == b"+" {
                Step::Plus
            } else {
                Step::Literal(l)
            }
        })
        .collect();
    (steps, rest)
}

/// The first level of a topic, and the rest after its `/` if there is one.
fn split_level(topic: &[u8]) -> (&[u8], Option<&[u8]>) {
    match topic.iter().position(|b| *b == b'/') {
        Some(i) => (&topic[..i], Some(&topic[i + 1..])),
        None => (topic, None),
    }
}

struct Node<T> {
    literal: HashMap<Box<[u8]>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// The filter that ends at this level.
    exact: Option<T>,
    /// The filter that ends with `#` after this level.
    rest: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            plus: None,
            exact: None,
            rest: None,
        }
    }
}

impl<T> Node<T> {
    fn child(&self, step: &Step) -> Option<&Node<T>> {
        match step {
            Step::Literal(l) => self.literal.get(*l),
            Step::Plus => self.plus.as_deref(),
        }
    }

    fn child_mut(&mut self, step: &Step) -> Option<&mut Node<T>> {
        match step {
            Step::Literal(l) => self.literal.get_mut(*l),
            Step::Plus => self.plus.as_deref_mut(),
        }
    }

    fn take_child(&mut self, step: &Step) -> Option<Node<T>> {
        match step {
            Step::Literal(l) => self.literal.remove(*l),
            Step::Plus => self.plus.take().map(|b| *b),
        }
    }

    fn slot(&mut self, rest: bool) -> &mut Option<T> {
        if rest {
            &mut self.rest
        } else {
            &mut self.exact
        }
    }

    /// Whether anything but the branch `step` leads to hangs off this node.
    /// The branch must exist.
    fn keeps_without(&self, step: &Step) -> bool {
        let literals = self
            .literal
            .len()
            .saturating_sub(usize::from(matches!(step, Step::Literal(_))));
        let plus = self.plus.is_some() && !matches!(step, Step::Plus);
        self.exact.is_some() || self.rest.is_some() || literals > 0 || plus
    }
}

/// Drops a subtree without recursing: a filter may be thousands of levels
/// deep, and the default drop would use one stack frame per level.
fn dismantle<T>(node: Node<T>) {
    let mut stack = vec![node];
    while let Some(mut n) = stack.pop() {
        stack.extend(n.literal.drain().map(|(_, c)| c));
        stack.extend(n.plus.take().map(|b| *b));
    }
}

/// Values keyed by MQTT filter, found by the topics they match.
pub(super) struct Trie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> Drop for Trie<T> {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.root));
    }
}

impl<T> Trie<T> {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn get(&self, filter: &str) -> Option<&T> {
        let (steps, rest) = parse(filter);
        let mut node = &self.root;
        for step in &steps {
            node = node.child(step)?;
        }
        if rest {
            node.rest.as_ref()
        } else {
            node.exact.as_ref()
        }
    }

    /// The value for `filter`, made with `make` if there is none.
    pub(super) fn get_or_insert_with(&mut self, filter: &str, make: impl FnOnce() -> T) -> &T {
        let (steps, rest) = parse(filter);
        let mut node = &mut self.root;
        for step in &steps {
            node = match step {
                Step::Literal(l) => node.literal.entry(Box::from(*l)).or_default(),
                Step::Plus => node.plus.get_or_insert_with(Box::default),
            };
        }
        let slot = node.slot(rest);
        if slot.is_none() {
            self.len += 1;
        }
        slot.get_or_insert_with(make)
    }

    /// Removes `filter`'s value, and every node that then leads nowhere.
    pub(super) fn remove(&mut self, filter: &str) -> Option<T> {
        let (steps, rest) = parse(filter);
        // The deepest node on the path that keeps something else: the
        // branch below it goes whole (the root always stays).
        let mut cut = 0;
        let mut node = &self.root;
        for (depth, step) in steps.iter().enumerate() {
            let child = node.child(step)?;
            if node.keeps_without(step) {
                cut = depth;
            }
            node = child;
        }
        let (other, present) = match rest {
            true => (node.exact.is_some(), node.rest.is_some()),
            false => (node.rest.is_some(), node.exact.is_some()),
        };
        if !present {
            return None;
        }
        let leaf_keeps = other || !node.literal.is_empty() || node.plus.is_some();
        let value = if leaf_keeps || steps.is_empty() {
            let mut node = &mut self.root;
            for step in &steps {
                node = node.child_mut(step)?;
            }
            node.slot(rest).take()
        } else {
            let mut parent = &mut self.root;
            for step in &steps[..cut] {
                parent = parent.child_mut(step)?;
            }
            let mut branch = parent.take_child(&steps[cut])?;
            let mut node = &mut branch;
            for step in &steps[cut + 1..] {
                node = node.child_mut(step)?;
            }
            let value = node.slot(rest).take();
            dismantle(branch);
            value
        };
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    /// Calls `f` with every value whose filter matches `topic`, and returns
    /// how many nodes were visited. A topic starting with `$` is matched by
    /// no filter starting with a wildcard (MQTT 4.7.2). rumqttd 0.20 goes
    /// further and appends such a topic to no filter at all: a count here for
    /// a `$...` filter overstates its lag until the idle resync, and a hold
    /// it causes is bounded like any other.
    pub(super) fn for_each_match<'a>(&'a self, topic: &[u8], mut f: impl FnMut(&'a T)) -> usize {
        let dollar = topic.first() == Some(&b'$');
        let mut visited = 0;
        // Each entry: a node, and the topic levels still to match below it
        // (`None` once every level is used).
        let mut stack = vec![(&self.root, Some(topic))];
        while let Some((node, left)) = stack.pop() {
            visited += 1;
            let wild = !(dollar && std::ptr::eq(node, &self.root));
            if let (true, Some(v)) = (wild, &node.rest) {
                f(v);
            }
            let Some(left) = left else {
                if let Some(v) = &node.exact {
                    f(v);
                }
                continue;
            };
            let (level, below) = split_level(left);
            if let Some(child) = node.literal.get(level) {
                stack.push((child, below));
            }
            if let (true, Some(child)) = (wild, &node.plus) {
                stack.push((child, below));
            }
        }
        visited
    }

    #[cfg(test)]
    fn nodes(&self) -> usize {
        let mut n = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            n += 1;
            stack.extend(node.literal.values());
            stack.extend(node.plus.as_deref());
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(filters: &[&str]) -> Trie<String> {
        let mut t = Trie::default();
        for f in filters {
            t.get_or_insert_with(f, || f.to_string());
        }
        t
    }

    fn matching(t: &Trie<String>, topic: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        t.for_each_match(topic, |f| found.push(f.clone()));
        found.sort();
        found
    }

    #[test]
    fn topics_match_filters_level_by_level() {
        let t = trie(&[
            "clean/#",
            "clean/+/t",
            "clean/d1/t",
            "#",
            "+/d2/#",
            "sealgate/events/#",
            "a//b",
            "a/+/b",
            "",
        ]);
        let cases: [(&str, &[&str]); 8] = [
            ("clean/d1/t", &["#", "clean/#", "clean/+/t", "clean/d1/t"]),
            ("clean/d2/x", &["#", "+/d2/#", "clean/#"]),
            ("a/d2/b", &["#", "+/d2/#", "a/+/b"]),
            // `#` also matches its parent level.
            ("clean", &["#", "clean/#"]),
            ("clean/d1", &["#", "clean/#"]),
            ("a//b", &["#", "a/+/b", "a//b"]),
            ("", &["", "#"]),
            ("sealgate/events", &["#", "sealgate/events/#"]),
        ];
        for (topic, want) in cases {
            assert_eq!(matching(&t, topic.as_bytes()), want, "topic {topic:?}");
        }
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        let t = trie(&["#", "+/x", "+/#", "$SYS/#", "$SYS/+", "$SYS/x"]);
        assert_eq!(matching(&t, b"$SYS/x"), ["$SYS/#", "$SYS/+", "$SYS/x"]);
        assert_eq!(matching(&t, b"s/x"), ["#", "+/#", "+/x"]);
    }

    #[test]
    fn any_bytes_are_matched_without_panicking() {
        let t = trie(&["é/#", "+/ü", "#", "ü", "clean/+"]);
        assert_eq!(matching(&t, "é/ü".as_bytes()), ["#", "+/ü", "é/#"]);
        assert_eq!(matching(&t, "ü".as_bytes()), ["#", "ü"]);
        // Not UTF-8, and a lone byte of a multi-byte character.
        assert_eq!(matching(&t, b"clean/\xff\xfe"), ["#", "clean/+"]);
        assert_eq!(matching(&t, b"\xc3"), ["#"]);
        assert_eq!(matching(&t, b"\xc3/\xbc"), ["#"]);
    }

    #[test]
    fn filters_that_cannot_match_a_topic_are_not_visited() {
        let mut t: Trie<u32> = Trie::default();
        for n in 0..20_000 {
            t.get_or_insert_with(&format!("clean/+/{n}"), || n);
            t.get_or_insert_with(&format!("clean/dev{n}/t"), || n);
        }
        let mut found = Vec::new();
        let visited = t.for_each_match(b"clean/dev7/123", |n| found.push(*n));
        assert_eq!(found, [123]);
        // root, clean, clean/+, clean/+/123, clean/dev7: one branch per
        // matching wildcard, whatever the number of filters.
        assert_eq!(visited, 5);
        let visited = t.for_each_match(b"other/dev7/123", |_| panic!("no match"));
        assert_eq!(visited, 1);
    }

    #[test]
    fn removing_filters_prunes_the_nodes_they_alone_used() {
        let filters = [
            "clean/#",
            "clean/+/t",
            "clean/d1/t",
            "#",
            "+/d2/#",
            "a/#/b",
            "clean",
        ];
        let mut t = trie(&filters);
        assert_eq!(t.remove("clean/d2/t"), None);
        assert_eq!(t.remove("clean/+"), None);
        assert_eq!(t.get("clean/+/t").map(String::as_str), Some("clean/+/t"));
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(t.remove(f).as_deref(), Some(*f));
            assert_eq!(t.remove(f), None);
            // What is left still matches.
            for g in &filters[i + 1..] {
                assert!(t.get(g).is_some(), "{g} lost when removing {f}");
            }
        }
        assert!(t.is_empty());
        assert_eq!(t.nodes(), 1, "only the root is left");
    }

    #[test]
    fn a_very_deep_filter_is_added_matched_and_dropped_without_recursion() {
        let deep = "a/".repeat(100_000) + "#";
        let mut t = trie(&[&deep]);
        assert_eq!(t.for_each_match(deep.as_bytes(), |_| {}), 100_001);
        let other = "a/".repeat(50_000) + "b";
        t.get_or_insert_with(&other, || other.clone());
        assert_eq!(t.remove(&deep).as_deref(), Some(deep.as_str()));
        assert_eq!(t.nodes(), 50_002);
        drop(t);
    }
}
