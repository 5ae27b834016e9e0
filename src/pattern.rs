//! Selector patterns, one syntax wherever the node matches topics: the
//! grants of a token, the anonymous list, and the per-topic record formats.
//!
//! A pattern names a selector (`topic` or `topic/key`). It matches the same
//! selector; a whole-topic pattern also matches every key of that topic; a
//! pattern ending in `*` matches every selector that starts with the rest
//! (`scores/*`: any key of `scores`, not the whole topic; `*`: everything).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern(text.trim().to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this pattern allows `topic` (whole, `key == None`) or `topic/key`.
    pub fn allows(&self, topic: &str, key: Option<&str>) -> bool {
        let p = self.0.as_str();
        if let Some(prefix) = p.strip_suffix('*') {
            let selector = match key {
                Some(k) => format!("{topic}/{k}"),
                None => topic.to_owned(),
            };
            return selector.starts_with(prefix);
        }
        match p.split_once('/') {
            Some((t, k)) => t == topic && key == Some(k),
            None => p == topic,
        }
    }

    /// How closely this pattern names `topic`, if it names all of it: an
    /// exact name beats any prefix, and a longer prefix a shorter one.
    pub fn topic_rank(&self, topic: &str) -> Option<usize> {
        let p = self.0.as_str();
        match p.strip_suffix('*') {
            Some(prefix) if !prefix.contains('/') && topic.starts_with(prefix) => {
                Some(prefix.len())
            }
            Some(_) => None,
            None => (p == topic).then_some(usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern::new("scores/*");
        assert!(p.allows("scores", Some("m1")));
        assert!(
            !p.allows("scores", None),
            "a key wildcard is not the whole topic"
        );
        assert!(!p.allows("scoresheet", Some("x")));
        let whole = Pattern::new("scores");
        assert!(whole.allows("scores", None));
        assert!(
            whole.allows("scores", Some("m1")),
            "a whole topic includes its keys"
        );
        assert!(!whole.allows("scores2", None));
        let key = Pattern::new("scores/m1");
        assert!(key.allows("scores", Some("m1")));
        assert!(!key.allows("scores", Some("m2")));
        assert!(!key.allows("scores", None));
        assert!(Pattern::new("*").allows("anything", Some("k")));
        let prefix = Pattern::new("tenant-a.*");
        assert!(prefix.allows("tenant-a.orders", None));
        assert!(prefix.allows("tenant-a.orders", Some("k")));
        assert!(!prefix.allows("tenant-b.orders", None));
    }

    #[test]
    fn topic_ranks() {
        assert_eq!(
            Pattern::new("orders").topic_rank("orders"),
            Some(usize::MAX)
        );
        assert_eq!(Pattern::new("orders").topic_rank("orders2"), None);
        assert_eq!(Pattern::new("ord*").topic_rank("orders"), Some(3));
        assert_eq!(Pattern::new("*").topic_rank("orders"), Some(0));
        assert_eq!(Pattern::new("orders/*").topic_rank("orders"), None);
    }
}
