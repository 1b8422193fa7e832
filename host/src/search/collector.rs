//! Top-hits collection sorted by fields (and `_score`), with `search_after`, as a tantivy
//! collector whose per-shard results the coordinator merges.

use std::cmp::Ordering;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, ColumnType, MonotonicallyMappableToU64, StrColumn};
use tantivy::{DateTime, DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

/// One sort criterion.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum SortSpec {
    Score {
        descending: bool,
    },
    /// Index order (`_doc`).
    Doc,
    Field {
        column: String,
        descending: bool,
    },
}

/// A sort value; `Missing` always sorts last, as Elasticsearch's default `_last` does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SortValue {
    Missing,
    Int(i64),
    Float(f64),
    Str(String),
}

impl SortValue {
    fn compare(&self, other: &SortValue) -> Ordering {
        match (self, other) {
            (SortValue::Int(a), SortValue::Int(b)) => a.cmp(b),
            (SortValue::Float(a), SortValue::Float(b)) => a.total_cmp(b),
            (SortValue::Int(a), SortValue::Float(b)) => (*a as f64).total_cmp(b),
            (SortValue::Float(a), SortValue::Int(b)) => a.total_cmp(&(*b as f64)),
            (SortValue::Str(a), SortValue::Str(b)) => a.cmp(b),
            (SortValue::Int(_) | SortValue::Float(_), SortValue::Str(_)) => Ordering::Less,
            (SortValue::Str(_), SortValue::Int(_) | SortValue::Float(_)) => Ordering::Greater,
            (SortValue::Missing, SortValue::Missing) => Ordering::Equal,
            (SortValue::Missing, _) | (_, SortValue::Missing) => Ordering::Equal,
        }
    }
}

/// Orders two hits' keys: `Less` means `a` comes first.
pub fn compare_keys(specs: &[SortSpec], a: &[SortValue], b: &[SortValue]) -> Ordering {
    for ((spec, left), right) in specs.iter().zip(a).zip(b) {
        let ordering = match (left, right) {
            (SortValue::Missing, SortValue::Missing) => Ordering::Equal,
            (SortValue::Missing, _) => Ordering::Greater,
            (_, SortValue::Missing) => Ordering::Less,
            _ => {
                let natural = left.compare(right);
                let descending = match spec {
                    SortSpec::Score { descending } | SortSpec::Field { descending, .. } => {
                        *descending
                    }
                    SortSpec::Doc => false,
                };
                if descending {
                    natural.reverse()
                } else {
                    natural
                }
            }
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// A collected hit.
#[derive(Debug, Clone)]
pub struct SortedHit {
    pub keys: Vec<SortValue>,
    pub score: Score,
    pub address: DocAddress,
}

/// Per-shard result: the best `limit` hits and the total match count.
#[derive(Debug, Default)]
pub struct ShardHits {
    pub hits: Vec<SortedHit>,
    pub total: u64,
}

/// Collects the best `limit` hits by `specs`, skipping hits not after `search_after`.
pub struct SortedTopCollector {
    pub specs: Vec<SortSpec>,
    pub limit: usize,
    pub search_after: Option<Vec<SortValue>>,
    pub scoring: bool,
}

enum KeySource {
    Score,
    Doc,
    Numeric {
        column: Column<u64>,
        column_type: ColumnType,
        descending: bool,
    },
    Str {
        column: StrColumn,
        descending: bool,
    },
    Missing,
}

impl KeySource {
    fn value(&self, doc: DocId, score: Score, segment: SegmentOrdinal) -> SortValue {
        match self {
            KeySource::Score => SortValue::Float(f64::from(score)),
            KeySource::Doc => SortValue::Int((i64::from(segment) << 32) | i64::from(doc)),
            KeySource::Numeric {
                column,
                column_type,
                descending,
            } => {
                let values = column.values_for_doc(doc);
                let raw = if *descending {
                    values.max()
                } else {
                    values.min()
                };
                match raw {
                    None => SortValue::Missing,
                    Some(raw) => match column_type {
                        ColumnType::I64 => SortValue::Int(i64::from_u64(raw)),
                        ColumnType::U64 => SortValue::Int(i64::try_from(raw).unwrap_or(i64::MAX)),
                        ColumnType::F64 => SortValue::Float(f64::from_u64(raw)),
                        ColumnType::Bool => SortValue::Int(i64::from(raw != 0)),
                        ColumnType::DateTime => {
                            SortValue::Int(DateTime::from_u64(raw).into_timestamp_millis())
                        }
                        _ => SortValue::Missing,
                    },
                }
            }
            KeySource::Str { column, descending } => {
                let mut ords = column.term_ords(doc);
                let ord = if *descending {
                    ords.last()
                } else {
                    ords.next()
                };
                let mut text = String::new();
                match ord {
                    Some(ord) if column.ord_to_str(ord, &mut text).unwrap_or(false) => {
                        SortValue::Str(text)
                    }
                    _ => SortValue::Missing,
                }
            }
            KeySource::Missing => SortValue::Missing,
        }
    }
}

pub struct SortedTopSegmentCollector {
    sources: Vec<KeySource>,
    specs: Vec<SortSpec>,
    limit: usize,
    search_after: Option<Vec<SortValue>>,
    segment: SegmentOrdinal,
    hits: Vec<SortedHit>,
    total: u64,
}

impl Collector for SortedTopCollector {
    type Fruit = ShardHits;
    type Child = SortedTopSegmentCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        let mut sources = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            sources.push(match spec {
                SortSpec::Score { .. } => KeySource::Score,
                SortSpec::Doc => KeySource::Doc,
                SortSpec::Field { column, descending } => {
                    let fast_fields = reader.fast_fields();
                    if let Some(str_column) = fast_fields.str(column)? {
                        KeySource::Str {
                            column: str_column,
                            descending: *descending,
                        }
                    } else if let Some((numeric, column_type)) = fast_fields.u64_lenient(column)? {
                        KeySource::Numeric {
                            column: numeric,
                            column_type,
                            descending: *descending,
                        }
                    } else {
                        KeySource::Missing
                    }
                }
            });
        }
        Ok(SortedTopSegmentCollector {
            sources,
            specs: self.specs.clone(),
            limit: self.limit,
            search_after: self.search_after.clone(),
            segment,
            hits: Vec::new(),
            total: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        self.scoring
    }

    fn merge_fruits(&self, fruits: Vec<ShardHits>) -> tantivy::Result<ShardHits> {
        let mut merged = ShardHits::default();
        for fruit in fruits {
            merged.total += fruit.total;
            merged.hits.extend(fruit.hits);
        }
        sort_and_truncate(&self.specs, &mut merged.hits, self.limit);
        Ok(merged)
    }
}

/// Sorts hits by keys (ties by address, as Elasticsearch breaks ties by doc) and keeps `limit`.
pub fn sort_and_truncate(specs: &[SortSpec], hits: &mut Vec<SortedHit>, limit: usize) {
    hits.sort_by(|a, b| {
        compare_keys(specs, &a.keys, &b.keys).then_with(|| a.address.cmp(&b.address))
    });
    hits.truncate(limit);
}

impl SegmentCollector for SortedTopSegmentCollector {
    type Fruit = ShardHits;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.total += 1;
        if self.limit == 0 {
            return;
        }
        let keys: Vec<SortValue> = self
            .sources
            .iter()
            .map(|source| source.value(doc, score, self.segment))
            .collect();
        if let Some(after) = &self.search_after
            && compare_keys(&self.specs, &keys, after) != Ordering::Greater
        {
            return;
        }
        self.hits.push(SortedHit {
            keys,
            score,
            address: DocAddress::new(self.segment, doc),
        });
        if self.hits.len() >= self.limit.saturating_mul(2).max(64) {
            sort_and_truncate(&self.specs, &mut self.hits, self.limit);
        }
    }

    fn harvest(mut self) -> ShardHits {
        sort_and_truncate(&self.specs, &mut self.hits, self.limit);
        ShardHits {
            hits: self.hits,
            total: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_values_sort_last_in_both_directions() {
        let asc = [SortSpec::Field {
            column: "x".into(),
            descending: false,
        }];
        let desc = [SortSpec::Field {
            column: "x".into(),
            descending: true,
        }];
        let one = [SortValue::Int(1)];
        let missing = [SortValue::Missing];
        assert_eq!(compare_keys(&asc, &one, &missing), Ordering::Less);
        assert_eq!(compare_keys(&desc, &one, &missing), Ordering::Less);
        assert_eq!(
            compare_keys(&desc, &[SortValue::Int(2)], &one),
            Ordering::Less
        );
    }
}
