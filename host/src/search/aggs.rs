//! Aggregation requests in Elasticsearch JSON, with field names translated to the columns a
//! shard stores them in, run by tantivy's aggregation module (which speaks the same JSON).

use std::collections::HashMap;

use serde_json::{Map, Value};
use tantivy::aggregation::agg_req::Aggregations;

use crate::error::{Error, Result, parsing};
use crate::mapping::{LeafKind, ValueType};
use crate::shard::schema::{VALUES_FIELD, escape_path};

/// The fast-field column name of a field path.
pub fn column_name(path: &str) -> String {
    format!("{VALUES_FIELD}.{}", escape_path(path))
}

/// Resolves a user field to its column, refusing text fields as Elasticsearch does.
pub fn field_column(leaves: &HashMap<String, LeafKind>, path: &str) -> Result<String> {
    match leaves.get(path) {
        Some(LeafKind::Text(_)) => Err(Error::IllegalArgument(format!(
            "Text fields are not optimised for operations that require per-document field data like aggregations and sorting, so these operations are disabled by default. Please use a keyword field instead. Alternatively, set fielddata=true on [{path}] in order to load field data by uninverting the inverted index."
        ))),
        _ => Ok(column_name(path)),
    }
}

/// Translates an `aggs` object for one index's mapping into a tantivy request; also returns
/// the translated JSON, so requests for several indices can be compared cheaply.
pub fn translate(
    leaves: &HashMap<String, LeafKind>,
    aggs: &Value,
) -> Result<(Value, Aggregations)> {
    let translated = translate_level(leaves, aggs)?;
    let request = serde_json::from_value(translated.clone())
        .map_err(|err| parsing(format!("invalid aggregation: {err}")))?;
    Ok((translated, request))
}

fn translate_level(leaves: &HashMap<String, LeafKind>, aggs: &Value) -> Result<Value> {
    let object = aggs
        .as_object()
        .ok_or_else(|| parsing("[aggs] must be an object"))?;
    let mut out = Map::new();
    for (name, body) in object {
        let body = body
            .as_object()
            .ok_or_else(|| parsing(format!("aggregation [{name}] must be an object")))?;
        let mut translated = Map::new();
        for (kind, params) in body {
            match kind.as_str() {
                "aggs" | "aggregations" => {
                    translated.insert("aggs".to_string(), translate_level(leaves, params)?);
                }
                "meta" => {}
                _ => {
                    translated.insert(kind.clone(), translate_params(leaves, kind, params)?);
                }
            }
        }
        out.insert(name.clone(), Value::Object(translated));
    }
    Ok(Value::Object(out))
}

fn translate_params(
    leaves: &HashMap<String, LeafKind>,
    kind: &str,
    params: &Value,
) -> Result<Value> {
    let mut params = params
        .as_object()
        .cloned()
        .ok_or_else(|| parsing(format!("[{kind}] aggregation must be an object")))?;
    let Some(field) = params
        .get("field")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Ok(Value::Object(params));
    };
    params.insert("field".into(), Value::String(field_column(leaves, &field)?));
    if kind == "date_histogram"
        && let Some(calendar) = params
            .remove("calendar_interval")
            .or_else(|| params.remove("interval"))
    {
        let fixed = match calendar.as_str().unwrap_or_default() {
            "minute" | "1m" => "1m",
            "hour" | "1h" => "1h",
            "day" | "1d" => "1d",
            "week" | "1w" => "7d",
            other if other.ends_with(['s', 'm', 'h', 'd']) && !other.ends_with("M") => other,
            other => {
                return Err(Error::IllegalArgument(format!(
                    "calendar_interval [{other}] is not supported yet; use a fixed_interval such as 1d"
                )));
            }
        };
        params.insert("fixed_interval".into(), Value::String(fixed.to_string()));
    }
    if let Some(LeafKind::Value(ValueType::Date { .. })) = leaves.get(&field) {
        // Range bounds on dates may be given as date strings.
        if let Some(Value::Array(ranges)) = params.get_mut("ranges") {
            for range in ranges.iter_mut() {
                for key in ["from", "to"] {
                    if let Some(Value::String(text)) = range.get(key).cloned() {
                        let millis = crate::mapping::dates::parse_date(
                            &text,
                            crate::mapping::DEFAULT_DATE_FORMAT,
                        )
                        .ok_or_else(|| {
                            parsing(format!(
                                "failed to parse date [{text}] in range aggregation"
                            ))
                        })?;
                        range[key] = Value::from(millis as f64);
                    }
                }
            }
        }
    }
    Ok(Value::Object(params))
}
