//! Index mappings: field types as Elasticsearch defines them, parsed from and rendered to ES
//! JSON, merged when fields are added, and flattened into the leaf fields the shard indexes.

pub mod dates;
pub mod document;

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::error::{Error, illegal};

/// The default `format` of `date` fields.
pub const DEFAULT_DATE_FORMAT: &str = "strict_date_optional_time||epoch_millis";

/// What to do with a field the mapping does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dynamic {
    /// Add it to the mapping (the default).
    True,
    /// Keep it in `_source` but do not index it.
    False,
    /// Refuse the document.
    Strict,
}

impl Dynamic {
    fn parse(value: &Value) -> Result<Dynamic, Error> {
        match value {
            Value::Bool(true) => Ok(Dynamic::True),
            Value::Bool(false) => Ok(Dynamic::False),
            Value::String(s) if s == "true" => Ok(Dynamic::True),
            Value::String(s) if s == "false" => Ok(Dynamic::False),
            Value::String(s) if s == "strict" => Ok(Dynamic::Strict),
            other => Err(Error::MapperParsing(format!(
                "Could not convert [dynamic] to boolean or [strict]: [{other}]"
            ))),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Dynamic::True => json!(true),
            Dynamic::False => json!(false),
            Dynamic::Strict => json!("strict"),
        }
    }
}

/// Text analyzers Shoal ships, each registered as a tantivy tokenizer under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Analyzer {
    Standard,
    Whitespace,
    Keyword,
}

impl Analyzer {
    pub const ALL: [Analyzer; 3] = [Analyzer::Standard, Analyzer::Whitespace, Analyzer::Keyword];

    pub fn name(self) -> &'static str {
        match self {
            Analyzer::Standard => "standard",
            Analyzer::Whitespace => "whitespace",
            Analyzer::Keyword => "keyword",
        }
    }

    fn parse(name: &str) -> Result<Analyzer, Error> {
        Analyzer::ALL
            .into_iter()
            .find(|analyzer| analyzer.name() == name)
            .ok_or_else(|| {
                Error::MapperParsing(format!(
                    "analyzer [{name}] has not been configured in mappings"
                ))
            })
    }
}

/// The type of one mapped field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    Text {
        analyzer: Analyzer,
    },
    Keyword {
        ignore_above: Option<usize>,
    },
    Long,
    Integer,
    Short,
    Byte,
    Double,
    Float,
    Boolean,
    Date {
        format: String,
    },
    Ip,
    Object {
        dynamic: Option<Dynamic>,
        properties: BTreeMap<String, FieldMapping>,
    },
}

impl FieldType {
    /// The name users see in `type`.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Text { .. } => "text",
            FieldType::Keyword { .. } => "keyword",
            FieldType::Long => "long",
            FieldType::Integer => "integer",
            FieldType::Short => "short",
            FieldType::Byte => "byte",
            FieldType::Double => "double",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Date { .. } => "date",
            FieldType::Ip => "ip",
            FieldType::Object { .. } => "object",
        }
    }
}

/// A field and its multi-fields (`fields`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMapping {
    pub field_type: FieldType,
    pub multi_fields: BTreeMap<String, FieldMapping>,
}

impl FieldMapping {
    pub fn new(field_type: FieldType) -> FieldMapping {
        FieldMapping {
            field_type,
            multi_fields: BTreeMap::new(),
        }
    }

    /// What dynamic mapping creates for a string: `text` plus a `keyword` sub-field.
    pub fn dynamic_string() -> FieldMapping {
        let mut mapping = FieldMapping::new(FieldType::Text {
            analyzer: Analyzer::Standard,
        });
        mapping.multi_fields.insert(
            "keyword".to_string(),
            FieldMapping::new(FieldType::Keyword {
                ignore_above: Some(256),
            }),
        );
        mapping
    }

    fn parse(name: &str, value: &Value) -> Result<FieldMapping, Error> {
        let object = value.as_object().ok_or_else(|| {
            Error::MapperParsing(format!(
                "Expected map for property [fields] on field [{name}] but got a {value}"
            ))
        })?;
        let type_name = match object.get("type") {
            Some(Value::String(type_name)) => type_name.as_str(),
            Some(other) => {
                return Err(Error::MapperParsing(format!(
                    "No type specified for field [{name}]: {other}"
                )));
            }
            None if object.contains_key("properties") => "object",
            None => {
                return Err(Error::MapperParsing(format!(
                    "No type specified for field [{name}]"
                )));
            }
        };
        let mut allowed: Vec<&str> = vec![
            "type",
            "fields",
            "index",
            "store",
            "doc_values",
            "boost",
            "null_value",
        ];
        let field_type = match type_name {
            "text" => {
                allowed.extend([
                    "analyzer",
                    "search_analyzer",
                    "norms",
                    "fielddata",
                    "index_options",
                    "position_increment_gap",
                ]);
                let analyzer = match object.get("analyzer") {
                    Some(Value::String(analyzer)) => Analyzer::parse(analyzer)?,
                    Some(other) => {
                        return Err(Error::MapperParsing(format!(
                            "analyzer must be a string, got {other}"
                        )));
                    }
                    None => Analyzer::Standard,
                };
                FieldType::Text { analyzer }
            }
            "keyword" => {
                allowed.extend(["ignore_above", "normalizer", "eager_global_ordinals"]);
                let ignore_above = match object.get("ignore_above") {
                    Some(value) => Some(value.as_u64().ok_or_else(|| {
                        Error::MapperParsing(format!(
                            "[ignore_above] on field [{name}] must be a positive integer"
                        ))
                    })? as usize),
                    None => None,
                };
                FieldType::Keyword { ignore_above }
            }
            "long" => FieldType::Long,
            "integer" => FieldType::Integer,
            "short" => FieldType::Short,
            "byte" => FieldType::Byte,
            "double" => FieldType::Double,
            "float" => FieldType::Float,
            "boolean" => FieldType::Boolean,
            "date" => {
                allowed.extend(["format", "locale"]);
                let format = object
                    .get("format")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_DATE_FORMAT);
                FieldType::Date {
                    format: format.to_string(),
                }
            }
            "ip" => FieldType::Ip,
            "object" => {
                allowed.extend(["properties", "dynamic", "enabled"]);
                let dynamic = object.get("dynamic").map(Dynamic::parse).transpose()?;
                let properties = match object.get("properties") {
                    Some(properties) => parse_properties(properties)?,
                    None => BTreeMap::new(),
                };
                FieldType::Object {
                    dynamic,
                    properties,
                }
            }
            other => {
                return Err(Error::MapperParsing(format!(
                    "No handler for type [{other}] declared on field [{name}]"
                )));
            }
        };
        if matches!(
            field_type,
            FieldType::Long
                | FieldType::Integer
                | FieldType::Short
                | FieldType::Byte
                | FieldType::Double
                | FieldType::Float
        ) {
            allowed.extend(["coerce", "ignore_malformed"]);
        }
        if let Some(unknown) = object.keys().find(|key| !allowed.contains(&key.as_str())) {
            return Err(Error::MapperParsing(format!(
                "unknown parameter [{unknown}] on mapper [{name}] of type [{type_name}]"
            )));
        }
        let mut multi_fields = BTreeMap::new();
        if let Some(fields) = object.get("fields") {
            let fields = fields.as_object().ok_or_else(|| {
                Error::MapperParsing(format!("[fields] of [{name}] must be an object"))
            })?;
            for (sub_name, sub_value) in fields {
                let sub = FieldMapping::parse(sub_name, sub_value)?;
                if matches!(sub.field_type, FieldType::Object { .. }) {
                    return Err(Error::MapperParsing(format!(
                        "Type [object] cannot be used in multi field [{sub_name}]"
                    )));
                }
                multi_fields.insert(sub_name.clone(), sub);
            }
        }
        Ok(FieldMapping {
            field_type,
            multi_fields,
        })
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        match &self.field_type {
            FieldType::Object {
                dynamic,
                properties,
            } => {
                if let Some(dynamic) = dynamic {
                    out.insert("dynamic".into(), dynamic.to_json());
                }
                out.insert("properties".into(), properties_to_json(properties));
            }
            field_type => {
                out.insert("type".into(), json!(field_type.name()));
                match field_type {
                    FieldType::Text { analyzer } if *analyzer != Analyzer::Standard => {
                        out.insert("analyzer".into(), json!(analyzer.name()));
                    }
                    FieldType::Keyword {
                        ignore_above: Some(limit),
                    } => {
                        out.insert("ignore_above".into(), json!(limit));
                    }
                    FieldType::Date { format } if format != DEFAULT_DATE_FORMAT => {
                        out.insert("format".into(), json!(format));
                    }
                    _ => {}
                }
            }
        }
        if !self.multi_fields.is_empty() {
            let fields: Map<String, Value> = self
                .multi_fields
                .iter()
                .map(|(name, sub)| (name.clone(), sub.to_json()))
                .collect();
            out.insert("fields".into(), Value::Object(fields));
        }
        Value::Object(out)
    }

    /// Adds what `other` has and `self` lacks; a changed type is an error.
    fn merge(&mut self, path: &str, other: &FieldMapping) -> Result<(), Error> {
        match (&mut self.field_type, &other.field_type) {
            (
                FieldType::Object {
                    dynamic,
                    properties,
                },
                FieldType::Object {
                    dynamic: other_dynamic,
                    properties: other_properties,
                },
            ) => {
                if other_dynamic.is_some() {
                    *dynamic = *other_dynamic;
                }
                merge_properties(properties, other_properties, path)?;
            }
            (mine, theirs) if mine.name() != theirs.name() => {
                return Err(illegal(format!(
                    "mapper [{path}] cannot be changed from type [{}] to [{}]",
                    mine.name(),
                    theirs.name()
                )));
            }
            (mine, theirs) if mine != theirs => {
                return Err(illegal(format!(
                    "mapper [{path}] has different parameters: cannot change them on an existing field"
                )));
            }
            _ => {}
        }
        for (name, sub) in &other.multi_fields {
            let sub_path = format!("{path}.{name}");
            match self.multi_fields.get_mut(name) {
                Some(existing) => existing.merge(&sub_path, sub)?,
                None => {
                    self.multi_fields.insert(name.clone(), sub.clone());
                }
            }
        }
        Ok(())
    }
}

fn parse_properties(value: &Value) -> Result<BTreeMap<String, FieldMapping>, Error> {
    let object = value
        .as_object()
        .ok_or_else(|| Error::MapperParsing("[properties] must be an object".into()))?;
    let mut properties = BTreeMap::new();
    for (name, field) in object {
        if name.is_empty() {
            return Err(Error::MapperParsing(
                "field name cannot be an empty string".into(),
            ));
        }
        // `"a.b": {...}` is shorthand for an object `a` holding `b`.
        let segments: Vec<&str> = name.split('.').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err(Error::MapperParsing(format!(
                "field name [{name}] cannot contain empty segments"
            )));
        }
        let mut mapping = FieldMapping::parse(name, field)?;
        for depth in (1..segments.len()).rev() {
            let mut wrapped = BTreeMap::new();
            wrapped.insert(segments[depth].to_string(), mapping);
            mapping = FieldMapping::new(FieldType::Object {
                dynamic: None,
                properties: wrapped,
            });
        }
        let top = segments[0];
        match properties.get_mut(top) {
            Some(existing) => FieldMapping::merge(existing, top, &mapping)?,
            None => {
                properties.insert(top.to_string(), mapping);
            }
        }
    }
    Ok(properties)
}

fn properties_to_json(properties: &BTreeMap<String, FieldMapping>) -> Value {
    Value::Object(
        properties
            .iter()
            .map(|(name, field)| (name.clone(), field.to_json()))
            .collect(),
    )
}

fn merge_properties(
    mine: &mut BTreeMap<String, FieldMapping>,
    theirs: &BTreeMap<String, FieldMapping>,
    prefix: &str,
) -> Result<(), Error> {
    for (name, field) in theirs {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match mine.get_mut(name) {
            Some(existing) => existing.merge(&path, field)?,
            None => {
                mine.insert(name.clone(), field.clone());
            }
        }
    }
    Ok(())
}

/// How a leaf field's values are stored in a shard.
#[derive(Debug, Clone, PartialEq)]
pub enum LeafKind {
    /// Analyzed text in the JSON field of that analyzer.
    Text(Analyzer),
    /// Exact values (keywords, numbers, dates, booleans) in the fast, indexed values field.
    Value(ValueType),
}

/// Exact value types, as the values field stores them.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueType {
    Keyword {
        ignore_above: Option<usize>,
    },
    Integer {
        name: &'static str,
        min: i64,
        max: i64,
    },
    Float {
        single_precision: bool,
    },
    Boolean,
    Date {
        format: String,
    },
    Ip,
}

/// An index's mapping: the root `dynamic` setting and the field tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub dynamic: Dynamic,
    pub properties: BTreeMap<String, FieldMapping>,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            dynamic: Dynamic::True,
            properties: BTreeMap::new(),
        }
    }
}

impl Mapping {
    /// Parses the body of `mappings` (`{"dynamic": .., "properties": {..}}`).
    pub fn parse(value: &Value) -> Result<Mapping, Error> {
        let object = value.as_object().ok_or_else(|| {
            Error::MapperParsing(format!(
                "Failed to parse mapping: expected an object, got {value}"
            ))
        })?;
        let mut mapping = Mapping::default();
        for (key, value) in object {
            match key.as_str() {
                "dynamic" => mapping.dynamic = Dynamic::parse(value)?,
                "properties" => mapping.properties = parse_properties(value)?,
                "_source" | "_meta" | "date_detection" | "numeric_detection" | "_routing" => {}
                other => {
                    return Err(Error::MapperParsing(format!(
                        "Root mapping definition has unsupported parameters:  [{other} : {value}]"
                    )));
                }
            }
        }
        Ok(mapping)
    }

    /// Renders the mapping as Elasticsearch's GET mapping shows it.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if self.dynamic != Dynamic::True {
            out.insert("dynamic".into(), self.dynamic.to_json());
        }
        if !self.properties.is_empty() {
            out.insert("properties".into(), properties_to_json(&self.properties));
        }
        Value::Object(out)
    }

    /// Adds the fields of `other`; existing fields keep their type or the merge fails whole.
    pub fn merge(&self, other: &Mapping) -> Result<Mapping, Error> {
        let mut merged = self.clone();
        merge_properties(&mut merged.properties, &other.properties, "")?;
        if other.dynamic != Dynamic::True {
            merged.dynamic = other.dynamic;
        }
        Ok(merged)
    }

    /// Every indexed leaf by its full dotted path (multi-fields included).
    pub fn leaves(&self) -> HashMap<String, LeafKind> {
        let mut leaves = HashMap::new();
        collect_leaves(&self.properties, "", &mut leaves);
        leaves
    }

    /// The mapping of the field at a dotted path (multi-fields included).
    pub fn field(&self, path: &str) -> Option<&FieldMapping> {
        let mut properties = &self.properties;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            let field = properties.get(segment)?;
            if segments.peek().is_none() {
                return Some(field);
            }
            match &field.field_type {
                FieldType::Object {
                    properties: children,
                    ..
                } => properties = children,
                _ => {
                    let rest: Vec<&str> = segments.collect();
                    return field.multi_fields.get(&rest.join("."));
                }
            }
        }
        None
    }

    /// Inserts a field at a dotted path, creating parent objects as needed.
    pub fn insert(&mut self, path: &str, field: FieldMapping) {
        let mut properties = &mut self.properties;
        let segments: Vec<&str> = path.split('.').collect();
        for segment in &segments[..segments.len() - 1] {
            let entry = properties.entry((*segment).to_string()).or_insert_with(|| {
                FieldMapping::new(FieldType::Object {
                    dynamic: None,
                    properties: BTreeMap::new(),
                })
            });
            match &mut entry.field_type {
                FieldType::Object {
                    properties: children,
                    ..
                } => properties = children,
                // The caller only inserts below objects it has walked; a leaf here means a bug.
                _ => return,
            }
        }
        if let Some(last) = segments.last() {
            properties.insert((*last).to_string(), field);
        }
    }
}

fn collect_leaves(
    properties: &BTreeMap<String, FieldMapping>,
    prefix: &str,
    out: &mut HashMap<String, LeafKind>,
) {
    for (name, field) in properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if let FieldType::Object {
            properties: children,
            ..
        } = &field.field_type
        {
            collect_leaves(children, &path, out);
            continue;
        }
        if let Some(kind) = leaf_kind(&field.field_type) {
            out.insert(path.clone(), kind);
        }
        for (sub_name, sub) in &field.multi_fields {
            if let Some(kind) = leaf_kind(&sub.field_type) {
                out.insert(format!("{path}.{sub_name}"), kind);
            }
        }
    }
}

/// The storage of a non-object field type.
pub fn leaf_kind(field_type: &FieldType) -> Option<LeafKind> {
    let value = |value_type| Some(LeafKind::Value(value_type));
    match field_type {
        FieldType::Text { analyzer } => Some(LeafKind::Text(*analyzer)),
        FieldType::Keyword { ignore_above } => value(ValueType::Keyword {
            ignore_above: *ignore_above,
        }),
        FieldType::Long => value(ValueType::Integer {
            name: "long",
            min: i64::MIN,
            max: i64::MAX,
        }),
        FieldType::Integer => value(ValueType::Integer {
            name: "integer",
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        }),
        FieldType::Short => value(ValueType::Integer {
            name: "short",
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        }),
        FieldType::Byte => value(ValueType::Integer {
            name: "byte",
            min: i8::MIN.into(),
            max: i8::MAX.into(),
        }),
        FieldType::Double => value(ValueType::Float {
            single_precision: false,
        }),
        FieldType::Float => value(ValueType::Float {
            single_precision: true,
        }),
        FieldType::Boolean => value(ValueType::Boolean),
        FieldType::Date { format } => value(ValueType::Date {
            format: format.clone(),
        }),
        FieldType::Ip => value(ValueType::Ip),
        FieldType::Object { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_renders_and_flattens() {
        let body = json!({"dynamic": "strict", "properties": {
            "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
            "user.age": {"type": "integer"},
            "when": {"type": "date"}
        }});
        let mapping = Mapping::parse(&body).expect("valid mapping");
        assert_eq!(mapping.dynamic, Dynamic::Strict);
        let leaves = mapping.leaves();
        assert_eq!(
            leaves.get("title"),
            Some(&LeafKind::Text(Analyzer::Standard))
        );
        assert!(matches!(
            leaves.get("title.raw"),
            Some(LeafKind::Value(ValueType::Keyword { .. }))
        ));
        assert!(matches!(
            leaves.get("user.age"),
            Some(LeafKind::Value(ValueType::Integer {
                name: "integer",
                ..
            }))
        ));
        let rendered = mapping.to_json();
        assert_eq!(
            rendered["properties"]["user"]["properties"]["age"]["type"],
            "integer"
        );
        assert_eq!(Mapping::parse(&rendered).expect("round trip"), mapping);
    }

    #[test]
    fn merge_adds_fields_and_refuses_type_changes() {
        let base = Mapping::parse(&json!({"properties": {"n": {"type": "long"}}})).expect("valid");
        let more =
            Mapping::parse(&json!({"properties": {"s": {"type": "keyword"}}})).expect("valid");
        let merged = base.merge(&more).expect("additive merge");
        assert!(merged.field("s").is_some() && merged.field("n").is_some());
        let clash = Mapping::parse(&json!({"properties": {"n": {"type": "text"}}})).expect("valid");
        let err = base.merge(&clash).expect_err("type change");
        assert!(
            err.to_string()
                .contains("cannot be changed from type [long] to [text]"),
            "{err}"
        );
    }

    #[test]
    fn bad_mappings_are_refused() {
        assert!(Mapping::parse(&json!({"properties": {"x": {"type": "banana"}}})).is_err());
        assert!(
            Mapping::parse(&json!({"properties": {"x": {"type": "text", "analyzer": "nope"}}}))
                .is_err()
        );
        assert!(
            Mapping::parse(&json!({"properties": {"x": {"type": "long", "colour": 1}}})).is_err()
        );
        assert!(Mapping::parse(&json!({"wat": 1})).is_err());
    }
}
