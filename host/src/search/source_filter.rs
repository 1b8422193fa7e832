//! `_source` filtering: `true`/`false`, a field list, or `includes`/`excludes` with wildcards.

use serde_json::{Map, Value};

use crate::error::{Result, parsing};
use crate::indices::wildcard_match;

/// Which parts of `_source` a response returns.
#[derive(Debug, Clone, Default)]
pub struct SourceFilter {
    pub enabled: bool,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
}

fn strings(value: &Value) -> Result<Vec<String>> {
    match value {
        Value::String(one) => Ok(one
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| parsing("_source patterns must be strings"))
            })
            .collect(),
        other => Err(parsing(format!("unexpected _source value {other}"))),
    }
}

impl SourceFilter {
    pub fn all() -> SourceFilter {
        SourceFilter {
            enabled: true,
            ..SourceFilter::default()
        }
    }

    pub fn parse(value: &Value) -> Result<SourceFilter> {
        match value {
            Value::Bool(enabled) => Ok(SourceFilter {
                enabled: *enabled,
                ..SourceFilter::default()
            }),
            Value::Object(object) => {
                let mut filter = SourceFilter::all();
                for (key, value) in object {
                    match key.as_str() {
                        "includes" | "include" => filter.includes = strings(value)?,
                        "excludes" | "exclude" => filter.excludes = strings(value)?,
                        other => return Err(parsing(format!("unknown key [{other}] in _source"))),
                    }
                }
                Ok(filter)
            }
            other => Ok(SourceFilter {
                enabled: true,
                includes: strings(other)?,
                excludes: Vec::new(),
            }),
        }
    }

    /// From `_source`, `_source_includes` and `_source_excludes` URL parameters.
    pub fn from_params(
        source: Option<&str>,
        includes: Option<&str>,
        excludes: Option<&str>,
    ) -> Option<SourceFilter> {
        if source.is_none() && includes.is_none() && excludes.is_none() {
            return None;
        }
        let mut filter = match source {
            Some("false") => return Some(SourceFilter::default()),
            Some("true") | None => SourceFilter::all(),
            Some(list) => SourceFilter {
                enabled: true,
                includes: strings(&Value::String(list.into())).unwrap_or_default(),
                excludes: Vec::new(),
            },
        };
        if let Some(list) = includes {
            filter.includes = strings(&Value::String(list.into())).unwrap_or_default();
        }
        if let Some(list) = excludes {
            filter.excludes = strings(&Value::String(list.into())).unwrap_or_default();
        }
        Some(filter)
    }

    /// True when the whole source is returned unchanged.
    pub fn is_everything(&self) -> bool {
        self.enabled && self.includes.is_empty() && self.excludes.is_empty()
    }

    /// Applies the filter; `None` means `_source` is left out of the response.
    pub fn apply(&self, source: Value) -> Option<Value> {
        if !self.enabled {
            return None;
        }
        if self.includes.is_empty() && self.excludes.is_empty() {
            return Some(source);
        }
        match source {
            Value::Object(object) => Some(Value::Object(self.filter_object(object, ""))),
            other => Some(other),
        }
    }

    fn included(&self, path: &str, is_object: bool) -> bool {
        if self.excludes.iter().any(|p| wildcard_match(p, path)) {
            return false;
        }
        if self.includes.is_empty() {
            return true;
        }
        self.includes.iter().any(|pattern| {
            wildcard_match(pattern, path)
                || path.starts_with(&format!("{pattern}."))
                || (is_object && pattern.starts_with(&format!("{path}.")))
                || (is_object && pattern.contains('*'))
        })
    }

    fn filter_object(&self, object: Map<String, Value>, prefix: &str) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, value) in object {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Object(child) if self.included(&path, true) => {
                    let fully = self.includes.is_empty()
                        || self.includes.iter().any(|p| wildcard_match(p, &path));
                    let filtered = if fully && self.excludes.is_empty() {
                        child
                    } else {
                        self.filter_object(child, &path)
                    };
                    if fully || !filtered.is_empty() {
                        out.insert(key, Value::Object(filtered));
                    }
                }
                Value::Object(_) => {}
                other if self.included(&path, false) => {
                    out.insert(key, other);
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn includes_and_excludes() {
        let source = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4});
        let filter = SourceFilter::parse(&json!({"includes": ["b.*", "a"], "excludes": ["b.d"]}))
            .expect("valid");
        assert_eq!(
            filter.apply(source.clone()),
            Some(json!({"a": 1, "b": {"c": 2}}))
        );
        let filter = SourceFilter::parse(&json!(false)).expect("valid");
        assert_eq!(filter.apply(source.clone()), None);
        let filter = SourceFilter::parse(&json!("e")).expect("valid");
        assert_eq!(filter.apply(source), Some(json!({"e": 4})));
    }
}
