//! `SWITCHBOARD_<SECTION>__<KEY>` environment overrides.
//!
//! A variable's value is typed by the key's default: integers, booleans,
//! lists (comma-separated) and strings. The origin of every override is kept
//! so that an error can name the variable rather than the file.

use std::collections::BTreeMap;

use crate::{Config, ConfigError, ENV_PREFIX};

/// Applies overrides to `table`; returns dotted key → variable name.
pub(crate) fn apply_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Invalid {
        key: String::new(),
        value: None,
        expected: format!("internal: defaults do not serialize: {e}"),
        origin: "defaults".into(),
    })?;
    let mut origins = BTreeMap::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let key = path.join(".");
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid {
                key,
                value: Some(raw),
                expected: "a variable named SWITCHBOARD_<SECTION>__<KEY>".into(),
                origin: format!("environment variable {name}"),
            });
        }
        let typed =
            typed_value(&defaults, &path, &raw).map_err(|expected| ConfigError::Invalid {
                key: key.clone(),
                value: Some(format!("{raw:?}")),
                expected,
                origin: format!("environment variable {name}"),
            })?;
        insert(table, &path, typed).map_err(|expected| ConfigError::Invalid {
            key: key.clone(),
            value: Some(format!("{raw:?}")),
            expected,
            origin: format!("environment variable {name}"),
        })?;
        origins.insert(key, format!("environment variable {name}"));
    }
    Ok(origins)
}

/// Converts `raw` to the type the default has at `path` (a string when the
/// key has no default, e.g. an optional key or a free-form map entry).
fn typed_value(defaults: &toml::Table, path: &[String], raw: &str) -> Result<toml::Value, String> {
    let default = path.split_last().and_then(|(last, parents)| {
        let mut t = defaults;
        for p in parents {
            t = t.get(p)?.as_table()?;
        }
        t.get(last)
    });
    Ok(match default {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| "expected an integer".to_owned())?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| "expected a number".to_owned())?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err("expected true or false".into()),
        }),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Some(toml::Value::Table(_)) => {
            return Err("a key inside this section, not the section itself".into());
        }
        _ => toml::Value::String(raw.to_owned()),
    })
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("an empty key")?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is a value, not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// The value at a dotted path, for error messages.
pub(crate) fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.').peekable();
    let mut t = table;
    while let Some(part) = parts.next() {
        let v = t.get(part)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        t = v.as_table()?;
    }
    None
}
