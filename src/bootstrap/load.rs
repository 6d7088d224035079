//! Reading a bootstrap: yaml-rust2 (YAML) or serde_json (JSON) parse it into a JSON tree;
//! `--config-yaml` is merged over the file with protobuf `MergeFrom` semantics, as Envoy does
//! (messages merge field by field, repeated fields append, scalars replace).
//!
//! The YAML tree is converted straight into JSON, consuming it: the `config` crate, used here
//! before, built two more copies of the tree (its own values, then a merged clone), which made
//! reading a 10,000-route bootstrap most of legate's start time and left its peak memory behind.

use super::proto::Bootstrap;
use super::validate::{self, Config};
use super::{ConfigError, FieldError};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// Where a bootstrap comes from: Envoy's `-c/--config-path` and `--config-yaml`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<String>,
    pub yaml: Option<String>,
}

impl ConfigSource {
    pub fn yaml(text: impl Into<String>) -> Self {
        ConfigSource {
            path: None,
            yaml: Some(text.into()),
        }
    }

    pub fn file(path: impl Into<String>) -> Self {
        ConfigSource {
            path: Some(path.into()),
            yaml: None,
        }
    }
}

/// Read, merge, deserialise and validate. The error lists every problem validation found.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let tree = read_tree(source)?;
    let bootstrap =
        deserialize_at::<Bootstrap>(tree, "").map_err(|e| ConfigError::Invalid(vec![e]))?;
    validate::validate(bootstrap).map_err(ConfigError::Invalid)
}

/// The merged document as a JSON tree, before any schema is applied.
pub fn read_tree(source: &ConfigSource) -> Result<Value, ConfigError> {
    let mut tree = Value::Object(Default::default());
    if let Some(path) = &source.path {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            source: e,
        })?;
        let format = if path.ends_with(".json") {
            Format::Json
        } else {
            // Envoy accepts .yaml and .yml; YAML is a superset of JSON, so anything else is
            // read as YAML too.
            Format::Yaml
        };
        merge(&mut tree, parse(&text, format, path)?);
    }
    if let Some(yaml) = &source.yaml {
        merge(&mut tree, parse(yaml, Format::Yaml, "--config-yaml")?);
    }
    Ok(tree)
}

fn parse(text: &str, format: Format, what: &str) -> Result<Value, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        what: format!("'{what}'"),
        message,
    };
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let root = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?,
        Format::Yaml => {
            let mut docs = YamlLoader::load_from_str(text).map_err(|e| parse_err(e.to_string()))?;
            if docs.len() > 1 {
                return Err(parse_err(format!(
                    "{} YAML documents, expected one",
                    docs.len()
                )));
            }
            match docs.pop() {
                // Only comments: an empty bootstrap.
                None => return Ok(Value::Object(Default::default())),
                Some(doc) => from_yaml(doc).map_err(parse_err)?,
            }
        }
    };
    match root {
        Value::Object(_) => Ok(root),
        other => Err(parse_err(format!(
            "the document is {}, expected a map",
            json_kind(&other)
        ))),
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Yaml,
    Json,
}

/// A YAML tree as JSON, consumed so no string is copied. Scalars keep the types YAML 1.2's core
/// schema gives them, as the `config` crate (which legate used to read files with) did: a float
/// Rust cannot parse (`.inf`) is an error and one that is not finite has no JSON form and
/// becomes null; mapping keys that are numbers or booleans become their text.
fn from_yaml(y: Yaml) -> Result<Value, String> {
    Ok(match y {
        Yaml::String(s) => Value::String(s),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Real(r) => {
            let f: f64 = r
                .parse()
                .map_err(|_| format!("'{r}' is not a floating point number"))?;
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        Yaml::Array(items) => {
            Value::Array(items.into_iter().map(from_yaml).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let k = match k {
                    Yaml::String(k) | Yaml::Real(k) => k,
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                map.insert(k, from_yaml(v)?);
            }
            Value::Object(map)
        }
        // Null, and BadValue: what yaml-rust2 makes of an alias to no anchor or of a scalar
        // its tag rejects (`!!int x`).
        _ => Value::Null,
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a map",
    }
}

/// Protobuf `MergeFrom` on the JSON form: objects merge key by key, arrays append, anything else
/// in `over` replaces what is in `base`.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

/// Deserialise `value` as `T`, reporting the first structural problem with its full field path
/// (`prefix` is the path of `value` inside the bootstrap).
pub fn deserialize_at<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, true) => String::new(),
            (true, false) => inner,
            (false, true) => prefix.to_string(),
            (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
            (false, false) => format!("{prefix}.{inner}"),
        };
        FieldError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_appends_repeated_and_replaces_scalars() {
        let mut base = json!({"a": {"x": 1, "list": [1]}, "s": "old"});
        merge(&mut base, json!({"a": {"y": 2, "list": [2]}, "s": "new"}));
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": 2, "list": [1, 2]}, "s": "new"})
        );
    }

    #[test]
    fn unknown_field_has_path() {
        let err = load(&ConfigSource::yaml(
            "static_resources:\n  clusters:\n  - name: a\n    bogus: 1\n",
        ))
        .unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("static_resources.clusters[0].bogus: unknown field `bogus`"),
            "{lines:?}"
        );
    }

    #[test]
    fn yaml_scalars_become_json_as_before() {
        let text = "a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\n2: x\ng: &x {k: [1, v]}\nh: *x\n";
        assert_eq!(
            parse(text, Format::Yaml, "t").unwrap(),
            json!({"a": 1, "b": 1.5, "c": true, "d": null, "e": "1", "2": "x",
                   "g": {"k": [1, "v"]}, "h": {"k": [1, "v"]}})
        );
        assert_eq!(parse("# nothing\n", Format::Yaml, "t").unwrap(), json!({}));
    }

    #[test]
    fn document_must_be_one_map() {
        for (text, format) in [
            ("- a\n", Format::Yaml),
            ("a: 1\n---\nb: 2\n", Format::Yaml),
            ("[1]", Format::Json),
            ("{[1]: x}", Format::Yaml),
            ("a: .inf\n", Format::Yaml),
        ] {
            let err = parse(text, format, "t").unwrap_err();
            assert!(err.to_string().starts_with("cannot parse 't': "), "{err}");
        }
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let err = load(&ConfigSource::yaml("static_resources: [")).unwrap_err();
        assert!(err.to_string().contains("cannot parse"), "{err}");
    }
}
