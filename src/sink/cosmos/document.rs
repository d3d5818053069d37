//! Rows to Cosmos DB documents: the deterministic id, the partition key value, the size check,
//! and the grouping of a unit's documents into requests.
//!
//! Every check here runs before anything is sent, so a document Cosmos DB would refuse (no
//! usable id, no partition key value, over 2 MB) fails alone with a reason, and the rest of the
//! unit goes on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::mapping::Row;
use crate::sink::{Batch, Failure};

/// Cosmos DB's limit on one document.
pub const MAX_DOCUMENT_BYTES: usize = 2 * 1024 * 1024;

/// Operations a transactional batch may hold.
pub const MAX_BATCH_OPERATIONS: usize = 100;

/// The largest batch body we send: under the 2 MB request limit, with room for the batch's
/// own framing (each operation adds a few dozen bytes).
pub const MAX_BATCH_BYTES: usize = 1_900_000;

/// `{field}` placeholders and text: how a document's id is built from its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct IdTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// A field path, split on `.`.
    Field(Vec<String>),
}

impl IdTemplate {
    /// Parses `{order_id}`, `{region}-{order.id}`; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<IdTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(format!("`{text}` has a `}}` without its `{{`"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("`{text}` has a `{{` without its `}}`"));
            };
            let field = &rest[open + 1..open + close];
            if field.is_empty() || field.contains('{') {
                return Err(format!("`{text}` has an empty or nested placeholder"));
            }
            parts.push(Part::Field(field.split('.').map(str::to_string).collect()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}` has a `}}` without its `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!(
                "`{text}` names no field: every document would get the same id (write e.g. \"{{order_id}}\")"
            ));
        }
        if let Some(bad) = parts.iter().find_map(|p| match p {
            Part::Text(t) => t.chars().find(|c| FORBIDDEN_IN_ID.contains(c)),
            Part::Field(_) => None,
        }) {
            return Err(format!(
                "`{text}` contains `{bad}`, which Cosmos DB ids cannot"
            ));
        }
        Ok(IdTemplate {
            text: text.to_string(),
            parts,
        })
    }

    /// The top-level fields the template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(path) => path.first().map(String::as_str),
            Part::Text(_) => None,
        })
    }

    /// The id of `document`: strings as they are, integers in decimal. Anything else (a
    /// missing field, null, a fraction, an object) is not an id.
    pub fn render(&self, document: &impl Fields) -> Result<String, String> {
        let mut id = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => id.push_str(text),
                Part::Field(path) => {
                    let value = lookup(document, path);
                    match value {
                        Some(Value::String(text)) => id.push_str(text),
                        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                            id.push_str(&n.to_string())
                        }
                        other => {
                            return Err(format!(
                                "id template `{}`: field `{}` is {}, not a string or an integer",
                                self.text,
                                path.join("."),
                                describe(other)
                            ));
                        }
                    }
                }
            }
        }
        if id.is_empty() {
            return Err(format!("id template `{}` gave an empty id", self.text));
        }
        if id.len() > 255 {
            return Err(format!(
                "id `{}…` is {} bytes long; Cosmos DB allows 255",
                id.chars().take(40).collect::<String>(),
                id.len()
            ));
        }
        if let Some(bad) = id.chars().find(|c| FORBIDDEN_IN_ID.contains(c)) {
            return Err(format!(
                "id `{id}` contains `{bad}`, which Cosmos DB ids cannot"
            ));
        }
        Ok(id)
    }
}

/// Characters Cosmos DB refuses in ids.
const FORBIDDEN_IN_ID: [char; 4] = ['/', '\\', '?', '#'];

/// A partition key path: `/customerId`, or `/address/country` for a nested field.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionKeyPath {
    text: String,
    segments: Vec<String>,
}

impl PartitionKeyPath {
    /// Parses `/name` or `/a/b`.
    pub fn parse(text: &str) -> Result<PartitionKeyPath, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` must start with `/`, e.g. \"/customerId\""
            ));
        };
        let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("`{text}` has an empty segment"));
        }
        Ok(PartitionKeyPath {
            text: text.to_string(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `/id`: the partition key is then the document's rendered id, which every
    /// document has, whatever its row holds.
    pub fn is_document_id(&self) -> bool {
        self.segments == ["id"]
    }

    /// The top-level field the path reads.
    pub fn field(&self) -> &str {
        &self.segments[0]
    }

    /// The document's partition key value. A missing or null field fails: such a document
    /// would land in the container's "undefined" or null partition, which is nearly always a
    /// data or mapping mistake (and a mapped field that is missing becomes null).
    pub fn value_of(&self, document: &impl Fields) -> Result<KeyValue, String> {
        let value = lookup(document, &self.segments);
        match value {
            Some(Value::String(text)) => Ok(KeyValue::String(text.clone())),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(n) => Ok(KeyValue::Integer(n)),
                None => n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(KeyValue::Number)
                    .ok_or_else(|| format!("partition key `{}`: {n} is out of range", self.text)),
            },
            Some(Value::Bool(b)) => Ok(KeyValue::Bool(*b)),
            other => Err(format!(
                "partition key `{}`: the document's field is {}, not a string, number or boolean",
                self.text,
                describe(other)
            )),
        }
    }
}

/// A partition key value, as JSON gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// Any other number.
    Number(f64),
    /// true or false.
    Bool(bool),
}

impl KeyValue {
    /// A stable text for grouping documents of one partition.
    fn group(&self) -> String {
        match self {
            KeyValue::String(s) => format!("s:{s}"),
            KeyValue::Integer(n) => format!("n:{}", *n as f64),
            KeyValue::Number(f) => format!("n:{f}"),
            KeyValue::Bool(b) => format!("b:{b}"),
        }
    }
}

/// One document ready to send.
#[derive(Debug, Clone)]
pub struct Document {
    /// The row's index in the unit.
    pub index: usize,
    /// Its id.
    pub id: String,
    /// Its partition key value.
    pub key: KeyValue,
    /// Its JSON text, with `id` set.
    pub body: Box<RawValue>,
}

/// A request to send: one upsert, or a transactional batch of upserts in one partition.
#[derive(Debug)]
pub enum Request {
    /// A lone document of its partition.
    Single(Document),
    /// Two or more documents of one partition, within the batch limits.
    Batch(Vec<Document>),
}

impl Request {
    /// The documents it writes.
    pub fn documents(&self) -> &[Document] {
        match self {
            Request::Single(document) => std::slice::from_ref(document),
            Request::Batch(documents) => documents,
        }
    }
}

/// How the sink turns rows into documents.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The id template.
    pub id: IdTemplate,
    /// The partition key path.
    pub key: PartitionKeyPath,
}

impl Shape {
    /// The document for one row: its fields, `id` set to the rendered template.
    pub fn document(&self, index: usize, row: &Row) -> Result<Document, String> {
        let id = self.id.render(row)?;
        let key = if self.key.is_document_id() {
            KeyValue::String(id.clone())
        } else {
            self.key.value_of(row)?
        };
        let body =
            serde_json::value::to_raw_value(&WithId { row, id: &id }).map_err(|e| e.to_string())?;
        if body.get().len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "document `{id}` is {} bytes, over Cosmos DB's limit of {MAX_DOCUMENT_BYTES} bytes",
                body.get().len()
            ));
        }
        Ok(Document {
            index,
            id,
            key,
            body,
        })
    }

    /// The unit's requests, and the rows that cannot be documents. Documents are grouped by
    /// partition key value (in order of first appearance); within a unit a later row with the
    /// same id and key replaces an earlier one, as its upsert would.
    pub fn requests(&self, batch: &Batch) -> (Vec<Request>, Vec<Failure>) {
        let mut failures = Vec::new();
        let mut groups: Vec<Vec<Document>> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        // (group, id) -> position in the group, so a later row for an id replaces the earlier.
        let mut position_of: HashMap<(usize, String), usize> = HashMap::new();
        for (index, row) in &batch.rows {
            match self.document(*index, row) {
                Ok(document) => {
                    let group = *group_of.entry(document.key.group()).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    let documents = &mut groups[group];
                    match position_of.entry((group, document.id.clone())) {
                        Entry::Occupied(at) => documents[*at.get()] = document,
                        Entry::Vacant(slot) => {
                            slot.insert(documents.len());
                            documents.push(document);
                        }
                    }
                }
                Err(reason) => failures.push(Failure {
                    index: *index,
                    reason,
                }),
            }
        }
        let mut requests = Vec::new();
        for documents in groups {
            requests.extend(split(documents));
        }
        (requests, failures)
    }
}

/// A partition's documents as requests: batches of at most [`MAX_BATCH_OPERATIONS`] and
/// [`MAX_BATCH_BYTES`]; a document left alone goes as a single upsert.
pub fn split(documents: Vec<Document>) -> Vec<Request> {
    let mut requests = Vec::new();
    let mut current: Vec<Document> = Vec::new();
    let mut bytes = 0;
    for document in documents {
        let size = document.body.get().len();
        if !current.is_empty()
            && (current.len() == MAX_BATCH_OPERATIONS || bytes + size > MAX_BATCH_BYTES)
        {
            requests.push(request(std::mem::take(&mut current)));
            bytes = 0;
        }
        bytes += size;
        current.push(document);
    }
    if !current.is_empty() {
        requests.push(request(current));
    }
    requests
}

fn request(mut documents: Vec<Document>) -> Request {
    if documents.len() == 1 {
        Request::Single(documents.remove(0))
    } else {
        Request::Batch(documents)
    }
}

fn lookup<'a>(document: &'a impl Fields, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(document.field(first)?, |value, key| value.get(key))
}

/// A document's top-level fields, wherever they are held: a mapped row, or a JSON object.
pub trait Fields {
    /// The field `name`, if the document has it.
    fn field(&self, name: &str) -> Option<&Value>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

impl Fields for Row {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// A row written as a document: its fields in order, with `id` set to the rendered id (in
/// the row's `id` column's place, or last). Serialised straight from the row, so no
/// intermediate object is built.
struct WithId<'a> {
    row: &'a Row,
    id: &'a str,
}

impl Serialize for WithId<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let has_id = self.row.keys().any(|name| name == "id");
        let mut map = serializer.serialize_map(Some(self.row.len() + usize::from(!has_id)))?;
        for (name, value) in self.row.keys().zip(self.row.values()) {
            if name == "id" {
                map.serialize_entry("id", self.id)?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        if !has_id {
            map.serialize_entry("id", self.id)?;
        }
        map.end()
    }
}

fn describe(value: Option<&Value>) -> &'static str {
    match value {
        None => "missing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a fraction",
        Some(Value::String(_)) => "a string",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(value: Value) -> Row {
        Row::from_object(value.as_object().unwrap().clone())
    }

    fn shape(id: &str, key: &str) -> Shape {
        Shape {
            id: IdTemplate::parse(id).unwrap(),
            key: PartitionKeyPath::parse(key).unwrap(),
        }
    }

    #[test]
    fn cosmos_id_templates_parse_and_render() {
        let template = IdTemplate::parse("{region}-{order.id}").unwrap();
        assert_eq!(template.fields().collect::<Vec<_>>(), ["region", "order"]);
        let doc = json!({"region": "eu", "order": {"id": 42}});
        assert_eq!(template.render(doc.as_object().unwrap()).unwrap(), "eu-42");
        for bad in ["", "fixed", "{", "}", "{a", "a}", "{}", "{a}/x"] {
            assert!(IdTemplate::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let template = IdTemplate::parse("{id}").unwrap();
        for (value, why) in [
            (json!({"id": {"n": 1}}), "field `id` is an object"),
            (json!({}), "field `id` is missing"),
            (json!({"id": 1.5}), "field `id` is a fraction"),
            (json!({"id": "a/b"}), "contains `/`"),
        ] {
            let error = template.render(value.as_object().unwrap()).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn cosmos_partition_key_values_and_paths() {
        assert!(PartitionKeyPath::parse("customerId").is_err());
        assert!(PartitionKeyPath::parse("/a//b").is_err());
        let path = PartitionKeyPath::parse("/address/country").unwrap();
        let doc = json!({"address": {"country": "NO"}});
        assert_eq!(
            path.value_of(doc.as_object().unwrap()).unwrap(),
            KeyValue::String("NO".into())
        );
        let error = path
            .value_of(json!({"address": {}}).as_object().unwrap())
            .unwrap_err();
        assert!(error.contains("missing"), "{error}");
        let error = path
            .value_of(json!({"address": {"country": null}}).as_object().unwrap())
            .unwrap_err();
        assert!(error.contains("null"), "{error}");
    }

    #[test]
    fn cosmos_documents_group_by_partition_and_split_at_the_limits() {
        let shape = shape("{id}", "/customer");
        let mut rows: Vec<(usize, Row)> = (0..250)
            .map(|i| (i, row(json!({"id": i, "customer": "big"}))))
            .collect();
        rows.push((250, row(json!({"id": 1000, "customer": "alone"}))));
        rows.push((251, row(json!({"id": 1001}))));
        rows.push((252, row(json!({"id": 0, "customer": "big", "v": 2}))));
        let batch = Batch {
            unit_id: "u".into(),
            rows,
            failures: Vec::new(),
            fence: None,
        };
        let (requests, failures) = shape.requests(&batch);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].index, 251);
        let sizes: Vec<(bool, usize)> = requests
            .iter()
            .map(|r| (matches!(r, Request::Batch(_)), r.documents().len()))
            .collect();
        assert_eq!(sizes, [(true, 100), (true, 100), (true, 50), (false, 1)]);
        let first = &requests[0].documents()[0];
        assert_eq!(
            first.index, 252,
            "the later row with the same id replaces the earlier"
        );
        assert_eq!(
            serde_json::from_str::<Value>(first.body.get()).unwrap(),
            json!({"id": "0", "customer": "big", "v": 2})
        );
    }

    #[test]
    fn cosmos_oversize_documents_fail_before_sending() {
        let shape = shape("{id}", "/customer");
        let big = "x".repeat(MAX_DOCUMENT_BYTES);
        let error = shape
            .document(0, &row(json!({"id": 1, "customer": "c", "blob": big})))
            .unwrap_err();
        assert!(error.contains("over Cosmos DB's limit"), "{error}");
    }

    #[test]
    fn cosmos_documents_carry_the_rendered_id_in_place() {
        let orders = shape("order-{id}", "/customer");
        let document = orders
            .document(3, &row(json!({"id": 7, "customer": "c1", "total": 1.5})))
            .unwrap();
        assert_eq!(document.id, "order-7");
        assert_eq!(document.key, KeyValue::String("c1".into()));
        assert_eq!(
            document.body.get(),
            r#"{"id":"order-7","customer":"c1","total":1.5}"#,
            "the row's id column holds the rendered id, fields keep their order"
        );
        let document = shape("{order}", "/customer")
            .document(0, &row(json!({"order": "a", "customer": "c1"})))
            .unwrap();
        assert_eq!(
            document.body.get(),
            r#"{"order":"a","customer":"c1","id":"a"}"#,
            "a row without an id column gets one, last"
        );
    }

    #[test]
    fn cosmos_documents_partitioned_on_id_take_the_rendered_id() {
        // `/id` is a common partition key; the key must be the id the document is written
        // with, not the row's own `id` field (or its absence).
        let document = shape("order-{n}", "/id")
            .document(0, &row(json!({"n": 7})))
            .unwrap();
        assert_eq!(document.key, KeyValue::String("order-7".into()));
        let document = shape("{id}", "/id")
            .document(0, &row(json!({"id": 7})))
            .unwrap();
        assert_eq!(document.key, KeyValue::String("7".into()));
    }
}
