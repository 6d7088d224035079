//! Reading a bootstrap: the `config` crate parses YAML or JSON; `--config-yaml` is merged over the
//! file with protobuf `MergeFrom` semantics, as Envoy does (messages merge field by field,
//! repeated fields append, scalars replace).

use super::proto::Bootstrap;
use super::validate::{self, Config};
use super::{ConfigError, FieldError};
use config::{FileFormat, FileSourceString};
use serde_json::Value;

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
            FileFormat::Json
        } else {
            // Envoy accepts .yaml and .yml; YAML is a superset of JSON, so anything else is
            // read as YAML too.
            FileFormat::Yaml
        };
        merge(&mut tree, parse(&text, format, path)?);
    }
    if let Some(yaml) = &source.yaml {
        merge(&mut tree, parse(yaml, FileFormat::Yaml, "--config-yaml")?);
    }
    Ok(tree)
}

fn parse(text: &str, format: FileFormat, what: &str) -> Result<Value, ConfigError> {
    let parse_err = |e: config::ConfigError| ConfigError::Parse {
        what: format!("'{what}'"),
        message: e.to_string(),
    };
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let built = config::Config::builder()
        .add_source(config::File::<FileSourceString, _>::from_str(text, format))
        .build()
        .map_err(parse_err)?;
    built.try_deserialize::<Value>().map_err(parse_err)
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
    fn yaml_syntax_error_is_reported() {
        let err = load(&ConfigSource::yaml("static_resources: [")).unwrap_err();
        assert!(err.to_string().contains("cannot parse"), "{err}");
    }
}
