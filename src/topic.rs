//! Topic names and filters: what MQTT allows, what the embedded router can
//! take, and how a filter matches a topic. The one place for these rules, so
//! the configuration, the topic rules (`front_door::acl`) and the lag
//! tracker (`lag`) cannot disagree; it depends on nothing else in the crate.
//!
//! Two checks, kept apart because they change for different reasons:
//! [`topic_name`] and [`filter`] are MQTT's rules (3.1.1 section 4.7, 5.0
//! section 4.7 and 4.8.2), [`router_takes`] is what rumqttd 0.20 survives
//! (see `docs/upstream/rumqttd-matches-multibyte.md`). A client's topic or
//! filter must pass both before the router or any matcher sees it.

/// MQTT's limit on a topic or filter, in bytes (a two-byte length prefix).
pub const MAX_BYTES: usize = 65_535;

/// The prefix of a shared subscription, `$share/{group}/{filter}`.
const SHARE: &str = "$share/";

/// Why a topic or filter is refused. The text is safe to log: it never
/// repeats the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("is empty")]
    Empty,
    #[error("is longer than 65,535 bytes")]
    TooLong,
    #[error("is not valid UTF-8")]
    NotUtf8,
    #[error("contains the character U+0000")]
    Nul,
    /// MQTT 5 section 1.5.4 lets a server refuse the control characters
    /// U+0001..U+001F and U+007F..U+009F. We do: the router writes filters
    /// into its log lines as they are, and a newline there forges a line.
    #[error("contains a control character")]
    Control,
    #[error("contains a wildcard ('+' or '#'), which a topic name may not")]
    WildcardInTopic,
    #[error("has '#' other than as the whole last level, or '+' other than as a whole level")]
    MisplacedWildcard,
    #[error("is a shared subscription without a group, with a wildcard in the group, or without a filter after it")]
    BadShare,
    #[error(
        "starts with a multi-byte character, which the embedded router (rumqttd 0.20) cannot take"
    )]
    MultiByteStart,
    #[error("starts with '$', which is reserved for the server")]
    Dollar,
}

/// Checks what MQTT requires of a topic name in a PUBLISH or a will:
/// non-empty, at most 65,535 bytes, UTF-8, no U+0000, no wildcard.
pub fn topic_name(bytes: &[u8]) -> Result<&str, Invalid> {
    let topic = common(bytes)?;
    if topic.contains(['+', '#']) {
        return Err(Invalid::WildcardInTopic);
    }
    Ok(topic)
}

/// Checks what MQTT requires of a topic filter and returns the filter the
/// router will use: for `$share/{group}/{filter}` that is `{filter}` (rumqttd
/// strips the prefix), otherwise the filter itself. Whoever judges a filter
/// must judge the returned one.
pub fn filter(filter: &str) -> Result<&str, Invalid> {
    let inner = match filter.strip_prefix(SHARE) {
        Some(rest) => {
            let (group, inner) = rest.split_once('/').ok_or(Invalid::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                return Err(Invalid::BadShare);
            }
            inner
        }
        None => filter,
    };
    common(filter.as_bytes())?;
    let mut levels = inner.split('/').peekable();
    while let Some(level) = levels.next() {
        let ok = match level {
            "#" => levels.peek().is_none(),
            "+" => true,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return Err(Invalid::MisplacedWildcard);
        }
    }
    Ok(inner)
}

/// Whether rumqttd 0.20's router can be handed this topic name, or this
/// filter as [`filter`] returned it. Its matcher slices the first byte
/// (`topic[..1]`) and panics, killing the router thread, when the first
/// character is longer; and it refuses (disconnecting the client) filters
/// that start with `$`, while a topic starting with `$` matches nothing.
/// Returns its input, so it chains after [`topic_name`] or [`filter`].
pub fn router_takes(topic_or_filter: &str) -> Result<&str, Invalid> {
    match topic_or_filter.chars().next() {
        Some(c) if c.len_utf8() > 1 => Err(Invalid::MultiByteStart),
        Some('$') => Err(Invalid::Dollar),
        _ => Ok(topic_or_filter),
    }
}

/// Rules shared by topic names and filters.
fn common(bytes: &[u8]) -> Result<&str, Invalid> {
    if bytes.is_empty() {
        return Err(Invalid::Empty);
    }
    if bytes.len() > MAX_BYTES {
        return Err(Invalid::TooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| Invalid::NotUtf8)?;
    if s.contains('\0') {
        return Err(Invalid::Nul);
    }
    if s.chars().any(char::is_control) {
        return Err(Invalid::Control);
    }
    Ok(s)
}

/// Whether `filter` (valid, and not a `$share/` one: pass what [`filter`]
/// returned) matches `topic` (a valid topic name), as MQTT defines it: `+`
/// is one level, `#` the rest including the parent (`a/#` matches `a`), and
/// a wildcard in the first level does not match a topic starting with `$`.
/// Never panics, whatever the input.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

/// Whether `topic` is `prefix` itself or under it (`clean` and `clean/x`,
/// not `cleaner`).
pub fn under(topic: &str, prefix: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `filter` could match `prefix` or a topic under it: the question
/// for a prefix nobody may read, whatever wildcards the filter uses.
pub fn overlaps(filter: &str, prefix: &str) -> bool {
    let mut f = filter.split('/');
    for p in prefix.split('/') {
        match f.next() {
            Some("#") => return true,
            Some("+") => continue,
            Some(lit) if lit == p => continue,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_mqtt() {
        for ok in ["a", "a/b", "/", "a//b", "é/x", "clean/dev-1/t", "$SYS/x"] {
            assert_eq!(topic_name(ok.as_bytes()), Ok(ok), "{ok}");
        }
        assert_eq!(topic_name(b""), Err(Invalid::Empty));
        assert_eq!(topic_name(b"a/\0/b"), Err(Invalid::Nul));
        assert_eq!(topic_name(b"a/\nforged"), Err(Invalid::Control));
        assert_eq!(topic_name("a/\u{85}".as_bytes()), Err(Invalid::Control));
        assert_eq!(filter("clean/\r/#"), Err(Invalid::Control));
        assert_eq!(topic_name(b"a/\xff"), Err(Invalid::NotUtf8));
        assert_eq!(topic_name(b"a/+/b"), Err(Invalid::WildcardInTopic));
        assert_eq!(topic_name(b"a/#"), Err(Invalid::WildcardInTopic));
        assert_eq!(topic_name(b"a+"), Err(Invalid::WildcardInTopic));
        let long = vec![b'a'; MAX_BYTES + 1];
        assert_eq!(topic_name(&long), Err(Invalid::TooLong));
        assert!(topic_name(&long[..MAX_BYTES]).is_ok());
    }

    #[test]
    fn filters_follow_mqtt() {
        for ok in ["#", "+", "a/+/b", "a/#", "+/+", "/", "a//#", "é/#"] {
            assert_eq!(filter(ok), Ok(ok), "{ok}");
        }
        assert_eq!(filter(""), Err(Invalid::Empty));
        assert_eq!(filter("a\0/#"), Err(Invalid::Nul));
        for no in ["a/#/b", "a+/b", "a/b#", "##", "a/++", "#/"] {
            assert_eq!(filter(no), Err(Invalid::MisplacedWildcard), "{no}");
        }
    }

    #[test]
    fn shared_subscriptions_are_judged_by_the_filter_the_router_uses() {
        assert_eq!(filter("$share/g/clean/#"), Ok("clean/#"));
        assert_eq!(filter("$share/g/#"), Ok("#"));
        assert_eq!(filter("$share/g/a/#/b"), Err(Invalid::MisplacedWildcard));
        for no in [
            "$share/g",
            "$share//x",
            "$share/g/",
            "$share/+/x",
            "$share/g#/x",
        ] {
            assert_eq!(filter(no), Err(Invalid::BadShare), "{no}");
        }
        // Not a shared subscription: a filter starting with '$'.
        assert_eq!(filter("$shared/x"), Ok("$shared/x"));
        assert_eq!(router_takes("$shared/x"), Err(Invalid::Dollar));
    }

    #[test]
    fn the_router_gets_nothing_it_cannot_take() {
        for ok in ["a", "clean/é", "+/x", "#", "/é"] {
            assert_eq!(router_takes(ok), Ok(ok), "{ok}");
        }
        for no in ["é/x", "é", "€", "😀/#"] {
            assert_eq!(router_takes(no), Err(Invalid::MultiByteStart), "{no}");
        }
        assert_eq!(router_takes("$SYS/#"), Err(Invalid::Dollar));
        // What the reason says never repeats the topic.
        assert!(!Invalid::MultiByteStart.to_string().contains('é'));
    }

    #[test]
    fn matching_follows_mqtt() {
        let yes = [
            ("#", "a"),
            ("#", "a/b/c"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("a/+", "a/b"),
            ("+/+", "/x"),
            ("+", ""),
            ("a/+/c", "a//c"),
            ("é/#", "é/x"),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/+", "$SYS/x"),
            ("x/€", "x/€"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} {t}");
        }
        let no = [
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("a/b", "a"),
            ("a", "a/b"),
            ("+", "a/b"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("é/#", "e/x"),
            ("a/#", "ab"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} {t}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(under("clean", "clean"));
        assert!(under("clean/x", "clean"));
        assert!(!under("cleaner/x", "clean"));
        assert!(!under("x/clean", "clean"));
        assert!(under("sealgate/events/d", "sealgate/events"));
        for yes in ["#", "+/#", "sealed/#", "+", "sealed", "sealed/x", "+/x/y"] {
            assert!(overlaps(yes, "sealed"), "{yes}");
        }
        for no in ["clean/#", "sealedx/#", "a/+"] {
            assert!(!overlaps(no, "sealed"), "{no}");
        }
        assert!(overlaps("+/events/#", "sealgate/events"));
        assert!(!overlaps("sealgate/x/#", "sealgate/events"));
    }
}
