//! `envoy.filters.network.rbac`: allow or deny a connection by who it comes from (principals)
//! and what it asks for (permissions). With `action: ALLOW` a connection is let through only if
//! some policy matches it; with `DENY` only if none does. A denied connection is closed without a
//! byte read or written. `shadow_rules` are evaluated and counted but never enforced.
//!
//! Stats, as Envoy's code names them (the prefix is concatenated, not dot-joined, so Envoy's
//! examples write `stat_prefix: tcp.`): `<stat_prefix>rbac.allowed`, `<stat_prefix>rbac.denied`,
//! `<stat_prefix>rbac.<shadow_rules_stat_prefix>shadow_allowed` and `…shadow_denied`.
//!
//! Envoy decides when the first byte arrives; legate decides when the connection is accepted,
//! before the TLS handshake. The rules legate supports only look at addresses, ports and the SNI,
//! which are all known by then, so the decision is the same.

use super::{check_stat_prefix, stat_join, typed_config, ConnectionInfo, NetworkFilter, Verdict};
use crate::bootstrap::duration::ProtoDuration;
use crate::bootstrap::validate::Errors;
use crate::listener::filter_chain::Cidr;
use crate::observe::Stats;
use metrics::Counter;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RbacFilterProto {
    #[serde(default)]
    stat_prefix: String,
    #[serde(default)]
    rules: Option<RbacProto>,
    #[serde(default)]
    matcher: Option<Value>,
    #[serde(default)]
    shadow_rules: Option<RbacProto>,
    #[serde(default)]
    shadow_matcher: Option<Value>,
    #[serde(default)]
    shadow_rules_stat_prefix: String,
    #[serde(default)]
    enforcement_type: Option<String>,
    #[serde(default)]
    delay_deny: Option<ProtoDuration>,
    #[serde(default)]
    enforce_on_transport_ready: bool,
}

/// `config.rbac.v3.RBAC`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RbacProto {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    policies: BTreeMap<String, PolicyProto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyProto {
    #[serde(default)]
    permissions: Vec<PermissionProto>,
    #[serde(default)]
    principals: Vec<PrincipalProto>,
    #[serde(default)]
    condition: Option<Value>,
    #[serde(default)]
    checked_condition: Option<Value>,
}

/// `config.rbac.v3.Permission`: a oneof, so exactly one field is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionProto {
    #[serde(default)]
    and_rules: Option<PermissionSet>,
    #[serde(default)]
    or_rules: Option<PermissionSet>,
    #[serde(default)]
    any: Option<bool>,
    #[serde(default)]
    header: Option<Value>,
    #[serde(default)]
    url_path: Option<Value>,
    #[serde(default)]
    destination_ip: Option<CidrRangeProto>,
    #[serde(default)]
    destination_port: Option<u32>,
    #[serde(default)]
    destination_port_range: Option<Int32Range>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    not_rule: Option<Box<PermissionProto>>,
    #[serde(default)]
    requested_server_name: Option<StringMatcherProto>,
    #[serde(default)]
    matcher: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionSet {
    #[serde(default)]
    rules: Vec<PermissionProto>,
}

/// `config.rbac.v3.Principal`: a oneof, so exactly one field is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalProto {
    #[serde(default)]
    and_ids: Option<PrincipalSet>,
    #[serde(default)]
    or_ids: Option<PrincipalSet>,
    #[serde(default)]
    any: Option<bool>,
    #[serde(default)]
    authenticated: Option<Value>,
    #[serde(default)]
    source_ip: Option<CidrRangeProto>,
    #[serde(default)]
    direct_remote_ip: Option<CidrRangeProto>,
    #[serde(default)]
    remote_ip: Option<CidrRangeProto>,
    #[serde(default)]
    header: Option<Value>,
    #[serde(default)]
    url_path: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    filter_state: Option<Value>,
    #[serde(default)]
    not_id: Option<Box<PrincipalProto>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalSet {
    #[serde(default)]
    ids: Vec<PrincipalProto>,
}

/// `config.core.v3.CidrRange`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CidrRangeProto {
    address_prefix: String,
    #[serde(default)]
    prefix_len: Option<u32>,
}

/// `type.v3.Int32Range`: `[start, end)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Int32Range {
    #[serde(default)]
    start: i32,
    #[serde(default)]
    end: i32,
}

/// `type.matcher.v3.StringMatcher`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatcherProto {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    safe_regex: Option<RegexMatcherProto>,
    #[serde(default)]
    ignore_case: bool,
}

/// `type.matcher.v3.RegexMatcher`; `google_re2` is deprecated and has no effect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexMatcherProto {
    regex: String,
    #[serde(default)]
    google_re2: Option<Value>,
}

/// A validated string matcher. Case folding is ASCII, as Envoy's.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    /// Anchored: the whole string must match, as RE2's `FullMatch`.
    Regex(regex::Regex),
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        fn fold(v: &str, ic: bool) -> std::borrow::Cow<'_, str> {
            if ic {
                v.to_ascii_lowercase().into()
            } else {
                v.into()
            }
        }
        match self {
            StringMatch::Exact(p, ic) => fold(s, *ic) == fold(p, *ic),
            StringMatch::Prefix(p, ic) => fold(s, *ic).starts_with(&*fold(p, *ic)),
            StringMatch::Suffix(p, ic) => fold(s, *ic).ends_with(&*fold(p, *ic)),
            StringMatch::Contains(p, ic) => fold(s, *ic).contains(&*fold(p, *ic)),
            StringMatch::Regex(r) => r.is_match(s),
        }
    }
}

/// What a connection asks for.
#[derive(Debug, Clone)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    DestinationIp(Cidr),
    DestinationPort(u32),
    /// `[start, end)`.
    DestinationPortRange(u32, u32),
    /// Matched against the SNI, or the empty string without one (as Envoy).
    RequestedServerName(StringMatch),
}

/// Who a connection comes from. `source_ip`, `direct_remote_ip` and `remote_ip` are all the
/// peer's address: legate has no PROXY protocol, and at L4 nothing else could tell them apart.
#[derive(Debug, Clone)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    RemoteIp(Cidr),
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One set of rules: an action and its policies, in lexicographic order of name (Envoy's order).
#[derive(Debug, Clone)]
pub struct Engine {
    pub action: Action,
    pub policies: Vec<Policy>,
}

/// Validated network `RBAC`.
#[derive(Debug, Clone)]
pub struct RbacConfig {
    pub stat_prefix: String,
    /// `None`: nothing is enforced (and nothing counted).
    pub rules: Option<Engine>,
    pub shadow_rules: Option<Engine>,
    pub shadow_rules_stat_prefix: String,
    /// Hold a denied connection this long before closing it.
    pub delay_deny: Option<Duration>,
}

pub(crate) fn parse(v: Option<Value>, path: &str, errs: &mut Errors) -> Option<RbacConfig> {
    let p: RbacFilterProto = typed_config(v, path, "stat_prefix is required", errs)?;
    check_stat_prefix(&p.stat_prefix, path, errs);
    if p.matcher.is_some() {
        errs.add(
            format!("{path}.matcher"),
            "RBAC matcher trees are not supported by legate; use rules",
        );
    }
    if p.shadow_matcher.is_some() {
        errs.add(
            format!("{path}.shadow_matcher"),
            "RBAC matcher trees are not supported by legate; use shadow_rules",
        );
    }
    match p.enforcement_type.as_deref() {
        None | Some("ONE_TIME_ON_FIRST_BYTE") => {}
        Some("CONTINUOUS") => errs.add(
            format!("{path}.enforcement_type"),
            "CONTINUOUS is not supported by legate (it decides once per connection)",
        ),
        Some(other) => errs.unsupported(format!("{path}.enforcement_type"), other),
    }
    if p.enforce_on_transport_ready {
        errs.add(
            format!("{path}.enforce_on_transport_ready"),
            "not supported by legate: it enforces RBAC before the TLS handshake",
        );
    }
    let rules = p.rules.map(|r| engine(r, &format!("{path}.rules"), errs));
    let shadow_rules = p
        .shadow_rules
        .map(|r| engine(r, &format!("{path}.shadow_rules"), errs));
    // `Some(None)`: the rules were set but invalid (errors recorded).
    if matches!(rules, Some(None)) || matches!(shadow_rules, Some(None)) {
        return None;
    }
    Some(RbacConfig {
        stat_prefix: p.stat_prefix,
        rules: rules.flatten(),
        shadow_rules: shadow_rules.flatten(),
        shadow_rules_stat_prefix: p.shadow_rules_stat_prefix,
        delay_deny: p.delay_deny.map(|d| d.0).filter(|d| !d.is_zero()),
    })
}

fn engine(r: RbacProto, path: &str, errs: &mut Errors) -> Option<Engine> {
    let before = errs.0.len();
    let action = match r.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("LOG") => {
            errs.add(
                format!("{path}.action"),
                "LOG is not supported by the network RBAC filter in legate (it sets access-log metadata)",
            );
            Action::Allow
        }
        Some(other) => {
            errs.unsupported(format!("{path}.action"), other);
            Action::Allow
        }
    };
    let mut policies = Vec::new();
    for (name, p) in r.policies {
        let ppath = format!("{path}.policies.{name}");
        if p.condition.is_some() || p.checked_condition.is_some() {
            let field = if p.condition.is_some() {
                "condition"
            } else {
                "checked_condition"
            };
            errs.add(
                format!("{ppath}.{field}"),
                "CEL conditions are not supported by legate",
            );
        }
        if p.permissions.is_empty() {
            errs.add(
                format!("{ppath}.permissions"),
                "needs at least one permission (use `any: true` to match everything)",
            );
        }
        if p.principals.is_empty() {
            errs.add(
                format!("{ppath}.principals"),
                "needs at least one principal (use `any: true` to match everyone)",
            );
        }
        let permissions = p
            .permissions
            .into_iter()
            .enumerate()
            .filter_map(|(i, x)| permission(x, &format!("{ppath}.permissions[{i}]"), errs))
            .collect();
        let principals = p
            .principals
            .into_iter()
            .enumerate()
            .filter_map(|(i, x)| principal(x, &format!("{ppath}.principals[{i}]"), errs))
            .collect();
        policies.push(Policy {
            name,
            permissions,
            principals,
        });
    }
    (errs.0.len() == before).then_some(Engine { action, policies })
}

/// The names of the fields set in a oneof.
fn set_fields(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect()
}

fn one_of(set: &[&str], path: &str, what: &str, errs: &mut Errors) -> bool {
    match set.len() {
        1 => true,
        0 => {
            errs.add(path.to_string(), format!("a {what} needs exactly one rule"));
            false
        }
        _ => {
            errs.add(
                path.to_string(),
                format!("a {what} is a oneof; set only one of {}", set.join(", ")),
            );
            false
        }
    }
}

const HTTP_ONLY: &str = "is only available in the HTTP RBAC filter";

fn permission(p: PermissionProto, path: &str, errs: &mut Errors) -> Option<Permission> {
    let set = set_fields(&[
        ("and_rules", p.and_rules.is_some()),
        ("or_rules", p.or_rules.is_some()),
        ("any", p.any.is_some()),
        ("header", p.header.is_some()),
        ("url_path", p.url_path.is_some()),
        ("destination_ip", p.destination_ip.is_some()),
        ("destination_port", p.destination_port.is_some()),
        ("destination_port_range", p.destination_port_range.is_some()),
        ("metadata", p.metadata.is_some()),
        ("not_rule", p.not_rule.is_some()),
        ("requested_server_name", p.requested_server_name.is_some()),
        ("matcher", p.matcher.is_some()),
    ]);
    if !one_of(&set, path, "permission", errs) {
        return None;
    }
    let field = format!("{path}.{}", set[0]);
    let set_of = |rules: Vec<PermissionProto>, errs: &mut Errors| {
        if rules.is_empty() {
            errs.add(format!("{field}.rules"), "needs at least one rule");
            return None;
        }
        let n = rules.len();
        let out: Vec<Permission> = rules
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| permission(r, &format!("{field}.rules[{i}]"), errs))
            .collect();
        (out.len() == n).then_some(out)
    };
    if let Some(s) = p.and_rules {
        return set_of(s.rules, errs).map(Permission::And);
    }
    if let Some(s) = p.or_rules {
        return set_of(s.rules, errs).map(Permission::Or);
    }
    if let Some(any) = p.any {
        return any_true(any, &field, errs).then_some(Permission::Any);
    }
    if p.header.is_some() || p.url_path.is_some() {
        errs.add(field, HTTP_ONLY);
        return None;
    }
    if let Some(c) = p.destination_ip {
        return cidr(c, &field, errs).map(Permission::DestinationIp);
    }
    if let Some(port) = p.destination_port {
        if port > 65535 {
            errs.add(field, format!("{port} is not a port (at most 65535)"));
            return None;
        }
        return Some(Permission::DestinationPort(port));
    }
    if let Some(r) = p.destination_port_range {
        // Envoy's bounds: 0 ..= 65536 for both ends.
        let bound = |v: i32, which: &str, errs: &mut Errors| match u32::try_from(v) {
            Ok(v) if v <= 65536 => Some(v),
            _ => {
                errs.add(
                    format!("{field}.{which}"),
                    format!("range {which} {v} is out of bounds"),
                );
                None
            }
        };
        let start = bound(r.start, "start", errs);
        let end = bound(r.end, "end", errs);
        return Some(Permission::DestinationPortRange(start?, end?));
    }
    if let Some(inner) = p.not_rule {
        return permission(*inner, &field, errs).map(|r| Permission::Not(Box::new(r)));
    }
    if let Some(m) = p.requested_server_name {
        return string_matcher(m, &field, errs).map(Permission::RequestedServerName);
    }
    // metadata, matcher
    errs.add(field, "is not supported by legate's network RBAC filter");
    None
}

fn principal(p: PrincipalProto, path: &str, errs: &mut Errors) -> Option<Principal> {
    let set = set_fields(&[
        ("and_ids", p.and_ids.is_some()),
        ("or_ids", p.or_ids.is_some()),
        ("any", p.any.is_some()),
        ("authenticated", p.authenticated.is_some()),
        ("source_ip", p.source_ip.is_some()),
        ("direct_remote_ip", p.direct_remote_ip.is_some()),
        ("remote_ip", p.remote_ip.is_some()),
        ("header", p.header.is_some()),
        ("url_path", p.url_path.is_some()),
        ("metadata", p.metadata.is_some()),
        ("filter_state", p.filter_state.is_some()),
        ("not_id", p.not_id.is_some()),
    ]);
    if !one_of(&set, path, "principal", errs) {
        return None;
    }
    let field = format!("{path}.{}", set[0]);
    let set_of = |ids: Vec<PrincipalProto>, errs: &mut Errors| {
        if ids.is_empty() {
            errs.add(format!("{field}.ids"), "needs at least one id");
            return None;
        }
        let n = ids.len();
        let out: Vec<Principal> = ids
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| principal(r, &format!("{field}.ids[{i}]"), errs))
            .collect();
        (out.len() == n).then_some(out)
    };
    if let Some(s) = p.and_ids {
        return set_of(s.ids, errs).map(Principal::And);
    }
    if let Some(s) = p.or_ids {
        return set_of(s.ids, errs).map(Principal::Or);
    }
    if let Some(any) = p.any {
        return any_true(any, &field, errs).then_some(Principal::Any);
    }
    if p.authenticated.is_some() {
        errs.add(
            field,
            "not supported by legate's network RBAC filter: it decides before the TLS handshake, so no peer certificate is known",
        );
        return None;
    }
    if let Some(c) = p.source_ip.or(p.direct_remote_ip).or(p.remote_ip) {
        return cidr(c, &field, errs).map(Principal::RemoteIp);
    }
    if p.header.is_some() || p.url_path.is_some() {
        errs.add(field, HTTP_ONLY);
        return None;
    }
    if let Some(inner) = p.not_id {
        return principal(*inner, &field, errs).map(|r| Principal::Not(Box::new(r)));
    }
    // metadata, filter_state
    errs.add(field, "is not supported by legate's network RBAC filter");
    None
}

/// `any` must be `true` (Envoy's `const: true`).
fn any_true(any: bool, path: &str, errs: &mut Errors) -> bool {
    if !any {
        errs.add(path.to_string(), "must be true when set");
    }
    any
}

fn cidr(c: CidrRangeProto, path: &str, errs: &mut Errors) -> Option<Cidr> {
    let Some(len) = c.prefix_len else {
        // Envoy reads a missing prefix_len as 0, which matches every address: almost never what
        // a policy means, and silently so. Make it explicit.
        errs.add(
            format!("{path}.prefix_len"),
            "is required (Envoy would read a missing prefix_len as 0, matching every address; write 0 if that is meant)",
        );
        return None;
    };
    match Cidr::parse(&c.address_prefix, Some(len)) {
        Ok(c) => Some(c),
        Err(e) => {
            errs.add(path.to_string(), e);
            None
        }
    }
}

fn string_matcher(m: StringMatcherProto, path: &str, errs: &mut Errors) -> Option<StringMatch> {
    let set = set_fields(&[
        ("exact", m.exact.is_some()),
        ("prefix", m.prefix.is_some()),
        ("suffix", m.suffix.is_some()),
        ("contains", m.contains.is_some()),
        ("safe_regex", m.safe_regex.is_some()),
    ]);
    if set.len() != 1 {
        errs.add(
            path.to_string(),
            "set exactly one of exact, prefix, suffix, contains, safe_regex",
        );
        return None;
    }
    let ic = m.ignore_case;
    let non_empty = |v: String, which: &str, errs: &mut Errors| {
        if v.is_empty() {
            errs.add(format!("{path}.{which}"), "must not be empty");
            None
        } else {
            Some(v)
        }
    };
    if let Some(e) = m.exact {
        return Some(StringMatch::Exact(e, ic));
    }
    if let Some(p) = m.prefix {
        return non_empty(p, "prefix", errs).map(|p| StringMatch::Prefix(p, ic));
    }
    if let Some(s) = m.suffix {
        return non_empty(s, "suffix", errs).map(|s| StringMatch::Suffix(s, ic));
    }
    if let Some(c) = m.contains {
        return non_empty(c, "contains", errs).map(|c| StringMatch::Contains(c, ic));
    }
    let r = m.safe_regex?;
    let _ = r.google_re2;
    match regex::Regex::new(&format!("^(?:{})$", r.regex)) {
        Ok(re) => Some(StringMatch::Regex(re)),
        Err(e) => {
            errs.add(
                format!("{path}.safe_regex.regex"),
                format!("invalid regex: {e}"),
            );
            None
        }
    }
}

impl Permission {
    fn matches(&self, c: &ConnectionInfo<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(rs) => rs.iter().all(|r| r.matches(c)),
            Permission::Or(rs) => rs.iter().any(|r| r.matches(c)),
            Permission::Not(r) => !r.matches(c),
            Permission::DestinationIp(cidr) => cidr.contains(c.local.ip()),
            Permission::DestinationPort(p) => u32::from(c.local.port()) == *p,
            Permission::DestinationPortRange(start, end) => {
                let p = u32::from(c.local.port());
                *start <= p && p < *end
            }
            Permission::RequestedServerName(m) => m.matches(c.server_name.unwrap_or("")),
        }
    }
}

impl Principal {
    fn matches(&self, c: &ConnectionInfo<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(ids) => ids.iter().all(|p| p.matches(c)),
            Principal::Or(ids) => ids.iter().any(|p| p.matches(c)),
            Principal::Not(p) => !p.matches(c),
            Principal::RemoteIp(cidr) => cidr.contains(c.remote.ip()),
        }
    }
}

impl Policy {
    fn matches(&self, c: &ConnectionInfo<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(c))
            && self.principals.iter().any(|p| p.matches(c))
    }
}

impl Engine {
    /// Whether the connection is allowed, and the first matching policy (by name).
    pub fn allowed<'a>(&'a self, c: &ConnectionInfo<'_>) -> (bool, Option<&'a str>) {
        let matched = self
            .policies
            .iter()
            .find(|p| p.matches(c))
            .map(|p| p.name.as_str());
        let allowed = match self.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
        };
        (allowed, matched)
    }
}

pub struct Rbac {
    cfg: std::sync::Arc<RbacConfig>,
    allowed: Counter,
    denied: Counter,
    shadow_allowed: Counter,
    shadow_denied: Counter,
}

impl Rbac {
    pub fn new(cfg: std::sync::Arc<RbacConfig>, stats: &Stats) -> Self {
        // Envoy: `stat_prefix + "rbac."`, then the shadow prefix appended to that.
        let prefix = format!("{}rbac.", cfg.stat_prefix);
        let shadow = format!("{prefix}{}", cfg.shadow_rules_stat_prefix);
        Rbac {
            allowed: stats.counter(stat_join(&prefix, "allowed")),
            denied: stats.counter(stat_join(&prefix, "denied")),
            shadow_allowed: stats.counter(stat_join(&shadow, "shadow_allowed")),
            shadow_denied: stats.counter(stat_join(&shadow, "shadow_denied")),
            cfg,
        }
    }
}

impl NetworkFilter for Rbac {
    fn on_new_connection(&self, conn: &ConnectionInfo<'_>) -> Verdict {
        if let Some(shadow) = &self.cfg.shadow_rules {
            let (ok, policy) = shadow.allowed(conn);
            tracing::debug!(peer = %conn.remote, allowed = ok, policy = policy.unwrap_or("none"), "rbac shadow rules");
            if ok {
                self.shadow_allowed.increment(1);
            } else {
                self.shadow_denied.increment(1);
            }
        }
        let Some(rules) = &self.cfg.rules else {
            return Verdict::Continue;
        };
        let (ok, policy) = rules.allowed(conn);
        if ok {
            self.allowed.increment(1);
            return Verdict::Continue;
        }
        self.denied.increment(1);
        tracing::debug!(
            peer = %conn.remote,
            "rbac_access_denied_matched_policy[{}]",
            policy.unwrap_or("none")
        );
        match self.cfg.delay_deny {
            Some(d) => Verdict::CloseAfter(d, None),
            None => Verdict::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(remote: &str, local: &str, sni: Option<&'static str>) -> ConnectionInfo<'static> {
        ConnectionInfo {
            remote: remote.parse().unwrap(),
            local: local.parse().unwrap(),
            server_name: sni,
        }
    }

    fn parse_yaml(yaml: &str) -> Result<RbacConfig, Vec<String>> {
        let v: Value = serde_json::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let c = parse(Some(v), "f", &mut errs);
        if errs.0.is_empty() {
            Ok(c.unwrap())
        } else {
            Err(errs.0.iter().map(|e| e.to_string()).collect())
        }
    }

    #[test]
    fn allow_and_deny_by_address_port_and_sni() {
        let c = parse_yaml(
            r#"{"stat_prefix": "tcp.", "rules": {"action": "ALLOW", "policies": {
                "lan-web": {
                    "permissions": [{"or_rules": {"rules": [{"destination_port": 80}, {"destination_port_range": {"start": 8000, "end": 8010}}]}}],
                    "principals": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]},
                "sni": {
                    "permissions": [{"and_rules": {"rules": [
                        {"requested_server_name": {"suffix": ".example.com", "ignore_case": true}},
                        {"not_rule": {"requested_server_name": {"exact": "bad.example.com"}}}]}}],
                    "principals": [{"any": true}]}
            }}}"#,
        )
        .unwrap();
        let e = c.rules.unwrap();
        assert_eq!(
            e.allowed(&conn("10.1.2.3:5", "1.1.1.1:80", None)),
            (true, Some("lan-web"))
        );
        assert!(e.allowed(&conn("10.1.2.3:5", "1.1.1.1:8009", None)).0);
        assert!(!e.allowed(&conn("10.1.2.3:5", "1.1.1.1:8010", None)).0);
        assert!(!e.allowed(&conn("11.1.2.3:5", "1.1.1.1:80", None)).0);
        assert_eq!(
            e.allowed(&conn("11.1.2.3:5", "1.1.1.1:443", Some("API.Example.com"))),
            (true, Some("sni"))
        );
        assert!(
            !e.allowed(&conn("11.1.2.3:5", "1.1.1.1:443", Some("bad.example.com")))
                .0
        );
        assert!(!e.allowed(&conn("11.1.2.3:5", "1.1.1.1:443", None)).0);
    }

    #[test]
    fn deny_action_and_empty_policies() {
        let c = parse_yaml(
            r#"{"stat_prefix": "x", "rules": {"action": "DENY", "policies": {
                "local": {"permissions": [{"any": true}],
                          "principals": [{"remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}]}}},
               "shadow_rules": {}}"#,
        )
        .unwrap();
        let e = c.rules.unwrap();
        assert_eq!(
            e.allowed(&conn("127.0.0.1:1", "127.0.0.1:2", None)),
            (false, Some("local"))
        );
        assert_eq!(
            e.allowed(&conn("127.0.0.2:1", "127.0.0.1:2", None)),
            (true, None)
        );
        // Present but empty ALLOW rules deny everything.
        assert!(
            !c.shadow_rules
                .unwrap()
                .allowed(&conn("127.0.0.2:1", "127.0.0.1:2", None))
                .0
        );
    }

    #[test]
    fn unsupported_rules_are_errors_with_paths() {
        let errs = parse_yaml(
            r#"{"stat_prefix": "x", "rules": {"policies": {"p": {
                "permissions": [{"header": {"name": ":path"}}, {"any": true, "destination_port": 1}, {}],
                "principals": [{"authenticated": {"principal_name": {"exact": "a"}}},
                               {"source_ip": {"address_prefix": "10.0.0.0"}}]}}}}"#,
        )
        .unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("f.rules.policies.p.permissions[0].header: is only available in the HTTP RBAC filter"), "{all}");
        assert!(all.contains("f.rules.policies.p.permissions[1]: a permission is a oneof; set only one of any, destination_port"), "{all}");
        assert!(
            all.contains("f.rules.policies.p.permissions[2]: a permission needs exactly one rule"),
            "{all}"
        );
        assert!(
            all.contains("f.rules.policies.p.principals[0].authenticated: not supported"),
            "{all}"
        );
        assert!(
            all.contains("f.rules.policies.p.principals[1].source_ip.prefix_len: is required"),
            "{all}"
        );
        let errs = parse_yaml(
            r#"{"stat_prefix": "x", "rules": {"action": "LOG"}, "enforcement_type": "CONTINUOUS"}"#,
        )
        .unwrap_err()
        .join("\n");
        assert!(
            errs.contains("f.rules.action: LOG is not supported"),
            "{errs}"
        );
        assert!(
            errs.contains("f.enforcement_type: CONTINUOUS is not supported"),
            "{errs}"
        );
    }

    #[test]
    fn stat_names_follow_envoy() {
        let stats = Stats::new();
        let c = parse_yaml(
            r#"{"stat_prefix": "tcp.", "shadow_rules_stat_prefix": "prefix_",
                "rules": {"policies": {"all": {"permissions": [{"any": true}], "principals": [{"any": true}]}}},
                "shadow_rules": {"action": "DENY", "policies": {"all": {"permissions": [{"any": true}], "principals": [{"any": true}]}}}}"#,
        )
        .unwrap();
        let f = Rbac::new(std::sync::Arc::new(c), &stats);
        assert!(matches!(
            f.on_new_connection(&conn("127.0.0.1:1", "127.0.0.1:2", None)),
            Verdict::Continue
        ));
        assert_eq!(stats.value("tcp.rbac.allowed"), Some(1));
        assert_eq!(stats.value("tcp.rbac.denied"), Some(0));
        assert_eq!(stats.value("tcp.rbac.prefix_.shadow_denied"), Some(1));
        assert_eq!(stats.value("tcp.rbac.prefix_.shadow_allowed"), Some(0));
    }

    #[test]
    fn regex_is_anchored() {
        let m = StringMatch::Regex(regex::Regex::new("^(?:a.c)$").unwrap());
        assert!(m.matches("abc"));
        assert!(!m.matches("xabc"));
    }
}
