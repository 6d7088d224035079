//! Virtual-host selection by domain, in Envoy's order: exact, then suffix wildcards
//! (`*.foo.com`, longest first), then prefix wildcards (`foo.*`, longest first), then `*`.
//! A wildcard never matches an empty string, and the port is part of the host being matched.

use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub(super) struct DomainIndex {
    exact: HashMap<String, usize>,
    /// (suffix without the `*`, virtual host), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// (prefix without the `*`, virtual host), longest prefix first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
}

/// Envoy allows a single `*` at the start or the end of a domain, or `*` alone.
pub fn validate_domain(d: &str) -> Result<(), String> {
    if d.is_empty() {
        return Err("domain must not be empty".into());
    }
    let stars = d.matches('*').count();
    if stars == 0 || d == "*" || (stars == 1 && (d.starts_with('*') || d.ends_with('*'))) {
        Ok(())
    } else {
        Err(format!(
            "domain '{d}': a wildcard may only be a single '*' at the start or the end"
        ))
    }
}

impl DomainIndex {
    pub(super) fn build<'a>(vhosts: impl Iterator<Item = &'a [String]>) -> Self {
        let mut index = DomainIndex::default();
        for (i, domains) in vhosts.enumerate() {
            for d in domains {
                let d = d.to_ascii_lowercase();
                if d == "*" {
                    index.default.get_or_insert(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    index.suffixes.push((suffix.to_string(), i));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    index.prefixes.push((prefix.to_string(), i));
                } else {
                    index.exact.entry(d).or_insert(i);
                }
            }
        }
        // Stable sorts keep config order among equal lengths.
        index.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        index.prefixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        index
    }

    pub(super) fn find(&self, host: &str) -> Option<usize> {
        // Only lower-case when needed: most clients already send lower-case hosts.
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        for (suffix, i) in &self.suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        for (prefix, i) in &self.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(*i);
            }
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(vhosts: &[&[&str]]) -> DomainIndex {
        let owned: Vec<Vec<String>> = vhosts
            .iter()
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .collect();
        DomainIndex::build(owned.iter().map(|v| v.as_slice()))
    }

    #[test]
    fn envoy_search_order() {
        let idx = index(&[
            &["*"],
            &["foo.*"],
            &["*.foo.com"],
            &["www.foo.com"],
            &["*.bar.foo.com"],
            &["foo.bar.*"],
        ]);
        assert_eq!(idx.find("www.foo.com"), Some(3), "exact first");
        assert_eq!(idx.find("WWW.Foo.com"), Some(3), "case-insensitive");
        assert_eq!(idx.find("a.bar.foo.com"), Some(4), "longest suffix wins");
        assert_eq!(idx.find("a.foo.com"), Some(2));
        assert_eq!(
            idx.find("foo.com"),
            Some(1),
            "suffix must match a non-empty label"
        );
        assert_eq!(idx.find("foo.bar.x"), Some(5), "longest prefix wins");
        assert_eq!(idx.find("foo.x"), Some(1));
        assert_eq!(idx.find("other"), Some(0), "default last");
    }

    #[test]
    fn port_is_part_of_the_host() {
        let idx = index(&[&["example.com"], &["example.com:8080"]]);
        assert_eq!(idx.find("example.com:8080"), Some(1));
        assert_eq!(idx.find("example.com"), Some(0));
        assert_eq!(idx.find("example.com:9090"), None);
    }

    #[test]
    fn domain_validation() {
        assert!(validate_domain("*.a.com").is_ok());
        assert!(validate_domain("a.*").is_ok());
        assert!(validate_domain("*").is_ok());
        assert!(validate_domain("a.*.com").is_err());
        assert!(validate_domain("*.a.*").is_err());
        assert!(validate_domain("").is_err());
    }
}
