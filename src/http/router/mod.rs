//! The route table: virtual hosts chosen by `Host`, then the first route whose match fits.
//!
//! Tables are built once from config and read per request without locks or allocation. Each
//! virtual host's routes are indexed (`route_index.rs`), so matching costs the same with ten
//! routes or ten thousand; [`RouteTable::find_linear`] is the plain first-match scan the index
//! must agree with.
//! `C` is how a route names its cluster: a name straight out of validation, a live cluster handle
//! once the server has resolved it (so the hot path never looks a cluster up by name).

mod domains;
pub mod forward;
mod route_index;

pub use domains::validate_domain;
use domains::DomainIndex;
use route_index::RouteIndex;

use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RouteTable<C> {
    pub name: String,
    /// Read-only once built: the indexes below are built from it.
    pub virtual_hosts: Vec<VirtualHost<C>>,
    index: DomainIndex,
    /// One per virtual host, in the same order.
    route_indexes: Vec<RouteIndex>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost<C> {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route<C>>,
}

#[derive(Debug, Clone)]
pub struct Route<C> {
    pub name: String,
    pub path_match: PathMatch,
    pub case_sensitive: bool,
    pub action: Action<C>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Matches the start of `:path`, query string included, as Envoy does.
    Prefix(String),
    /// Matches the whole path, query string excluded.
    Path(String),
}

#[derive(Debug, Clone)]
pub enum Action<C> {
    Forward(Forward<C>),
    DirectResponse { status: u16, body: Bytes },
}

#[derive(Debug, Clone)]
pub struct Forward<C> {
    pub cluster: C,
    /// Zero disables the timeout, as in Envoy.
    pub timeout: Duration,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
}

impl<C> RouteTable<C> {
    pub fn new(name: String, virtual_hosts: Vec<VirtualHost<C>>) -> Self {
        let index = DomainIndex::build(virtual_hosts.iter().map(|v| v.domains.as_slice()));
        let route_indexes = virtual_hosts
            .iter()
            .map(|v| RouteIndex::build(&v.routes))
            .collect();
        RouteTable {
            name,
            virtual_hosts,
            index,
            route_indexes,
        }
    }

    /// The same table with every cluster reference replaced by `f(reference)`.
    pub fn map_clusters<D, E>(
        self,
        mut f: impl FnMut(&C) -> Result<D, E>,
    ) -> Result<RouteTable<D>, E> {
        let mut virtual_hosts = Vec::with_capacity(self.virtual_hosts.len());
        for vh in self.virtual_hosts {
            let mut routes = Vec::with_capacity(vh.routes.len());
            for r in vh.routes {
                let action = match r.action {
                    Action::Forward(fw) => Action::Forward(Forward {
                        cluster: f(&fw.cluster)?,
                        timeout: fw.timeout,
                        prefix_rewrite: fw.prefix_rewrite,
                        host_rewrite: fw.host_rewrite,
                    }),
                    Action::DirectResponse { status, body } => {
                        Action::DirectResponse { status, body }
                    }
                };
                routes.push(Route {
                    name: r.name,
                    path_match: r.path_match,
                    case_sensitive: r.case_sensitive,
                    action,
                });
            }
            virtual_hosts.push(VirtualHost {
                name: vh.name,
                domains: vh.domains,
                routes,
            });
        }
        Ok(RouteTable {
            name: self.name,
            virtual_hosts,
            index: self.index,
            route_indexes: self.route_indexes,
        })
    }

    /// The virtual host for a `Host`/`:authority` value, port included (Envoy matches the port
    /// as part of the domain unless told to ignore it).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost<C>> {
        self.index.find(host).map(|i| &self.virtual_hosts[i])
    }

    /// Virtual host, then the first route in it that matches `path` (`:path`, query included).
    pub fn route(&self, host: &str, path: &str) -> Option<&Route<C>> {
        self.find(host, path)
            .map(|(v, r)| &self.virtual_hosts[v].routes[r])
    }

    /// As [`RouteTable::route`], as (virtual host, route) indexes: a request remembers its route
    /// for the access log without holding a borrow or copying a name.
    pub fn find(&self, host: &str, path: &str) -> Option<(usize, usize)> {
        let vi = self.index.find(host)?;
        let ri = self.route_indexes[vi].find(path)?;
        Some((vi, ri))
    }

    /// As [`RouteTable::find`], by trying each route in order: the definition of the answer,
    /// kept for tests and benchmarks to compare the index against.
    pub fn find_linear(&self, host: &str, path: &str) -> Option<(usize, usize)> {
        let vi = self.index.find(host)?;
        let ri = self.virtual_hosts[vi]
            .routes
            .iter()
            .position(|r| r.matches(path))?;
        Some((vi, ri))
    }
}

impl<C> Route<C> {
    pub fn matches(&self, path: &str) -> bool {
        match &self.path_match {
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Path(p) => {
                let without_query = path.split_once('?').map_or(path, |(p, _)| p);
                if self.case_sensitive {
                    without_query == p
                } else {
                    without_query.eq_ignore_ascii_case(p)
                }
            }
        }
    }
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(name: &str, m: PathMatch) -> Route<&'static str> {
        Route {
            name: name.into(),
            path_match: m,
            case_sensitive: true,
            action: Action::DirectResponse {
                status: 200,
                body: Bytes::new(),
            },
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let t = RouteTable::new(
            "rc".into(),
            vec![VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![
                    forward("exact", PathMatch::Path("/a".into())),
                    forward("prefix", PathMatch::Prefix("/a".into())),
                    forward("all", PathMatch::Prefix("/".into())),
                ],
            }],
        );
        assert_eq!(t.route("x", "/a?q=1").unwrap().name, "exact");
        assert_eq!(t.route("x", "/ab").unwrap().name, "prefix");
        assert_eq!(t.route("x", "/b").unwrap().name, "all");
    }

    #[test]
    fn case_insensitive_prefix() {
        let mut r = forward("p", PathMatch::Prefix("/API".into()));
        assert!(!r.matches("/api/x"));
        r.case_sensitive = false;
        assert!(r.matches("/api/x"));
        assert!(!r.matches("/ap"));
    }
}
