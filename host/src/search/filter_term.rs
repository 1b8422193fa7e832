//! A term used as a filter: it matches without adding to the score, and it stays a term scorer,
//! so a conjunction of terms keeps tantivy's specialised term-by-term intersection (a
//! constant-score wrapper hides the term scorer and falls back to the generic one).

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, TermQuery, Weight};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, Score, SegmentReader, Term};

/// Matches the documents holding `term`, each with score 0.
#[derive(Clone, Debug)]
pub struct FilterTerm(TermQuery);

impl FilterTerm {
    pub fn new(term: Term) -> FilterTerm {
        // Frequencies and positions only feed scores.
        FilterTerm(TermQuery::new(term, IndexRecordOption::Basic))
    }
}

impl Query for FilterTerm {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let inner = self.0.weight(scoring)?;
        Ok(Box::new(ZeroScore(inner)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor);
    }
}

/// The term's weight with every score multiplied by zero.
struct ZeroScore(Box<dyn Weight>);

impl Weight for ZeroScore {
    fn scorer(&self, reader: &SegmentReader, _boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        self.0.scorer(reader, 0.0)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)?;
        Ok(Explanation::new("filter (no score)", 0.0))
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        self.0.count(reader)
    }
}
