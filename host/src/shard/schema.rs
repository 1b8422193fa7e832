//! The fixed tantivy schema every shard uses, and the conversion of a parsed document into a
//! tantivy document.
//!
//! Mappings grow at run time but a tantivy schema cannot, so user fields live in JSON fields
//! keyed by their full dotted path (dots escaped, never expanded): one JSON field per text
//! analyzer, and one fast, indexed JSON field for exact values (keywords, numbers, dates,
//! booleans). The mapping, not the schema, says which of them holds a field.

use tantivy::schema::{
    FAST, Field, IndexRecordOption, JsonObjectOptions, STORED, STRING, Schema, TextFieldIndexing,
};
use tantivy::tokenizer::{
    LowerCaser, RawTokenizer, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, WhitespaceTokenizer,
};
use tantivy::{DateTime, Index, TantivyDocument, schema::OwnedValue};

use crate::mapping::Analyzer;
use crate::mapping::document::{IndexedValue, ParsedDocument};

/// Name of the exact-values JSON field.
pub const VALUES_FIELD: &str = "_values";

/// Field handles of the shard schema.
#[derive(Clone)]
pub struct ShardSchema {
    pub schema: Schema,
    pub id: Field,
    pub source: Field,
    pub seq_no: Field,
    pub version: Field,
    pub primary_term: Field,
    pub field_names: Field,
    pub values: Field,
    text: [(Analyzer, Field); 3],
}

/// The tantivy field name holding text analyzed by `analyzer`.
pub fn text_field_name(analyzer: Analyzer) -> String {
    format!("_text_{}", analyzer.name())
}

/// Escapes dots so a full dotted path is one JSON key, as it is stored.
pub fn escape_path(path: &str) -> String {
    path.replace('.', "\\.")
}

impl ShardSchema {
    pub fn build() -> ShardSchema {
        let mut builder = Schema::builder();
        let id = builder.add_text_field("_id", STRING | STORED);
        let source = builder.add_bytes_field("_source", STORED);
        let seq_no = builder.add_i64_field("_seq_no", FAST | STORED);
        let version = builder.add_i64_field("_version", STORED);
        let primary_term = builder.add_u64_field("_primary_term", STORED);
        let field_names = builder.add_text_field("_field_names", STRING);
        let values_options = JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_fast(Some("raw"));
        let values = builder.add_json_field(VALUES_FIELD, values_options);
        let text = Analyzer::ALL.map(|analyzer| {
            let options = JsonObjectOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(analyzer.name())
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            );
            (
                analyzer,
                builder.add_json_field(&text_field_name(analyzer), options),
            )
        });
        ShardSchema {
            schema: builder.build(),
            id,
            source,
            seq_no,
            version,
            primary_term,
            field_names,
            values,
            text,
        }
    }

    /// Looks the handles up in an index created by [`ShardSchema::build`].
    pub fn text_field(&self, analyzer: Analyzer) -> Field {
        self.text
            .iter()
            .find(|(candidate, _)| *candidate == analyzer)
            .map(|(_, field)| *field)
            .unwrap_or(self.text[0].1)
    }

    /// Builds the tantivy document for one indexed operation (moving the parsed values in).
    pub fn document(
        &self,
        id: &str,
        source: &[u8],
        meta: DocMeta,
        parsed: ParsedDocument,
    ) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        doc.add_text(self.id, id);
        doc.add_bytes(self.source, source);
        doc.add_i64(self.seq_no, meta.seq_no);
        doc.add_i64(self.version, meta.version);
        doc.add_u64(self.primary_term, meta.primary_term);
        for name in &parsed.field_names {
            doc.add_text(self.field_names, name);
        }
        if !parsed.values.is_empty() {
            let entries = parsed
                .values
                .into_iter()
                .map(|(path, values)| (path, many(values.into_iter().map(to_owned_value))))
                .collect();
            doc.add_field_value(self.values, &OwnedValue::Object(entries));
        }
        let mut text = parsed.text;
        for (analyzer, field) in &self.text {
            if let Some(fields) = text.remove(analyzer.name()) {
                let entries = fields
                    .into_iter()
                    .map(|(path, texts)| (path, many(texts.into_iter().map(OwnedValue::Str))))
                    .collect();
                doc.add_field_value(*field, &OwnedValue::Object(entries));
            }
        }
        doc
    }
}

/// The per-operation metadata stored beside the source.
#[derive(Debug, Clone, Copy)]
pub struct DocMeta {
    pub seq_no: i64,
    pub version: i64,
    pub primary_term: u64,
}

/// One value stays itself; several become an array.
fn many(values: impl ExactSizeIterator<Item = OwnedValue>) -> OwnedValue {
    let mut values = values;
    if values.len() == 1
        && let Some(single) = values.next()
    {
        return single;
    }
    OwnedValue::Array(values.collect())
}

fn to_owned_value(value: IndexedValue) -> OwnedValue {
    match value {
        IndexedValue::Str(text) => OwnedValue::Str(text),
        IndexedValue::I64(number) => OwnedValue::I64(number),
        IndexedValue::F64(number) => OwnedValue::F64(number),
        IndexedValue::Bool(flag) => OwnedValue::Bool(flag),
        IndexedValue::Date(millis) => OwnedValue::Date(DateTime::from_timestamp_millis(millis)),
    }
}

/// Registers Shoal's analyzers on an index under their mapping names.
pub fn register_tokenizers(index: &Index) {
    let manager = index.tokenizers();
    manager.register(
        "standard",
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(255))
            .filter(LowerCaser)
            .build(),
    );
    manager.register(
        "whitespace",
        TextAnalyzer::builder(WhitespaceTokenizer::default()).build(),
    );
    manager.register(
        "keyword",
        TextAnalyzer::builder(RawTokenizer::default()).build(),
    );
    manager.register(
        "raw",
        TextAnalyzer::builder(RawTokenizer::default()).build(),
    );
}
