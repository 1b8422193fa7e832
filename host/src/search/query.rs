//! The Elasticsearch query DSL (and `query_string` syntax), translated into tantivy queries
//! against one index's mapping.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value};
use tantivy::columnar::NumericalValue;
use tantivy::query::{
    AllQuery, AutomatonWeight, BooleanQuery, BoostQuery, ConstScoreQuery, DisjunctionMaxQuery,
    EmptyQuery, EnableScoring, ExistsQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery,
    Weight,
};
use tantivy::query_grammar::{Delimiter, UserInputAst, UserInputBound, UserInputLeaf};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TokenizerManager;
use tantivy::{DateTime, Term};

use super::filter_term::FilterTerm;
use crate::error::{Error, Result, parsing};
use crate::mapping::dates::parse_date_math;
use crate::mapping::{Analyzer, LeafKind, ValueType};
use crate::shard::schema::{ShardSchema, escape_path};

type BoxQuery = Box<dyn Query>;

/// What translation needs to know about the index being searched.
pub struct QueryContext<'a> {
    pub schema: &'a ShardSchema,
    pub leaves: &'a HashMap<String, LeafKind>,
    pub tokenizers: &'a TokenizerManager,
    pub now_millis: i64,
}

/// Translates one query object (`{"match": {...}}`).
pub fn to_query(ctx: &QueryContext<'_>, query: &Value) -> Result<BoxQuery> {
    let object = query.as_object().ok_or_else(|| {
        parsing(format!(
            "query malformed, must start with start_object, got {query}"
        ))
    })?;
    if object.len() != 1 {
        return Err(parsing(format!(
            "[query] must hold exactly one query clause, got {}",
            object.len()
        )));
    }
    let (kind, body) = object.iter().next().ok_or_else(|| parsing("empty query"))?;
    match kind.as_str() {
        "match_all" => Ok(boosted(Box::new(AllQuery), body)),
        "match_none" => Ok(Box::new(EmptyQuery)),
        "match" => match_query(ctx, body, false),
        "match_phrase" => match_query(ctx, body, true),
        "multi_match" => multi_match(ctx, body),
        "term" => {
            let (field, params) = single_field(kind, body)?;
            let value = param_or_value(params, "value");
            Ok(boosted(exact_query(ctx, &field, &value)?, params))
        }
        "terms" => terms_query(ctx, body),
        "range" => range_query(ctx, body),
        "exists" => {
            let field = body
                .get("field")
                .and_then(Value::as_str)
                .ok_or_else(|| parsing("[exists] requires a [field]"))?;
            Ok(exists_query(ctx, field))
        }
        "ids" => {
            let values = body
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| parsing("[ids] requires [values]"))?;
            let clauses = values
                .iter()
                .map(|id| (Occur::Should, id_query(ctx, &value_text(id))))
                .collect();
            Ok(Box::new(ConstScoreQuery::new(
                Box::new(BooleanQuery::new(clauses)),
                1.0,
            )))
        }
        "prefix" => {
            let (field, params) = single_field(kind, body)?;
            let prefix = value_text(&param_or_value(params, "value"));
            Ok(boosted(
                pattern_query(ctx, &field, &format!("{}.*", regex_escape(&prefix)))?,
                params,
            ))
        }
        "wildcard" => {
            let (field, params) = single_field(kind, body)?;
            let pattern = param_or_value(params, "value");
            let pattern = pattern
                .as_str()
                .or_else(|| params.get("wildcard").and_then(Value::as_str))
                .unwrap_or_default();
            Ok(boosted(
                pattern_query(ctx, &field, &wildcard_to_regex(pattern))?,
                params,
            ))
        }
        "bool" => bool_query(ctx, body),
        "constant_score" => {
            let filter = body
                .get("filter")
                .ok_or_else(|| parsing("[constant_score] requires a [filter]"))?;
            let boost = body.get("boost").and_then(Value::as_f64).unwrap_or(1.0) as f32;
            Ok(Box::new(ConstScoreQuery::new(
                to_query(ctx, filter)?,
                boost,
            )))
        }
        "query_string" | "simple_query_string" => query_string(ctx, body),
        other => Err(parsing(format!("unknown query [{other}]"))),
    }
}

fn boosted(query: BoxQuery, params: &Value) -> BoxQuery {
    match params.get("boost").and_then(Value::as_f64) {
        Some(boost) if (boost - 1.0).abs() > f64::EPSILON => {
            Box::new(BoostQuery::new(query, boost as f32))
        }
        _ => query,
    }
}

/// `{"field": value}` or `{"field": {"value"/"query": .., params}}`.
fn single_field<'a>(kind: &str, body: &'a Value) -> Result<(String, &'a Value)> {
    let object = body.as_object().ok_or_else(|| {
        parsing(format!(
            "[{kind}] query malformed, no start_object after query name"
        ))
    })?;
    let mut fields = object
        .iter()
        .filter(|(key, _)| key.as_str() != "boost" && key.as_str() != "_name");
    let (field, params) = fields
        .next()
        .ok_or_else(|| parsing(format!("[{kind}] query requires a field")))?;
    if fields.next().is_some() {
        return Err(parsing(format!(
            "[{kind}] query doesn't support multiple fields, found [{field}] and more"
        )));
    }
    Ok((field.clone(), params))
}

fn param_or_value(params: &Value, key: &str) -> Value {
    match params {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.get("query"))
            .cloned()
            .unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn json_term(field: Field, path: &str) -> Term {
    Term::from_field_json_path(field, &escape_path(path), false)
}

fn text_term(ctx: &QueryContext<'_>, analyzer: Analyzer, path: &str, token: &str) -> Term {
    let mut term = json_term(ctx.schema.text_field(analyzer), path);
    term.append_type_and_str(token);
    term
}

/// Tokens of `text` as the field's analyzer produces them, with positions.
fn analyze(ctx: &QueryContext<'_>, analyzer: Analyzer, text: &str) -> Vec<(usize, String)> {
    let Some(mut tokenizer) = ctx.tokenizers.get(analyzer.name()) else {
        return Vec::new();
    };
    let mut stream = tokenizer.token_stream(text);
    let mut tokens = Vec::new();
    while stream.advance() {
        let token = stream.token();
        tokens.push((token.position, token.text.clone()));
    }
    tokens
}

/// A query matching documents whose exact value at `path` equals `value`.
fn exact_query(ctx: &QueryContext<'_>, path: &str, value: &Value) -> Result<BoxQuery> {
    if path == "_id" {
        return Ok(id_query(ctx, &value_text(value)));
    }
    match ctx.leaves.get(path) {
        None => Ok(Box::new(EmptyQuery)),
        Some(LeafKind::Text(analyzer)) => {
            let term = text_term(ctx, *analyzer, path, &value_text(value));
            Ok(Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)))
        }
        Some(LeafKind::Value(value_type)) => value_equals(ctx, path, value_type, value),
    }
}

fn value_equals(
    ctx: &QueryContext<'_>,
    path: &str,
    value_type: &ValueType,
    value: &Value,
) -> Result<BoxQuery> {
    let field = ctx.schema.values;
    match value_type {
        ValueType::Keyword { .. } | ValueType::Ip => {
            let mut term = json_term(field, path);
            term.append_type_and_str(&value_text(value));
            Ok(Box::new(TermQuery::new(term, IndexRecordOption::Basic)))
        }
        ValueType::Boolean => {
            let flag = match value {
                Value::Bool(flag) => *flag,
                Value::String(text) if text == "true" => true,
                Value::String(text) if text == "false" => false,
                other => {
                    return Err(parsing(format!(
                        "failed to parse [{other}] as a boolean for field [{path}]"
                    )));
                }
            };
            let mut term = json_term(field, path);
            term.append_type_and_fast_value(flag);
            Ok(Box::new(TermQuery::new(term, IndexRecordOption::Basic)))
        }
        ValueType::Integer { .. } | ValueType::Float { .. } => {
            let exact_integer = value.as_i64().or_else(|| {
                value
                    .as_str()
                    .and_then(|text| text.trim().parse::<i64>().ok())
            });
            if let (ValueType::Integer { .. }, Some(exact)) = (value_type, exact_integer) {
                let mut term = json_term(field, path);
                term.append_type_and_fast_value(exact);
                return Ok(Box::new(TermQuery::new(term, IndexRecordOption::Basic)));
            }
            let number = parse_number(path, value)?;
            let stored = match value_type {
                ValueType::Float {
                    single_precision: true,
                } => f64::from(number as f32),
                ValueType::Integer { .. } if number.fract() != 0.0 => {
                    return Ok(Box::new(EmptyQuery));
                }
                _ => number,
            };
            // The inverted index holds numbers normalised (integral floats as i64), so the
            // term is built the same way; this is a posting-list lookup, not a column scan.
            let mut term = json_term(field, path);
            match NumericalValue::F64(stored).normalize() {
                NumericalValue::I64(n) => term.append_type_and_fast_value(n),
                NumericalValue::U64(n) => term.append_type_and_fast_value(n),
                NumericalValue::F64(n) => term.append_type_and_fast_value(n),
            }
            Ok(Box::new(TermQuery::new(term, IndexRecordOption::Basic)))
        }
        ValueType::Date { .. } => {
            // Dates are indexed at second precision; the fast column keeps milliseconds.
            let bound = numeric_bound(ctx, path, value_type, value, false)?;
            let upper = numeric_bound(ctx, path, value_type, value, true)?;
            Ok(Box::new(ConstScoreQuery::new(
                Box::new(RangeQuery::new(
                    Bound::Included(bound),
                    Bound::Included(upper),
                )),
                1.0,
            )))
        }
    }
}

/// A JSON number, or a string holding one.
fn parse_number(path: &str, value: &Value) -> Result<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        parsing(format!(
            "failed to parse [{}] as a number for field [{path}]",
            value_text(value)
        ))
    })
}

/// A typed bound term for numbers and dates.
fn numeric_bound(
    ctx: &QueryContext<'_>,
    path: &str,
    value_type: &ValueType,
    value: &Value,
    round_up: bool,
) -> Result<Term> {
    let mut term = json_term(ctx.schema.values, path);
    match value_type {
        ValueType::Integer { .. } | ValueType::Float { .. } => {
            let number = parse_number(path, value)?;
            if matches!(value_type, ValueType::Integer { .. })
                && number.fract() == 0.0
                && number.abs() < 9.0e18
            {
                term.append_type_and_fast_value(number as i64);
            } else {
                term.append_type_and_fast_value(number);
            }
        }
        ValueType::Date { format } => {
            let millis = match value {
                Value::Number(number) => number.as_f64().map(|n| n as i64),
                Value::String(text) => parse_date_math(text, ctx.now_millis, round_up, format),
                _ => None,
            }
            .ok_or_else(|| {
                parsing(format!(
                    "failed to parse date field [{}] with format [{format}]",
                    value_text(value)
                ))
            })?;
            term.append_type_and_fast_value(DateTime::from_timestamp_millis(millis));
        }
        ValueType::Keyword { .. } | ValueType::Ip => term.append_type_and_str(&value_text(value)),
        ValueType::Boolean => {
            return Err(parsing(format!(
                "range queries are not supported on boolean field [{path}]"
            )));
        }
    }
    Ok(term)
}

fn id_query(ctx: &QueryContext<'_>, id: &str) -> BoxQuery {
    Box::new(TermQuery::new(
        Term::from_field_text(ctx.schema.id, id),
        IndexRecordOption::Basic,
    ))
}

fn exists_query(ctx: &QueryContext<'_>, field: &str) -> BoxQuery {
    let query: BoxQuery = match ctx.leaves.get(field) {
        Some(LeafKind::Value(_)) => Box::new(ExistsQuery::new(
            crate::search::aggs::column_name(field),
            false,
        )),
        _ => {
            let term = Term::from_field_text(ctx.schema.field_names, field);
            Box::new(TermQuery::new(term, IndexRecordOption::Basic))
        }
    };
    Box::new(ConstScoreQuery::new(query, 1.0))
}

fn terms_query(ctx: &QueryContext<'_>, body: &Value) -> Result<BoxQuery> {
    let (field, values) = single_field("terms", body)?;
    let values = values.as_array().ok_or_else(|| {
        parsing(format!(
            "[terms] query requires an array of values for [{field}]"
        ))
    })?;
    let mut clauses = Vec::with_capacity(values.len());
    for value in values {
        clauses.push((Occur::Should, exact_query(ctx, &field, value)?));
    }
    Ok(boosted(
        Box::new(ConstScoreQuery::new(
            Box::new(BooleanQuery::new(clauses)),
            1.0,
        )),
        body,
    ))
}

fn range_query(ctx: &QueryContext<'_>, body: &Value) -> Result<BoxQuery> {
    let (field, params) = single_field("range", body)?;
    let params = params
        .as_object()
        .ok_or_else(|| parsing("[range] query malformed"))?;
    let value_type = match ctx.leaves.get(&field) {
        None => return Ok(Box::new(EmptyQuery)),
        Some(LeafKind::Text(_)) => {
            return Err(Error::IllegalArgument(format!(
                "range queries on text field [{field}] are not supported; use a keyword field"
            )));
        }
        Some(LeafKind::Value(value_type)) => value_type.clone(),
    };
    let value_type = match (&value_type, params.get("format").and_then(Value::as_str)) {
        (ValueType::Date { .. }, Some(format)) => ValueType::Date {
            format: format.to_string(),
        },
        _ => value_type,
    };
    let mut lower = Bound::Unbounded;
    let mut upper = Bound::Unbounded;
    for (key, value) in params {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "gte" | "from" => {
                lower = Bound::Included(numeric_bound(ctx, &field, &value_type, value, false)?)
            }
            "gt" => lower = Bound::Excluded(numeric_bound(ctx, &field, &value_type, value, true)?),
            "lte" | "to" => {
                upper = Bound::Included(numeric_bound(ctx, &field, &value_type, value, true)?)
            }
            "lt" => upper = Bound::Excluded(numeric_bound(ctx, &field, &value_type, value, false)?),
            "format" | "boost" | "time_zone" | "relation" | "include_lower" | "include_upper" => {}
            other => return Err(parsing(format!("[range] query does not support [{other}]"))),
        }
    }
    if matches!((&lower, &upper), (Bound::Unbounded, Bound::Unbounded)) {
        return Ok(exists_query(ctx, &field));
    }
    let query: BoxQuery = Box::new(ConstScoreQuery::new(
        Box::new(RangeQuery::new(lower, upper)),
        1.0,
    ));
    Ok(boosted(query, &Value::Object(params.clone())))
}

/// `minimum_should_match` (`2`, `-1`, `75%`, `-25%`) resolved against `clauses` optional clauses.
fn minimum_should_match(spec: &Value, clauses: usize) -> Result<usize> {
    let text = value_text(spec);
    let text = text.trim();
    let resolved = if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 = percent
            .parse()
            .map_err(|_| parsing(format!("invalid minimum_should_match [{text}]")))?;
        let count = (clauses as f64 * percent.abs() / 100.0).floor() as i64;
        if percent < 0.0 {
            clauses as i64 - count
        } else {
            count
        }
    } else {
        let count: i64 = text
            .parse()
            .map_err(|_| parsing(format!("invalid minimum_should_match [{text}]")))?;
        if count < 0 {
            clauses as i64 + count
        } else {
            count
        }
    };
    Ok(resolved.clamp(0, clauses as i64) as usize)
}

fn match_query(ctx: &QueryContext<'_>, body: &Value, phrase: bool) -> Result<BoxQuery> {
    let kind = if phrase { "match_phrase" } else { "match" };
    let (field, params) = single_field(kind, body)?;
    let text = param_or_value(params, "query");
    let query = match_field(ctx, &field, &text, params, phrase)?;
    Ok(boosted(query, params))
}

fn match_field(
    ctx: &QueryContext<'_>,
    field: &str,
    text: &Value,
    params: &Value,
    phrase: bool,
) -> Result<BoxQuery> {
    let analyzer = match ctx.leaves.get(field) {
        None if field != "_id" => return Ok(Box::new(EmptyQuery)),
        Some(LeafKind::Text(analyzer)) => *analyzer,
        _ => return exact_query(ctx, field, text),
    };
    let tokens = analyze(ctx, analyzer, &value_text(text));
    if tokens.is_empty() {
        return Ok(Box::new(EmptyQuery));
    }
    if tokens.len() == 1 {
        let term = text_term(ctx, analyzer, field, &tokens[0].1);
        return Ok(Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)));
    }
    if phrase {
        let slop = params.get("slop").and_then(Value::as_u64).unwrap_or(0) as u32;
        let terms = tokens
            .iter()
            .map(|(position, token)| (*position, text_term(ctx, analyzer, field, token)))
            .collect();
        return Ok(Box::new(PhraseQuery::new_with_offset_and_slop(terms, slop)));
    }
    let and = params
        .get("operator")
        .and_then(Value::as_str)
        .is_some_and(|op| op.eq_ignore_ascii_case("and"));
    let occur = if and { Occur::Must } else { Occur::Should };
    let clauses: Vec<(Occur, BoxQuery)> = tokens
        .iter()
        .map(|(_, token)| -> (Occur, BoxQuery) {
            (
                occur,
                Box::new(TermQuery::new(
                    text_term(ctx, analyzer, field, token),
                    IndexRecordOption::WithFreqs,
                )),
            )
        })
        .collect();
    let count = clauses.len();
    match params.get("minimum_should_match") {
        Some(spec) if !and => {
            let minimum = minimum_should_match(spec, count)?.max(1);
            Ok(Box::new(BooleanQuery::with_minimum_required_clauses(
                clauses, minimum,
            )))
        }
        _ => Ok(Box::new(BooleanQuery::new(clauses))),
    }
}

/// Expands `["title^2", "body*"]` (or none: every text and keyword field) to fields and boosts.
fn expand_fields(ctx: &QueryContext<'_>, fields: Option<&Value>) -> Vec<(String, f32)> {
    let specs: Vec<String> = match fields {
        Some(Value::Array(items)) => items.iter().map(value_text).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => vec!["*".to_string()],
    };
    let mut expanded = Vec::new();
    for spec in specs {
        let (pattern, boost) = match spec.split_once('^') {
            Some((name, boost)) => (name.to_string(), boost.parse().unwrap_or(1.0)),
            None => (spec.clone(), 1.0),
        };
        if pattern.contains('*') {
            let mut names: Vec<&String> = ctx
                .leaves
                .iter()
                .filter(|(name, kind)| {
                    crate::indices::wildcard_match(&pattern, name)
                        && matches!(
                            kind,
                            LeafKind::Text(_) | LeafKind::Value(ValueType::Keyword { .. })
                        )
                })
                .map(|(name, _)| name)
                .collect();
            names.sort();
            expanded.extend(names.into_iter().map(|name| (name.clone(), boost)));
        } else {
            expanded.push((pattern, boost));
        }
    }
    expanded
}

fn multi_match(ctx: &QueryContext<'_>, body: &Value) -> Result<BoxQuery> {
    let text = body
        .get("query")
        .ok_or_else(|| parsing("[multi_match] requires [query]"))?;
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("best_fields");
    let phrase = kind == "phrase";
    let mut per_field = Vec::new();
    for (field, boost) in expand_fields(ctx, body.get("fields")) {
        let query = match_field(ctx, &field, text, body, phrase)?;
        per_field.push(if (boost - 1.0).abs() > f32::EPSILON {
            Box::new(BoostQuery::new(query, boost)) as BoxQuery
        } else {
            query
        });
    }
    if per_field.is_empty() {
        return Ok(Box::new(EmptyQuery));
    }
    match kind {
        "best_fields" | "phrase" => {
            let tie_breaker = body
                .get("tie_breaker")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as f32;
            Ok(boosted(
                Box::new(DisjunctionMaxQuery::with_tie_breaker(
                    per_field,
                    tie_breaker,
                )),
                body,
            ))
        }
        "most_fields" => Ok(boosted(
            Box::new(BooleanQuery::new(
                per_field.into_iter().map(|q| (Occur::Should, q)).collect(),
            )),
            body,
        )),
        other => Err(parsing(format!(
            "[multi_match] type [{other}] is not supported"
        ))),
    }
}

fn clauses_of(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    }
}

fn bool_query(ctx: &QueryContext<'_>, body: &Value) -> Result<BoxQuery> {
    let object = body
        .as_object()
        .ok_or_else(|| parsing("[bool] query malformed"))?;
    for key in object.keys() {
        if ![
            "must",
            "filter",
            "should",
            "must_not",
            "minimum_should_match",
            "boost",
            "_name",
        ]
        .contains(&key.as_str())
        {
            return Err(parsing(format!("[bool] query does not support [{key}]")));
        }
    }
    let mut clauses: Vec<(Occur, BoxQuery)> = Vec::new();
    for clause in clauses_of(object.get("must")) {
        clauses.push((Occur::Must, to_query(ctx, clause)?));
    }
    for clause in clauses_of(object.get("filter")) {
        clauses.push((Occur::Must, unscored(to_query(ctx, clause)?)));
    }
    let positive_required = !clauses.is_empty();
    let should = clauses_of(object.get("should"));
    let should_count = should.len();
    for clause in should {
        clauses.push((Occur::Should, to_query(ctx, clause)?));
    }
    for clause in clauses_of(object.get("must_not")) {
        clauses.push((Occur::MustNot, to_query(ctx, clause)?));
    }
    if !positive_required && should_count == 0 {
        // Only negative clauses: they exclude from "everything".
        clauses.push((
            Occur::Must,
            Box::new(ConstScoreQuery::new(Box::new(AllQuery), 0.0)),
        ));
    }
    let minimum = match object.get("minimum_should_match") {
        Some(spec) => minimum_should_match(spec, should_count)?,
        None if !positive_required && should_count > 0 => 1,
        None => 0,
    };
    let query: BoxQuery = if minimum > 0 {
        Box::new(BooleanQuery::with_minimum_required_clauses(
            clauses, minimum,
        ))
    } else {
        Box::new(BooleanQuery::new(clauses))
    };
    Ok(boosted(query, body))
}

/// A filter clause: matches without scoring.
fn unscored(query: BoxQuery) -> BoxQuery {
    match query.downcast_ref::<TermQuery>() {
        Some(term) => Box::new(FilterTerm::new(term.term().clone())),
        None => Box::new(ConstScoreQuery::new(query, 0.0)),
    }
}

fn query_string(ctx: &QueryContext<'_>, body: &Value) -> Result<BoxQuery> {
    let text = body
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| parsing("[query_string] requires [query]"))?;
    let ast = tantivy::query_grammar::parse_query(text)
        .map_err(|_| parsing(format!("Failed to parse query [{text}]")))?;
    let default_fields = match body.get("default_field").or_else(|| body.get("fields")) {
        Some(fields) => expand_fields(ctx, Some(fields)),
        None => expand_fields(ctx, None),
    };
    let and = body
        .get("default_operator")
        .and_then(Value::as_str)
        .is_some_and(|op| op.eq_ignore_ascii_case("and"));
    let translator = QueryStringTranslator {
        ctx,
        default_fields,
        default_occur: if and { Occur::Must } else { Occur::Should },
    };
    translator.ast(&ast)
}

struct QueryStringTranslator<'a, 'b> {
    ctx: &'a QueryContext<'b>,
    default_fields: Vec<(String, f32)>,
    default_occur: Occur,
}

impl QueryStringTranslator<'_, '_> {
    fn ast(&self, ast: &UserInputAst) -> Result<BoxQuery> {
        match ast {
            UserInputAst::Clause(items) => {
                let mut clauses = Vec::with_capacity(items.len());
                for (occur, item) in items {
                    clauses.push((occur.unwrap_or(self.default_occur), self.ast(item)?));
                }
                if clauses.iter().all(|(occur, _)| *occur == Occur::MustNot) {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Ok(Box::new(BooleanQuery::new(clauses)))
            }
            UserInputAst::Boost(inner, boost) => Ok(Box::new(BoostQuery::new(
                self.ast(inner)?,
                boost.into_inner() as f32,
            ))),
            UserInputAst::Leaf(leaf) => self.leaf(leaf),
        }
    }

    fn fields(&self, field: Option<&String>) -> Vec<(String, f32)> {
        match field {
            Some(name) if name.contains('*') => {
                expand_fields(self.ctx, Some(&Value::String(name.clone())))
            }
            Some(name) => vec![(name.clone(), 1.0)],
            None => self.default_fields.clone(),
        }
    }

    fn per_field(
        &self,
        field: Option<&String>,
        build: impl Fn(&str) -> Result<BoxQuery>,
    ) -> Result<BoxQuery> {
        let mut queries = Vec::new();
        for (name, boost) in self.fields(field) {
            let query = build(&name)?;
            queries.push(if (boost - 1.0).abs() > f32::EPSILON {
                Box::new(BoostQuery::new(query, boost)) as BoxQuery
            } else {
                query
            });
        }
        Ok(match queries.len() {
            0 => Box::new(EmptyQuery),
            1 => queries.remove(0),
            _ => Box::new(DisjunctionMaxQuery::new(queries)),
        })
    }

    fn leaf(&self, leaf: &UserInputLeaf) -> Result<BoxQuery> {
        let ctx = self.ctx;
        match leaf {
            UserInputLeaf::All => Ok(Box::new(AllQuery)),
            UserInputLeaf::Literal(literal) => {
                let phrase = Value::String(literal.phrase.clone());
                self.per_field(literal.field_name.as_ref(), |field| {
                    if literal.prefix {
                        pattern_query(ctx, field, &format!("{}.*", regex_escape(&literal.phrase)))
                    } else if literal.delimiter == Delimiter::None
                        && literal.phrase.contains(['*', '?'])
                    {
                        pattern_query(ctx, field, &wildcard_to_regex(&literal.phrase))
                    } else {
                        let quoted = literal.delimiter == Delimiter::DoubleQuotes;
                        let mut params = Map::new();
                        params.insert("slop".into(), Value::from(literal.slop));
                        match_field(ctx, field, &phrase, &Value::Object(params), quoted)
                    }
                })
            }
            UserInputLeaf::Range {
                field,
                lower,
                upper,
            } => self.per_field(field.as_ref(), |name| {
                let mut params = Map::new();
                match lower {
                    UserInputBound::Inclusive(v) => {
                        params.insert("gte".into(), Value::String(v.clone()));
                    }
                    UserInputBound::Exclusive(v) => {
                        params.insert("gt".into(), Value::String(v.clone()));
                    }
                    UserInputBound::Unbounded => {}
                }
                match upper {
                    UserInputBound::Inclusive(v) => {
                        params.insert("lte".into(), Value::String(v.clone()));
                    }
                    UserInputBound::Exclusive(v) => {
                        params.insert("lt".into(), Value::String(v.clone()));
                    }
                    UserInputBound::Unbounded => {}
                }
                let mut body = Map::new();
                body.insert(name.to_string(), Value::Object(params));
                range_query(ctx, &Value::Object(body))
            }),
            UserInputLeaf::Set { field, elements } => self.per_field(field.as_ref(), |name| {
                let mut clauses = Vec::new();
                for element in elements {
                    clauses.push((
                        Occur::Should,
                        exact_query(ctx, name, &Value::String(element.clone()))?,
                    ));
                }
                Ok(Box::new(BooleanQuery::new(clauses)) as BoxQuery)
            }),
            UserInputLeaf::Exists { field } => Ok(exists_query(ctx, field)),
            #[allow(unreachable_patterns)]
            _ => Err(parsing("unsupported query_string syntax")),
        }
    }
}

/// Escapes every non-alphanumeric character for the regex engine tantivy's automata use.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:x}}}", c as u32));
        }
    }
    out
}

fn wildcard_to_regex(pattern: &str) -> String {
    let mut out = String::new();
    for c in pattern.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            other => out.push_str(&regex_escape(&other.to_string())),
        }
    }
    out
}

/// Prefix and wildcard matching over one field's terms.
fn pattern_query(ctx: &QueryContext<'_>, path: &str, value_regex: &str) -> Result<BoxQuery> {
    let field = match ctx.leaves.get(path) {
        None => return Ok(Box::new(EmptyQuery)),
        Some(LeafKind::Text(analyzer)) => ctx.schema.text_field(*analyzer),
        Some(LeafKind::Value(ValueType::Keyword { .. } | ValueType::Ip)) => ctx.schema.values,
        Some(LeafKind::Value(_)) => {
            return Err(Error::IllegalArgument(format!(
                "prefix and wildcard queries need a keyword or text field, [{path}] is neither"
            )));
        }
    };
    let mut term = json_term(field, path);
    term.append_type_and_str("");
    let prefix = term.serialized_value_bytes().to_vec();
    let prefix_text = String::from_utf8(prefix.clone())
        .map_err(|_| Error::Internal("non-utf8 json path".into()))?;
    let regex = tantivy_fst::Regex::new(&format!("{}{}", regex_escape(&prefix_text), value_regex))
        .map_err(|err| parsing(format!("invalid pattern for [{path}]: {err}")))?;
    Ok(Box::new(ConstScoreQuery::new(
        Box::new(JsonPatternQuery {
            field,
            prefix,
            regex: Arc::new(regex),
        }),
        1.0,
    )))
}

/// Matches terms of one JSON path against an automaton, scanning only that path's terms.
#[derive(Clone)]
struct JsonPatternQuery {
    field: Field,
    prefix: Vec<u8>,
    regex: Arc<tantivy_fst::Regex>,
}

impl std::fmt::Debug for JsonPatternQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonPatternQuery")
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

impl Query for JsonPatternQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(
            AutomatonWeight::<tantivy_fst::Regex>::new_for_json_path(
                self.field,
                self.regex.clone(),
                &self.prefix,
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_should_match_forms() {
        assert_eq!(minimum_should_match(&Value::from(2), 4).ok(), Some(2));
        assert_eq!(minimum_should_match(&Value::from("-1"), 4).ok(), Some(3));
        assert_eq!(minimum_should_match(&Value::from("75%"), 4).ok(), Some(3));
        assert_eq!(minimum_should_match(&Value::from("-25%"), 4).ok(), Some(3));
        assert!(minimum_should_match(&Value::from("lots"), 4).is_err());
    }

    #[test]
    fn wildcard_translation_escapes_literals() {
        assert_eq!(wildcard_to_regex("a*b?"), "a.*b.");
        assert_eq!(wildcard_to_regex("a.b"), "a\\x{2e}b");
    }
}
