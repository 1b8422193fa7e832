//! Search: parses a search request, runs it on every shard of the target indices
//! (query-then-fetch), merges hits and aggregations, and renders the Elasticsearch response.

pub mod aggs;
pub mod collector;
mod filter_term;
pub mod prune;
pub mod query;
pub mod source_filter;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{
    AggContextParams, AggregationLimitsGuard, DistributedAggregationCollector,
};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, Query};
use tantivy::{DocAddress, Searcher, TantivyDocument};

use self::collector::{
    ShardHits, SortSpec, SortValue, SortedHit, SortedTopCollector, compare_keys,
};
use self::query::QueryContext;
use self::source_filter::SourceFilter;
use crate::error::{Error, Result, illegal, parsing};
use crate::index::IndexService;
use crate::mapping::{FieldType, LeafKind, ValueType};
use crate::plugins::PluginHost;
use crate::plugins::pruning::{PruneCandidate, PruneQuery, select_shards};
use crate::plugins::roles;
use crate::shard::Shard;

/// A parsed search request (body and URL parameters combined).
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: Value,
    pub from: usize,
    pub size: usize,
    pub sort: Vec<(String, bool)>,
    pub source: SourceFilter,
    pub aggs: Option<Value>,
    /// `None`: do not track; `Some(n)`: count exactly up to `n`.
    pub track_total_hits: Option<u64>,
    pub search_after: Option<Vec<Value>>,
    pub track_scores: bool,
    pub seq_no_primary_term: bool,
    pub version: bool,
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            query: json!({"match_all": {}}),
            from: 0,
            size: 10,
            sort: Vec::new(),
            source: SourceFilter::all(),
            aggs: None,
            track_total_hits: Some(10_000),
            search_after: None,
            track_scores: false,
            seq_no_primary_term: false,
            version: false,
        }
    }
}

fn usize_param(value: &Value, name: &str) -> Result<usize> {
    match value {
        Value::Number(number) => number.as_u64().map(|n| n as usize),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        parsing(format!(
            "[{name}] must be a non-negative integer, got {value}"
        ))
    })
}

fn parse_sort_entry(entry: &Value, out: &mut Vec<(String, bool)>) -> Result<()> {
    match entry {
        Value::String(spec) => {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                let (field, order) = part.split_once(':').unwrap_or((part, ""));
                let descending = match order {
                    "" => field == "_score",
                    "asc" => false,
                    "desc" => true,
                    other => return Err(parsing(format!("unknown sort order [{other}]"))),
                };
                out.push((field.to_string(), descending));
            }
        }
        Value::Object(object) => {
            for (field, spec) in object {
                let order = match spec {
                    Value::String(order) => order.as_str(),
                    Value::Object(params) => params
                        .get("order")
                        .and_then(Value::as_str)
                        .unwrap_or(if field == "_score" { "desc" } else { "asc" }),
                    _ => return Err(parsing(format!("malformed sort for [{field}]"))),
                };
                let descending = match order {
                    "asc" => false,
                    "desc" => true,
                    other => return Err(parsing(format!("unknown sort order [{other}]"))),
                };
                out.push((field.clone(), descending));
            }
        }
        Value::Array(items) => {
            for item in items {
                parse_sort_entry(item, out)?;
            }
        }
        other => return Err(parsing(format!("malformed sort {other}"))),
    }
    Ok(())
}

fn parse_track_total_hits(value: &Value) -> Result<Option<u64>> {
    match value {
        Value::Bool(true) => Ok(Some(u64::MAX)),
        Value::Bool(false) => Ok(None),
        Value::Number(number) => number
            .as_u64()
            .map(Some)
            .ok_or_else(|| parsing("[track_total_hits] must be positive")),
        Value::String(text) if text == "true" => Ok(Some(u64::MAX)),
        Value::String(text) if text == "false" => Ok(None),
        Value::String(text) => text
            .parse()
            .map(Some)
            .map_err(|_| parsing("[track_total_hits] must be a boolean or an integer")),
        other => Err(parsing(format!(
            "[track_total_hits] must be a boolean or an integer, got {other}"
        ))),
    }
}

impl SearchRequest {
    /// Builds a request from the JSON body and URL parameters (parameters win, like ES).
    pub fn parse(body: &Value, params: &HashMap<String, String>) -> Result<SearchRequest> {
        let mut request = SearchRequest::default();
        match body {
            Value::Null => {}
            Value::Object(object) => {
                for (key, value) in object {
                    match key.as_str() {
                        "query" => request.query = value.clone(),
                        "from" => request.from = usize_param(value, "from")?,
                        "size" => request.size = usize_param(value, "size")?,
                        "sort" => parse_sort_entry(value, &mut request.sort)?,
                        "_source" => request.source = SourceFilter::parse(value)?,
                        "aggs" | "aggregations" => request.aggs = Some(value.clone()),
                        "track_total_hits" => {
                            request.track_total_hits = parse_track_total_hits(value)?
                        }
                        "search_after" => {
                            let values = value
                                .as_array()
                                .ok_or_else(|| parsing("[search_after] must be an array"))?;
                            request.search_after = Some(values.clone());
                        }
                        "track_scores" => request.track_scores = value.as_bool().unwrap_or(false),
                        "seq_no_primary_term" => {
                            request.seq_no_primary_term = value.as_bool().unwrap_or(false)
                        }
                        "version" => request.version = value.as_bool().unwrap_or(false),
                        "timeout" | "stored_fields" | "explain" | "highlight" | "min_score" => {}
                        other => {
                            return Err(parsing(format!(
                                "Unknown key for a START_OBJECT in [{other}]."
                            )));
                        }
                    }
                }
            }
            other => {
                return Err(parsing(format!(
                    "request body must be an object, got {other}"
                )));
            }
        }
        if let Some(q) = params.get("q") {
            let mut query_string = Map::new();
            query_string.insert("query".into(), Value::String(q.clone()));
            if let Some(field) = params.get("df") {
                query_string.insert("default_field".into(), Value::String(field.clone()));
            }
            if let Some(operator) = params.get("default_operator") {
                query_string.insert("default_operator".into(), Value::String(operator.clone()));
            }
            request.query = json!({ "query_string": query_string });
        }
        if let Some(size) = params.get("size") {
            request.size = usize_param(&Value::String(size.clone()), "size")?;
        }
        if let Some(from) = params.get("from") {
            request.from = usize_param(&Value::String(from.clone()), "from")?;
        }
        if let Some(sort) = params.get("sort") {
            request.sort.clear();
            parse_sort_entry(&Value::String(sort.clone()), &mut request.sort)?;
        }
        if let Some(track) = params.get("track_total_hits") {
            request.track_total_hits = parse_track_total_hits(&Value::String(track.clone()))?;
        }
        if let Some(filter) = SourceFilter::from_params(
            params.get("_source").map(String::as_str),
            params.get("_source_includes").map(String::as_str),
            params.get("_source_excludes").map(String::as_str),
        ) {
            request.source = filter;
        }
        if params
            .get("seq_no_primary_term")
            .is_some_and(|v| v == "true")
        {
            request.seq_no_primary_term = true;
        }
        if params.get("version").is_some_and(|v| v == "true") {
            request.version = true;
        }
        Ok(request)
    }
}

/// A shard to search, with the view the search reads.
struct ShardTarget {
    index: Arc<IndexService>,
    shard: Arc<Shard>,
    searcher: Searcher,
}

/// The targets of one index: `targets[start..end]`, with the index's settings.
struct IndexRun<'a> {
    index: &'a IndexService,
    start: usize,
    end: usize,
    settings: Arc<crate::index::IndexSettings>,
}

/// Time-series pruning: asks each index's pruning plugin (`plugins::roles`) which shards can
/// match the query's required time range. A failure keeps every shard, unless the plugin fails
/// closed: then the search is refused.
fn prune_targets(
    targets: &[ShardTarget],
    runs: &[IndexRun<'_>],
    query: &Value,
    plugins: &PluginHost,
    scope: &SearchScope<'_>,
    now_millis: i64,
) -> Result<Vec<bool>> {
    let mut keep = vec![true; targets.len()];
    // Runs per (plugin, timestamp field); a search spans few of them.
    let mut groups: Vec<(&str, &str, Vec<&IndexRun<'_>>)> = Vec::new();
    for run in runs.iter().filter(|run| run.start < run.end) {
        let Some(plugin) = roles::choose(
            run.settings.pruning_plugin.as_deref(),
            scope.cluster_pruning,
            roles::SHIPPED_PRUNING,
        ) else {
            continue;
        };
        let field = run.settings.timestamp_field.as_str();
        match groups
            .iter_mut()
            .find(|(p, f, _)| *p == plugin && *f == field)
        {
            Some((_, _, members)) => members.push(run),
            None => groups.push((plugin, field, vec![run])),
        }
    }
    for (plugin_name, field, members) in groups {
        let Some(range) = prune::required_time_range(query, field, now_millis) else {
            continue;
        };
        let Some(plugin) = plugins.get(plugin_name).filter(|plugin| plugin.enabled()) else {
            continue;
        };
        let column = aggs::column_name(field);
        let mut index_names: Vec<&str> = Vec::with_capacity(members.len());
        let mut positions: Vec<usize> = Vec::new();
        let mut candidates: Vec<PruneCandidate> = Vec::new();
        for run in members.into_iter().filter(|run| timestamp_prunable(run)) {
            let index = index_names.len() as u32;
            index_names.push(run.index.name());
            for (position, target) in targets.iter().enumerate().take(run.end).skip(run.start) {
                positions.push(position);
                candidates.push(PruneCandidate {
                    index,
                    shard: target.shard.id.shard,
                    stats: target.shard.time_stats.get(&target.searcher, &column),
                });
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let prune_query = PruneQuery {
            index_pattern: scope.expression,
            timestamp_field: field,
            range,
        };
        match select_shards(&plugin, prune_query, &index_names, &candidates) {
            Ok(selected) => {
                for &position in &positions {
                    keep[position] = false;
                }
                for chosen in selected {
                    keep[positions[chosen as usize]] = true;
                }
            }
            Err(err) if plugin.limits().fail_closed => {
                return Err(Error::PluginFailed(format!(
                    "{err}; the plugin fails closed, so the search was refused"
                )));
            }
            Err(err) => {
                tracing::warn!(plugin = plugin_name, error = %err, "pruning failed; searching every shard")
            }
        }
    }
    Ok(keep)
}

/// Bounds are only meaningful for a date or numeric timestamp (or one not mapped yet, whose
/// shards are empty); an index mapping it otherwise is never skipped.
fn timestamp_prunable(run: &IndexRun<'_>) -> bool {
    let mapping = run.index.meta.mapping();
    matches!(
        mapping
            .field(&run.settings.timestamp_field)
            .map(|field| &field.field_type),
        Some(
            FieldType::Date { .. }
                | FieldType::Long
                | FieldType::Integer
                | FieldType::Short
                | FieldType::Byte,
        ) | None
    )
}

/// One shard's query-phase result.
struct ShardResult {
    index: Arc<IndexService>,
    shard: Arc<Shard>,
    searcher: Searcher,
    hits: ShardHits,
    max_score: Option<f32>,
    aggs: Option<IntermediateAggregationResults>,
}

/// The sort specs for one index (field names become columns).
fn sort_specs(
    request: &SearchRequest,
    leaves: &HashMap<String, LeafKind>,
) -> Result<Vec<SortSpec>> {
    request
        .sort
        .iter()
        .map(|(field, descending)| match field.as_str() {
            "_score" => Ok(SortSpec::Score {
                descending: *descending,
            }),
            "_doc" => Ok(SortSpec::Doc),
            field => Ok(SortSpec::Field {
                column: aggs::field_column(leaves, field)?,
                descending: *descending,
            }),
        })
        .collect()
}

fn search_after_keys(
    request: &SearchRequest,
    leaves: &HashMap<String, LeafKind>,
) -> Result<Option<Vec<SortValue>>> {
    let Some(values) = &request.search_after else {
        return Ok(None);
    };
    if values.len() != request.sort.len() {
        return Err(illegal(format!(
            "search_after has {} value(s) but sort has {}",
            values.len(),
            request.sort.len()
        )));
    }
    let keys = values
        .iter()
        .zip(&request.sort)
        .map(|(value, (field, _))| match value {
            Value::Null => SortValue::Missing,
            Value::Number(number) if number.is_i64() => {
                SortValue::Int(number.as_i64().unwrap_or_default())
            }
            Value::Number(number) => SortValue::Float(number.as_f64().unwrap_or_default()),
            Value::String(text) => match leaves.get(field) {
                Some(LeafKind::Value(ValueType::Date { format })) => {
                    crate::mapping::dates::parse_date(text, format)
                        .map(SortValue::Int)
                        .unwrap_or(SortValue::Str(text.clone()))
                }
                _ => SortValue::Str(text.clone()),
            },
            other => SortValue::Str(other.to_string()),
        })
        .collect();
    Ok(Some(keys))
}

fn sort_value_json(value: &SortValue) -> Value {
    match value {
        SortValue::Missing => Value::Null,
        SortValue::Int(n) => json!(n),
        SortValue::Float(f) => json!(f),
        SortValue::Str(s) => json!(s),
    }
}

/// Runs the query phase on one shard.
fn query_shard(
    target: ShardTarget,
    query: &dyn Query,
    specs: &[SortSpec],
    search_after: Option<Vec<SortValue>>,
    request: &SearchRequest,
    aggs: Option<&Aggregations>,
) -> Result<ShardResult> {
    let started = Instant::now();
    let ShardTarget {
        index,
        shard,
        searcher,
    } = target;
    let limit = request.from + request.size;
    let score_sorted = specs.is_empty();
    let (hits, max_score) = if score_sorted && search_after.is_none() {
        let (docs, total) = searcher.search(
            query,
            &(TopDocs::with_limit(limit.max(1)).order_by_score(), Count),
        )?;
        let max_score = docs.first().map(|(score, _)| *score);
        let hits = docs
            .into_iter()
            .take(limit)
            .map(|(score, address)| SortedHit {
                keys: vec![SortValue::Float(f64::from(score))],
                score,
                address,
            })
            .collect();
        (
            ShardHits {
                hits,
                total: total as u64,
            },
            max_score,
        )
    } else {
        let specs = if score_sorted {
            vec![SortSpec::Score { descending: true }]
        } else {
            specs.to_vec()
        };
        let scoring = score_sorted
            || request.track_scores
            || specs.iter().any(|s| matches!(s, SortSpec::Score { .. }));
        let collector = SortedTopCollector {
            specs,
            limit,
            search_after,
            scoring,
        };
        let hits = searcher.search(query, &collector)?;
        let max_score = if scoring {
            hits.hits.iter().map(|h| h.score).reduce(f32::max)
        } else {
            None
        };
        (hits, max_score)
    };
    let aggs = match aggs {
        Some(aggs) => {
            let context = AggContextParams::new(
                AggregationLimitsGuard::default(),
                shard.tantivy_index().tokenizers().clone(),
            );
            let collector = DistributedAggregationCollector::from_aggs(aggs.clone(), context);
            Some(searcher.search(query, &collector)?)
        }
        None => None,
    };
    shard
        .counters
        .query_total
        .fetch_add(1, AtomicOrdering::Relaxed);
    shard.counters.query_time_micros.fetch_add(
        started.elapsed().as_micros() as u64,
        AtomicOrdering::Relaxed,
    );
    Ok(ShardResult {
        index,
        shard,
        searcher,
        hits,
        max_score,
        aggs,
    })
}

/// Where a search runs: the indices it resolved to, the expression the user wrote, the plugin
/// host (for time-series pruning), and which of this node's shards to search (`None`: all).
pub struct SearchScope<'a> {
    pub indices: &'a [Arc<IndexService>],
    pub expression: &'a str,
    pub plugins: Option<&'a PluginHost>,
    /// The cluster's `plugins.pruning`, for indices that name no pruning plugin themselves.
    pub cluster_pruning: Option<&'a str>,
    /// `(position in indices, shard number)` pairs, ordered by position.
    pub shards: Option<&'a [(usize, u32)]>,
}

/// What one node's shards found: the top `from + size` hits of each, already fetched, and the
/// partial aggregations. The coordinator merges the phases of every node.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardPhase {
    pub total_shards: usize,
    pub skipped_shards: usize,
    pub total: u64,
    pub max_score: Option<f32>,
    pub hits: Vec<PhaseHit>,
    pub aggs: Option<IntermediateAggregationResults>,
    /// The aggregation request as translated for the searched mappings (for the final reduce)
    /// and as the user wrote it (to check every node translated it alike).
    pub agg_request: Option<(Value, Aggregations)>,
    pub sort_specs: Option<Vec<SortSpec>>,
}

/// A fetched hit with what orders it among all shards' hits.
#[derive(Debug, Serialize, Deserialize)]
pub struct PhaseHit {
    pub keys: Vec<SortValue>,
    /// `(index, shard)` and rank within the shard, the tie-breakers after the sort keys.
    pub shard: (String, u32),
    pub rank: usize,
    pub hit: Hit,
}

/// The query-and-fetch phase on this node's shards in `scope`.
pub fn execute_local(scope: &SearchScope<'_>, request: &SearchRequest) -> Result<ShardPhase> {
    let indices = scope.indices;
    let window = request.from + request.size;
    if request.search_after.is_some() && request.sort.is_empty() {
        return Err(illegal("search_after requires a sort"));
    }
    let now_millis = chrono::Utc::now().timestamp_millis();
    // Pin one point-in-time view per shard: pruning decides on the same view the query reads.
    let mut targets: Vec<ShardTarget> = Vec::new();
    let mut runs: Vec<IndexRun> = Vec::with_capacity(indices.len());
    let mut wanted = scope.shards.map(|wanted| wanted.iter().peekable());
    for (position, index) in indices.iter().enumerate() {
        let settings = index.meta.settings();
        let max_window = settings.max_result_window;
        if window > max_window {
            return Err(illegal(format!(
                "Result window is too large, from + size must be less than or equal to: [{max_window}] but was [{window}]. See the scroll api for a more efficient way to request large data sets."
            )));
        }
        let start = targets.len();
        let target = |shard: Arc<Shard>| ShardTarget {
            index: index.clone(),
            searcher: shard.searcher(),
            shard,
        };
        match &mut wanted {
            None => targets.extend(index.local_shards().into_iter().map(target)),
            Some(wanted) => {
                while let Some((_, number)) = wanted.next_if(|(at, _)| *at == position) {
                    targets.extend(index.shard(*number).map(target));
                }
            }
        }
        runs.push(IndexRun {
            index,
            start,
            end: targets.len(),
            settings,
        });
    }
    let keep = match scope.plugins {
        Some(plugins) => {
            prune_targets(&targets, &runs, &request.query, plugins, scope, now_millis)?
        }
        None => vec![true; targets.len()],
    };
    let total_shards = targets.len();
    let skipped_shards = keep.iter().filter(|kept| !**kept).count();
    let mut targets = targets.into_iter().zip(keep.iter().copied());
    let mut results = Vec::new();
    let mut agg_request: Option<(Value, Aggregations)> = None;
    let mut specs_for_merge: Option<Vec<SortSpec>> = None;
    let mut translated_any = false;
    for (index, run) in indices.iter().zip(&runs) {
        let positions = run.start..run.end;
        let index_targets = targets.by_ref().take(positions.len());
        // An index whose every shard was pruned needs no translation.
        if keep[positions].iter().all(|kept| !kept) {
            index_targets.for_each(drop);
            continue;
        }
        let Some(translated) = translate_for(index, request, now_millis)? else {
            index_targets.for_each(drop);
            continue;
        };
        translated_any = true;
        agree_on_aggregations(&mut agg_request, &translated.aggs)?;
        specs_for_merge.get_or_insert_with(|| translated.specs.clone());
        let aggs = translated.aggs.map(|(_, aggs)| aggs);
        for (target, kept) in index_targets {
            if !kept {
                continue;
            }
            results.push(query_shard(
                target,
                translated.query.as_ref(),
                &translated.specs,
                translated.search_after.clone(),
                request,
                aggs.as_ref(),
            )?);
        }
    }
    // Nothing searched here: the first index still shapes the (empty) aggregations and sort,
    // and refuses a query that cannot run.
    if !translated_any
        && let Some(index) = indices.first()
        && let Some(translated) = translate_for(index, request, now_millis)?
    {
        agg_request = translated.aggs;
        specs_for_merge = Some(translated.specs);
    }
    let total: u64 = results.iter().map(|r| r.hits.total).sum();
    let max_score = results.iter().filter_map(|r| r.max_score).reduce(f32::max);
    let explicit_sort = !request.sort.is_empty();
    let mut hits = Vec::new();
    let mut aggs: Option<IntermediateAggregationResults> = None;
    for result in &mut results {
        for (rank, hit) in std::mem::take(&mut result.hits.hits)
            .into_iter()
            .take(request.from + request.size)
            .enumerate()
        {
            hits.push(PhaseHit {
                hit: fetch_hit(result, hit.address, &hit, request, explicit_sort)?,
                keys: hit.keys,
                shard: (result.index.name().to_string(), result.shard.id.shard),
                rank,
            });
        }
        if let Some(part) = result.aggs.take() {
            match &mut aggs {
                Some(acc) => acc.merge_fruits(part)?,
                None => aggs = Some(part),
            }
        }
    }
    Ok(ShardPhase {
        total_shards,
        skipped_shards,
        total,
        max_score,
        hits,
        aggs,
        agg_request,
        sort_specs: specs_for_merge,
    })
}

/// A search request as it reads against one index's mapping.
struct Translated {
    query: Box<dyn tantivy::query::Query>,
    specs: Vec<SortSpec>,
    search_after: Option<Vec<SortValue>>,
    aggs: Option<(Value, Aggregations)>,
}

fn translate_for(
    index: &IndexService,
    request: &SearchRequest,
    now_millis: i64,
) -> Result<Option<Translated>> {
    let Some((query, leaves)) = index_query(index, &request.query, now_millis)? else {
        return Ok(None);
    };
    Ok(Some(Translated {
        query,
        specs: sort_specs(request, &leaves)?,
        search_after: search_after_keys(request, &leaves)?,
        aggs: request
            .aggs
            .as_ref()
            .map(|aggs| aggs::translate(&leaves, aggs))
            .transpose()?,
    }))
}

/// Every searched index must read the aggregations alike, or their partial results cannot
/// merge; the first translation is kept.
fn agree_on_aggregations(
    kept: &mut Option<(Value, Aggregations)>,
    current: &Option<(Value, Aggregations)>,
) -> Result<()> {
    if let (Some((previous, _)), Some((current, _))) = (&*kept, current)
        && previous != current
    {
        return Err(illegal(
            "aggregations resolve to different field types across the searched indices",
        ));
    }
    if kept.is_none() {
        kept.clone_from(current);
    }
    Ok(())
}

/// Merges the phases of every node that searched (and the failures of shards that could not
/// be searched) into the response.
pub fn merge(
    request: &SearchRequest,
    phases: Vec<ShardPhase>,
    failures: Vec<Value>,
    started: Instant,
) -> Result<SearchResponse> {
    let mut agg_request: Option<(Value, Aggregations)> = None;
    let mut specs: Option<Vec<SortSpec>> = None;
    let mut total = 0;
    let mut max_score: Option<f32> = None;
    let mut total_shards = failures.len();
    let mut skipped_shards = 0;
    let mut hits = Vec::new();
    let mut intermediate: Option<IntermediateAggregationResults> = None;
    for phase in phases {
        agree_on_aggregations(&mut agg_request, &phase.agg_request)?;
        if specs.is_none() {
            specs = phase.sort_specs;
        }
        total += phase.total;
        max_score = match (max_score, phase.max_score) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        total_shards += phase.total_shards;
        skipped_shards += phase.skipped_shards;
        hits.extend(phase.hits);
        if let Some(part) = phase.aggs {
            match &mut intermediate {
                Some(acc) => acc.merge_fruits(part)?,
                None => intermediate = Some(part),
            }
        }
    }
    let specs = match specs {
        Some(specs) if !specs.is_empty() => specs,
        _ => vec![SortSpec::Score { descending: true }],
    };
    hits.sort_by(|a, b| {
        compare_keys(&specs, &a.keys, &b.keys)
            .then_with(|| a.shard.cmp(&b.shard))
            .then_with(|| a.rank.cmp(&b.rank))
    });
    let page: Vec<Hit> = hits
        .into_iter()
        .skip(request.from)
        .take(request.size)
        .map(|hit| hit.hit)
        .collect();
    let explicit_sort = !request.sort.is_empty();
    let total = request.track_total_hits.map(|limit| {
        if total > limit {
            TotalHits {
                value: limit,
                relation: "gte",
            }
        } else {
            TotalHits {
                value: total,
                relation: "eq",
            }
        }
    });
    let show_scores = (!explicit_sort || request.track_scores) && request.size > 0;
    let mut aggregations = None;
    if let Some((_, agg_request)) = agg_request {
        let final_result = intermediate
            .unwrap_or_default()
            .into_final_result(agg_request, AggregationLimitsGuard::default())
            .map_err(|err| Error::SearchPhase(format!("aggregation failed: {err}")))?;
        aggregations = Some(
            serde_json::to_value(final_result).map_err(|err| Error::Internal(err.to_string()))?,
        );
    }
    let failed = failures.len();
    Ok(SearchResponse {
        took: started.elapsed().as_millis() as u64,
        timed_out: false,
        shards: ShardsSummary {
            total: total_shards,
            successful: total_shards - failed,
            skipped: skipped_shards,
            failed,
            failures,
        },
        hits: HitsSection {
            total,
            max_score: if show_scores { max_score } else { None },
            hits: page,
        },
        aggregations,
    })
}

/// A search response, serialized straight to bytes (stored `_source` is embedded as is).
#[derive(Debug, Serialize)]
pub struct SearchResponse {
    pub took: u64,
    pub timed_out: bool,
    #[serde(rename = "_shards")]
    pub shards: ShardsSummary,
    pub hits: HitsSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Value>,
}

/// `_shards` of a search response.
#[derive(Debug, Serialize)]
pub struct ShardsSummary {
    pub total: usize,
    pub successful: usize,
    pub skipped: usize,
    pub failed: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct HitsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<TotalHits>,
    pub max_score: Option<f32>,
    pub hits: Vec<Hit>,
}

#[derive(Debug, Serialize)]
pub struct TotalHits {
    pub value: u64,
    pub relation: &'static str,
}

/// One search hit.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hit {
    #[serde(rename = "_index")]
    pub index: String,
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_score")]
    pub score: Option<f32>,
    #[serde(rename = "_version", skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(rename = "_seq_no", skip_serializing_if = "Option::is_none")]
    pub seq_no: Option<i64>,
    #[serde(rename = "_primary_term", skip_serializing_if = "Option::is_none")]
    pub primary_term: Option<u64>,
    #[serde(rename = "_source", skip_serializing_if = "Option::is_none")]
    pub source: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<Vec<Value>>,
}

fn fetch_hit(
    result: &ShardResult,
    address: DocAddress,
    hit: &SortedHit,
    request: &SearchRequest,
    explicit_sort: bool,
) -> Result<Hit> {
    let doc: TantivyDocument = result.searcher.doc(address)?;
    let stored = result.shard.stored_doc(&doc);
    let source = if !request.source.enabled {
        None
    } else if request.source.is_everything() {
        // Stored sources are the JSON a client sent: embed them without a parse/serialize trip.
        let text = String::from_utf8(stored.source.to_vec())
            .map_err(|err| Error::Internal(err.to_string()))?;
        Some(RawValue::from_string(text).map_err(|err| Error::Internal(err.to_string()))?)
    } else {
        let source: Value = serde_json::from_slice(&stored.source)
            .map_err(|err| Error::Internal(err.to_string()))?;
        match request.source.apply(source) {
            Some(filtered) => Some(
                serde_json::value::to_raw_value(&filtered)
                    .map_err(|err| Error::Internal(err.to_string()))?,
            ),
            None => None,
        }
    };
    Ok(Hit {
        index: result.index.name().to_string(),
        score: (!explicit_sort || request.track_scores).then_some(hit.score),
        version: request.version.then_some(stored.version),
        seq_no: request.seq_no_primary_term.then_some(stored.seq_no),
        primary_term: request.seq_no_primary_term.then_some(stored.primary_term),
        source,
        sort: explicit_sort.then(|| hit.keys.iter().map(sort_value_json).collect()),
        id: stored.id,
    })
}

/// A query translated for one index, with that index's leaf fields.
type IndexQuery = (Box<dyn Query>, HashMap<String, LeafKind>);

/// Translates `query` for one index; `None` for an index without shards.
fn index_query(index: &IndexService, query: &Value, now_millis: i64) -> Result<Option<IndexQuery>> {
    let leaves = index.meta.mapping().leaves();
    let Some(first) = index.local_shards().into_iter().next() else {
        return Ok(None);
    };
    let ctx = QueryContext {
        schema: &first.schema,
        leaves: &leaves,
        tokenizers: first.tantivy_index().tokenizers(),
        now_millis,
    };
    let translated: Box<dyn Query> = match query {
        Value::Null => Box::new(AllQuery),
        body => query::to_query(&ctx, body)?,
    };
    Ok(Some((translated, leaves)))
}
