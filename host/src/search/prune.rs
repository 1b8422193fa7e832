//! Reads the time range a query requires on an index's timestamp field, so time-series
//! pruning can skip shards that cannot match. Only required clauses count (a top-level
//! `range`, or `range`s under `bool.must`/`bool.filter` and `constant_score`): an optional
//! clause never makes a shard skippable.

use serde_json::Value;

use crate::mapping::dates::parse_date_math;

/// Inclusive bounds in epoch milliseconds; `None` is unbounded.
pub type TimeBounds = (Option<i64>, Option<i64>);

/// The range `query` requires on `field`, if any.
pub fn required_time_range(query: &Value, field: &str, now_millis: i64) -> Option<TimeBounds> {
    let object = query.as_object()?;
    let (kind, body) = object.iter().next()?;
    match kind.as_str() {
        "range" => range_bounds(body.get(field)?, now_millis),
        "constant_score" => required_time_range(body.get("filter")?, field, now_millis),
        "bool" => {
            let mut combined: Option<TimeBounds> = None;
            for key in ["must", "filter"] {
                let clauses: Vec<&Value> = match body.get(key) {
                    Some(Value::Array(items)) => items.iter().collect(),
                    Some(one) => vec![one],
                    None => Vec::new(),
                };
                for clause in clauses {
                    if let Some(bounds) = required_time_range(clause, field, now_millis) {
                        combined = Some(match combined {
                            None => bounds,
                            Some(previous) => intersect(previous, bounds),
                        });
                    }
                }
            }
            combined
        }
        _ => None,
    }
}

fn intersect(a: TimeBounds, b: TimeBounds) -> TimeBounds {
    let min = match (a.0, b.0) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let max = match (a.1, b.1) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    (min, max)
}

fn range_bounds(params: &Value, now_millis: i64) -> Option<TimeBounds> {
    let format = params
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or(crate::mapping::DEFAULT_DATE_FORMAT);
    let value = |key: &str, round_up: bool| -> Option<Option<i64>> {
        match params.get(key) {
            None | Some(Value::Null) => Some(None),
            Some(Value::Number(number)) => number.as_f64().map(|n| Some(n as i64)),
            Some(Value::String(text)) => {
                parse_date_math(text, now_millis, round_up, format).map(Some)
            }
            Some(_) => None,
        }
    };
    let mut min = value("gte", false)?.or(value("from", false)?);
    if let Some(gt) = value("gt", true)? {
        min = Some(gt.saturating_add(1));
    }
    let mut max = value("lte", true)?.or(value("to", true)?);
    if let Some(lt) = value("lt", false)? {
        max = Some(lt.saturating_sub(1));
    }
    if min.is_none() && max.is_none() {
        return None;
    }
    Some((min, max))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn required_ranges_only() {
        let query = json!({"bool": {
            "must": {"match": {"msg": "x"}},
            "filter": [{"range": {"@timestamp": {"gte": 1000, "lt": 5000}}}, {"range": {"@timestamp": {"gt": 2000}}}],
            "should": [{"range": {"@timestamp": {"gte": 0}}}],
        }});
        assert_eq!(
            required_time_range(&query, "@timestamp", 0),
            Some((Some(2001), Some(4999)))
        );
        assert_eq!(required_time_range(&query, "other", 0), None);
        let optional = json!({"bool": {"should": [{"range": {"@timestamp": {"gte": 1}}}]}});
        assert_eq!(required_time_range(&optional, "@timestamp", 0), None);
        let dated =
            json!({"range": {"@timestamp": {"gte": "1970-01-02", "lte": "1970-01-02||/d"}}});
        assert_eq!(
            required_time_range(&dated, "@timestamp", 0),
            Some((Some(86_400_000), Some(172_799_999)))
        );
    }
}
