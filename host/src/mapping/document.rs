//! Turns a document's `_source` into the values a shard indexes, following the mapping and
//! growing it by dynamic mapping (or refusing the document under `dynamic: strict`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use super::dates;
use super::{Analyzer, Dynamic, FieldMapping, FieldType, LeafKind, Mapping, ValueType, leaf_kind};
use crate::error::Error;

/// One indexed value, typed for the values field.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexedValue {
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Epoch milliseconds.
    Date(i64),
}

/// What a shard needs to index one document.
#[derive(Debug, Default)]
pub struct ParsedDocument {
    /// Analyzed text by analyzer, then by full field path.
    pub text: BTreeMap<&'static str, BTreeMap<String, Vec<String>>>,
    /// Exact values by full field path.
    pub values: BTreeMap<String, Vec<IndexedValue>>,
    /// Paths (and parent object paths) that hold at least one value, for `exists`.
    pub field_names: Vec<String>,
    /// The grown mapping when dynamic mapping added fields; `None` when nothing changed.
    pub updated_mapping: Option<Mapping>,
}

/// Parses `source` (which must be a JSON object) against `mapping`.
pub fn parse_document(mapping: &Mapping, source: &Value) -> Result<ParsedDocument, Error> {
    let object = source.as_object().ok_or_else(|| {
        Error::MapperParsing("failed to parse, document is empty or not an object".into())
    })?;
    let mut parser = Parser {
        mapping: Cow::Borrowed(mapping),
        doc: ParsedDocument::default(),
    };
    for (name, value) in object {
        parser.field(name, value, mapping.dynamic)?;
    }
    let mut doc = parser.doc;
    if let Cow::Owned(grown) = parser.mapping {
        doc.updated_mapping = Some(grown);
    }
    doc.field_names.sort();
    doc.field_names.dedup();
    Ok(doc)
}

struct Parser<'a> {
    mapping: Cow<'a, Mapping>,
    doc: ParsedDocument,
}

impl Parser<'_> {
    fn field(&mut self, path: &str, value: &Value, dynamic: Dynamic) -> Result<(), Error> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(Error::MapperParsing(format!(
                "field name cannot be empty or contain empty segments: [{path}]"
            )));
        }
        match value {
            Value::Null => Ok(()),
            Value::Array(items) => {
                for item in items {
                    self.field(path, item, dynamic)?;
                }
                Ok(())
            }
            Value::Object(children) => self.object(path, children, dynamic),
            scalar => self.scalar(path, scalar, dynamic),
        }
    }

    fn object(
        &mut self,
        path: &str,
        children: &serde_json::Map<String, Value>,
        dynamic: Dynamic,
    ) -> Result<(), Error> {
        let child_dynamic = match self.mapping.field(path).map(|f| &f.field_type) {
            Some(FieldType::Object { dynamic: own, .. }) => own.unwrap_or(dynamic),
            Some(other) => {
                return Err(Error::MapperParsing(format!(
                    "failed to parse field [{path}] of type [{}]: tried to parse field [{path}] as {} but found an object",
                    other.name(),
                    other.name()
                )));
            }
            None => match dynamic {
                Dynamic::Strict => {
                    return Err(Error::StrictDynamicMapping {
                        field: path.to_string(),
                    });
                }
                Dynamic::False => return Ok(()),
                Dynamic::True => {
                    let object = FieldType::Object {
                        dynamic: None,
                        properties: BTreeMap::new(),
                    };
                    self.mapping
                        .to_mut()
                        .insert(path, FieldMapping::new(object));
                    dynamic
                }
            },
        };
        self.doc.field_names.push(path.to_string());
        for (name, value) in children {
            self.field(&format!("{path}.{name}"), value, child_dynamic)?;
        }
        Ok(())
    }

    fn scalar(&mut self, path: &str, value: &Value, dynamic: Dynamic) -> Result<(), Error> {
        let field = match self.mapping.field(path) {
            Some(field) => field.clone(),
            None => match dynamic {
                Dynamic::Strict => {
                    return Err(Error::StrictDynamicMapping {
                        field: path.to_string(),
                    });
                }
                Dynamic::False => return Ok(()),
                Dynamic::True => {
                    let inferred = infer_mapping(value);
                    self.mapping.to_mut().insert(path, inferred.clone());
                    inferred
                }
            },
        };
        if let FieldType::Object { .. } = field.field_type {
            return Err(Error::MapperParsing(format!(
                "object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value"
            )));
        }
        self.index_leaf(path, &field.field_type, value)?;
        for (sub_name, sub) in &field.multi_fields {
            self.index_leaf(&format!("{path}.{sub_name}"), &sub.field_type, value)?;
        }
        // Exact values are found by their fast column; `_field_names` serves text and objects.
        let mut parent = path;
        while let Some((prefix, _)) = parent.rsplit_once('.') {
            self.doc.field_names.push(prefix.to_string());
            parent = prefix;
        }
        Ok(())
    }

    fn index_leaf(
        &mut self,
        path: &str,
        field_type: &FieldType,
        value: &Value,
    ) -> Result<(), Error> {
        let Some(kind) = leaf_kind(field_type) else {
            return Ok(());
        };
        match kind {
            LeafKind::Text(analyzer) => {
                let text = scalar_to_string(value);
                self.doc
                    .text
                    .entry(analyzer_key(analyzer))
                    .or_default()
                    .entry(path.to_string())
                    .or_default()
                    .push(text);
                self.doc.field_names.push(path.to_string());
            }
            LeafKind::Value(value_type) => {
                if let Some(indexed) = convert_value(path, &value_type, value)? {
                    self.doc
                        .values
                        .entry(path.to_string())
                        .or_default()
                        .push(indexed);
                }
            }
        }
        Ok(())
    }
}

fn analyzer_key(analyzer: Analyzer) -> &'static str {
    analyzer.name()
}

fn scalar_to_string(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Elasticsearch's dynamic mapping rules for a first-seen scalar.
fn infer_mapping(value: &Value) -> FieldMapping {
    match value {
        Value::Bool(_) => FieldMapping::new(FieldType::Boolean),
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            FieldMapping::new(FieldType::Long)
        }
        Value::Number(_) => FieldMapping::new(FieldType::Float),
        Value::String(text) if dates::looks_like_date(text) => FieldMapping::new(FieldType::Date {
            format: super::DEFAULT_DATE_FORMAT.to_string(),
        }),
        _ => FieldMapping::dynamic_string(),
    }
}

fn malformed(path: &str, type_name: &str, value: &Value) -> Error {
    Error::MapperParsing(format!(
        "failed to parse field [{path}] of type [{type_name}] in document. Preview of field's value: '{}'",
        scalar_to_string(value)
    ))
}

/// Converts one JSON scalar to the stored value, with Elasticsearch's coercion rules.
/// `None` means "valid but not indexed" (a keyword over `ignore_above`).
pub fn convert_value(
    path: &str,
    value_type: &ValueType,
    value: &Value,
) -> Result<Option<IndexedValue>, Error> {
    let converted = match value_type {
        ValueType::Keyword { ignore_above } => {
            let text = scalar_to_string(value);
            if ignore_above.is_some_and(|limit| text.chars().count() > limit) {
                return Ok(None);
            }
            IndexedValue::Str(text)
        }
        ValueType::Ip => {
            let text = scalar_to_string(value);
            let address: std::net::IpAddr =
                text.parse().map_err(|_| malformed(path, "ip", value))?;
            IndexedValue::Str(address.to_string())
        }
        ValueType::Integer { name, min, max } => {
            let number = match value {
                Value::Number(number) => number
                    .as_i64()
                    .map(|n| n as f64)
                    .or_else(|| number.as_f64()),
                Value::String(text) => text.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|n| n.is_finite())
            .ok_or_else(|| malformed(path, name, value))?;
            // Coercion truncates fractions, as Elasticsearch does with `coerce: true`.
            let truncated = number.trunc();
            if truncated < *min as f64 || truncated > *max as f64 {
                return Err(Error::MapperParsing(format!(
                    "failed to parse field [{path}] of type [{name}]: value [{}] is out of range",
                    scalar_to_string(value)
                )));
            }
            match value.as_i64() {
                Some(exact) => IndexedValue::I64(exact),
                None => IndexedValue::I64(truncated as i64),
            }
        }
        ValueType::Float { single_precision } => {
            let number = match value {
                Value::Number(number) => number.as_f64(),
                Value::String(text) => text.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|n| n.is_finite())
            .ok_or_else(|| {
                malformed(
                    path,
                    if *single_precision { "float" } else { "double" },
                    value,
                )
            })?;
            IndexedValue::F64(if *single_precision {
                f64::from(number as f32)
            } else {
                number
            })
        }
        ValueType::Boolean => match value {
            Value::Bool(flag) => IndexedValue::Bool(*flag),
            Value::String(text) if text == "true" => IndexedValue::Bool(true),
            Value::String(text) if text == "false" || text.is_empty() => IndexedValue::Bool(false),
            _ => return Err(malformed(path, "boolean", value)),
        },
        ValueType::Date { format } => {
            let millis = match value {
                Value::Number(number) => number.as_f64().map(|n| dates::from_number(n, format)),
                Value::String(text) => dates::parse_date(text, format),
                _ => None,
            }
            .ok_or_else(|| malformed(path, "date", value))?;
            IndexedValue::Date(millis)
        }
    };
    Ok(Some(converted))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dynamic_mapping_follows_elasticsearch() {
        let doc = json!({"title": "Hello", "count": 3, "ratio": 0.5, "ok": true,
                         "at": "2024-01-02T03:04:05Z", "user": {"name": "ann"}});
        let parsed = parse_document(&Mapping::default(), &doc).expect("parses");
        let grown = parsed.updated_mapping.expect("dynamic fields were added");
        let leaves = grown.leaves();
        assert_eq!(
            leaves.get("title"),
            Some(&LeafKind::Text(Analyzer::Standard))
        );
        assert!(matches!(
            leaves.get("title.keyword"),
            Some(LeafKind::Value(ValueType::Keyword { .. }))
        ));
        assert!(matches!(
            leaves.get("count"),
            Some(LeafKind::Value(ValueType::Integer { .. }))
        ));
        assert!(matches!(
            leaves.get("ratio"),
            Some(LeafKind::Value(ValueType::Float { .. }))
        ));
        assert!(matches!(
            leaves.get("at"),
            Some(LeafKind::Value(ValueType::Date { .. }))
        ));
        assert!(leaves.contains_key("user.name"));
        assert_eq!(
            parsed.values.get("count"),
            Some(&vec![IndexedValue::I64(3)])
        );
        assert!(parsed.field_names.contains(&"user".to_string()));
    }

    #[test]
    fn strict_mapping_refuses_unknown_fields() {
        let mapping =
            Mapping::parse(&json!({"dynamic": "strict", "properties": {"a": {"type": "long"}}}))
                .expect("valid");
        assert!(parse_document(&mapping, &json!({"a": 1})).is_ok());
        let err = parse_document(&mapping, &json!({"a": 1, "b": 2})).expect_err("strict");
        assert_eq!(err.es_type(), "strict_dynamic_mapping_exception");
    }

    #[test]
    fn values_are_coerced_or_refused() {
        let mapping = Mapping::parse(
            &json!({"properties": {"n": {"type": "integer"}, "b": {"type": "byte"}}}),
        )
        .expect("valid");
        let parsed = parse_document(&mapping, &json!({"n": "42"})).expect("numeric strings coerce");
        assert_eq!(parsed.values.get("n"), Some(&vec![IndexedValue::I64(42)]));
        assert!(parse_document(&mapping, &json!({"n": "forty-two"})).is_err());
        assert!(parse_document(&mapping, &json!({"b": 300})).is_err());
        assert!(parse_document(&mapping, &json!({"n": {"x": 1}})).is_err());
        assert!(parse_document(&mapping, &json!([1, 2])).is_err());
    }
}
