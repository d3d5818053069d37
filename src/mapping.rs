//! Per-sink field mapping: which fields of a record become which columns, cast to what.
//!
//! A sink without `[sink.map]` gets every field under its own name. With a map, only the
//! mapped columns are written, each taken `from` a field (a dotted path reaches into nested
//! objects), optionally cast to a `type`, with a `default` for missing or null fields.
//! A record that cannot be mapped fails alone with a [`MapError`] naming field and column.

use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::settings::Problems;

/// A mapped record: column names with their values, ready for a sink. The rows of a mapped
/// sink share one list of names; a passthrough row owns its record's field names.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    names: Names,
    values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Names {
    Shared(Arc<[String]>),
    Own(Vec<String>),
}

impl Row {
    /// A row with no fields: what a sink that never reads fields gets for each record
    /// ([`crate::sink::Sink::reads_fields`]).
    pub fn empty() -> Row {
        Row {
            names: Names::Own(Vec::new()),
            values: Vec::new(),
        }
    }

    /// A row holding a JSON object's fields, in order.
    pub fn from_object(object: Map<String, Value>) -> Row {
        let (names, values) = object.into_iter().unzip();
        Row {
            names: Names::Own(names),
            values,
        }
    }

    /// The column names, in order.
    pub fn names(&self) -> &[String] {
        match &self.names {
            Names::Shared(names) => names,
            Names::Own(names) => names,
        }
    }

    /// The column names, in order.
    pub fn keys(&self) -> std::slice::Iter<'_, String> {
        self.names().iter()
    }

    /// The values, in column order.
    pub fn values(&self) -> std::slice::Iter<'_, Value> {
        self.values.iter()
    }

    /// The value of column `name`, if the row has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let at = self.names().iter().position(|n| n == name)?;
        self.values.get(at)
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for a row without columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The row as a JSON object (for tests, logs and dead letters).
    pub fn to_object(&self) -> Map<String, Value> {
        self.keys()
            .cloned()
            .zip(self.values.iter().cloned())
            .collect()
    }
}

/// How one sink maps records to rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    columns: Option<Vec<ColumnMap>>,
    /// The mapped column names, shared by every row.
    names: Arc<[String]>,
    /// The distinct top-level fields the columns read: all a record is parsed for.
    roots: Vec<String>,
    /// Per column: its index in `roots`, and whether it is that root's only reader (its value
    /// can then be moved into the row instead of copied).
    root_of: Vec<(usize, bool)>,
}

/// One `column = ...` entry of `[sink.map]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMap {
    /// Output column name.
    pub column: String,
    /// Field path in the record, split on `.`.
    pub from: Vec<String>,
    /// Cast applied to the value, if any.
    pub cast: Option<Cast>,
    /// Value used when the field is missing or null.
    pub default: Option<Value>,
    /// A missing or null field (with no default) fails the record.
    pub required: bool,
    /// The `type` as written (`varchar(64)`, `timestamptz`), for SQL sinks that create their
    /// table from the map and check the type is one of their database's.
    pub sql_type: Option<String>,
}

/// The casts a mapping can apply. SQL type names are accepted as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    /// Text; numbers and booleans are formatted, objects become JSON text.
    Text,
    /// 64-bit integer; strings are parsed, fractions are rejected.
    Integer,
    /// 64-bit float; strings are parsed.
    Real,
    /// An exact decimal: numbers stay numbers, numeric strings stay strings (so no digits are
    /// lost to floating point).
    Decimal,
    /// true/false; also 0/1 and "true"/"false"/"yes"/"no".
    Boolean,
    /// Any JSON value, kept as is.
    Json,
}

impl Cast {
    /// Parses a `type = "..."` value: a cast's own name, or a SQL type name of SQL Server,
    /// PostgreSQL or MySQL (its length or precision, `varchar(64)`, `numeric(12,2)`, aside).
    pub fn parse(name: &str) -> Option<Cast> {
        let base = name.split('(').next().unwrap_or_default();
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        Some(match base.to_ascii_lowercase().as_str() {
            "text" | "string" | "varchar" | "nvarchar" | "char" | "nchar" | "character"
            | "character varying" | "tinytext" | "mediumtext" | "longtext" | "citext" => Cast::Text,
            // Parsed by the sink for the column's real type; JSON carries them as strings.
            "date"
            | "time"
            | "datetime"
            | "datetime2"
            | "datetimeoffset"
            | "uniqueidentifier"
            | "varbinary"
            | "binary"
            | "timestamp"
            | "timestamptz"
            | "timetz"
            | "timestamp with time zone"
            | "timestamp without time zone"
            | "time with time zone"
            | "time without time zone"
            | "interval"
            | "uuid"
            | "bytea"
            | "blob"
            | "tinyblob"
            | "mediumblob"
            | "longblob"
            | "inet"
            | "year" => Cast::Text,
            "integer" | "int" | "bigint" | "smallint" | "tinyint" | "mediumint" | "int2"
            | "int4" | "int8" | "bigint unsigned" | "int unsigned" | "integer unsigned"
            | "smallint unsigned" | "tinyint unsigned" | "mediumint unsigned" => Cast::Integer,
            "real" | "float" | "double" | "double precision" | "float4" | "float8" => Cast::Real,
            "decimal" | "numeric" => Cast::Decimal,
            "boolean" | "bool" | "bit" => Cast::Boolean,
            "json" | "jsonb" => Cast::Json,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Cast::Text => "text",
            Cast::Integer => "integer",
            Cast::Real => "real",
            Cast::Decimal => "decimal",
            Cast::Boolean => "boolean",
            Cast::Json => "json",
        }
    }
}

/// Why one record could not be mapped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    /// The record is not a JSON object.
    #[error("record is not a JSON object (found {found})")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// A value could not be cast to the column's type.
    #[error("field `{from}` (column `{column}`): cannot cast {value} to {cast}")]
    Cast {
        /// Source field path.
        from: String,
        /// Target column.
        column: String,
        /// The offending value, shortened.
        value: String,
        /// The target type.
        cast: &'static str,
    },
    /// The record's text is not JSON (units are checked when decoded, so this is a bug upstream).
    #[error("record is not valid JSON: {0}")]
    Invalid(String),
    /// A required field is missing or null.
    #[error("field `{from}` (column `{column}`) is required but missing")]
    Missing {
        /// Source field path.
        from: String,
        /// Target column.
        column: String,
    },
}

impl Mapping {
    /// The mapping of a sink without `[sink.map]`: every field under its own name.
    pub fn passthrough() -> Mapping {
        Mapping {
            columns: None,
            names: Arc::from([]),
            roots: Vec::new(),
            root_of: Vec::new(),
        }
    }

    /// A mapping from explicit columns.
    pub fn from_columns(columns: Vec<ColumnMap>) -> Mapping {
        let mut roots: Vec<String> = Vec::new();
        let mut root_index = Vec::with_capacity(columns.len());
        for column in &columns {
            let root = column.from.first().cloned().unwrap_or_default();
            let index = roots.iter().position(|r| *r == root).unwrap_or_else(|| {
                roots.push(root);
                roots.len() - 1
            });
            root_index.push(index);
        }
        let root_of = columns
            .iter()
            .zip(&root_index)
            .map(|(column, &index)| {
                let readers = root_index.iter().filter(|&&i| i == index).count();
                (index, readers == 1 && column.from.len() == 1)
            })
            .collect();
        Mapping {
            names: columns.iter().map(|c| c.column.clone()).collect(),
            columns: Some(columns),
            roots,
            root_of,
        }
    }

    /// True when records pass through unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.columns.is_none()
    }

    /// The mapped columns, or `None` for a passthrough mapping.
    pub fn columns(&self) -> Option<&[ColumnMap]> {
        self.columns.as_deref()
    }

    /// True when the mapping writes `column`.
    pub fn has_column(&self, column: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|columns| columns.iter().any(|c| c.column == column))
    }

    /// Parses `[sink.map]`, adding a problem under `path` for each bad entry.
    pub fn parse(table: &toml::Table, path: &str, problems: &mut Problems) -> Option<Mapping> {
        let before = problems.clone();
        let mut columns = Vec::with_capacity(table.len());
        for (column, spec) in table {
            let at = format!("{path}.{column}");
            crate::settings::check_identifier(column, &at, problems);
            match spec {
                toml::Value::String(from) => columns.push(ColumnMap::plain(column, from)),
                toml::Value::Table(spec) => {
                    if let Some(entry) = parse_entry(column, spec, &at, problems) {
                        columns.push(entry);
                    }
                }
                other => problems.push(
                    at,
                    format!(
                        "expected a field name or {{ from, type, default }}, found {}",
                        other.type_str()
                    ),
                ),
            }
        }
        if table.is_empty() {
            problems.push(path, "an empty map would write no columns; remove [sink.map] to pass every field through");
        }
        (*problems == before).then(|| Mapping::from_columns(columns))
    }

    /// Maps one record to a row.
    pub fn apply(&self, record: Value) -> Result<Row, MapError> {
        let Value::Object(mut object) = record else {
            return Err(MapError::NotAnObject {
                found: json_type(&record),
            });
        };
        if self.columns.is_none() {
            return Ok(Row::from_object(object));
        }
        let roots = self.roots.iter().map(|r| object.swap_remove(r)).collect();
        self.row_from(roots)
    }

    /// Maps one record from its JSON text, parsing only the fields the columns read: the rest
    /// of the record is skipped, never built.
    pub fn apply_raw(&self, record: &RawValue) -> Result<Row, MapError> {
        if self.columns.is_none() {
            return passthrough_row(record);
        }
        let picker = Picker {
            roots: Some(&self.roots),
        };
        let mut reader = serde_json::Deserializer::from_str(record.get());
        match picker.deserialize(&mut reader) {
            Ok(Picked::Object(roots)) => self.row_from(roots),
            Ok(Picked::Other(found)) => Err(MapError::NotAnObject { found }),
            Ok(Picked::Fields(..)) => unreachable!("a picker of named fields gives those"),
            Err(error) => Err(MapError::Invalid(error.to_string())),
        }
    }

    /// Builds the row from the values of the roots (in `self.roots` order).
    fn row_from(&self, mut roots: Vec<Option<Value>>) -> Result<Row, MapError> {
        let Some(columns) = &self.columns else {
            unreachable!("a passthrough mapping keeps records whole");
        };
        let mut values = Vec::with_capacity(columns.len());
        for (column, &(root, sole_reader)) in columns.iter().zip(&self.root_of) {
            let found = if sole_reader {
                roots[root].take().filter(|value| !value.is_null()).map(Ok)
            } else {
                roots[root]
                    .as_ref()
                    .and_then(|value| column.from[1..].iter().try_fold(value, |v, key| v.get(key)))
                    .filter(|value| !value.is_null())
                    .map(Err)
            };
            values.push(match (found, &column.default) {
                (Some(Ok(owned)), _) => cast_owned(owned, column)?,
                (Some(Err(borrowed)), _) => cast(borrowed, column)?,
                (None, Some(default)) => default.clone(),
                (None, None) if column.required => {
                    return Err(MapError::Missing {
                        from: column.from.join("."),
                        column: column.column.clone(),
                    });
                }
                (None, None) => Value::Null,
            });
        }
        Ok(Row {
            names: Names::Shared(self.names.clone()),
            values,
        })
    }
}

/// What [`Picker`] found: the values of the wanted fields, every field (names and values in
/// order) when none were named, or the JSON type of a non-object.
enum Picked {
    Object(Vec<Option<Value>>),
    Fields(Vec<String>, Vec<Value>),
    Other(&'static str),
}

/// A pass-through row straight from the record's text: its fields are read once into the
/// row's names and values, with no map built in between. A record that names a field twice
/// (rare, and legal JSON) is read again through a map, where the last value wins as before.
fn passthrough_row(record: &RawValue) -> Result<Row, MapError> {
    let mut reader = serde_json::Deserializer::from_str(record.get());
    let fields = match (Picker { roots: None }).deserialize(&mut reader) {
        Ok(Picked::Fields(names, values)) => (names, values),
        Ok(Picked::Other(found)) => return Err(MapError::NotAnObject { found }),
        Ok(Picked::Object(_)) => unreachable!("a picker of every field gives fields"),
        Err(error) => return Err(MapError::Invalid(error.to_string())),
    };
    if has_duplicates(&fields.0) {
        let value: Value = serde_json::from_str(record.get())
            .map_err(|error| MapError::Invalid(error.to_string()))?;
        let Value::Object(object) = value else {
            unreachable!("read as an object above");
        };
        return Ok(Row::from_object(object));
    }
    Ok(Row {
        names: Names::Own(fields.0),
        values: fields.1,
    })
}

/// True when a name appears twice.
fn has_duplicates(names: &[String]) -> bool {
    if names.len() <= 16 {
        return names
            .iter()
            .enumerate()
            .any(|(index, name)| names[..index].contains(name));
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    !names.iter().all(|name| seen.insert(name.as_str()))
}

/// Reads one JSON object keeping only the fields named in `roots`; the others are skipped
/// without being built. A later duplicate field wins, as it does for a whole parse. Without
/// `roots`, keeps every field, in order (duplicates included: the caller decides).
struct Picker<'r> {
    roots: Option<&'r [String]>,
}

impl<'de> DeserializeSeed<'de> for Picker<'_> {
    type Value = Picked;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Picked, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Picker<'_> {
    type Value = Picked;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Picked, A::Error> {
        let Some(wanted_roots) = self.roots else {
            let size = map.size_hint().unwrap_or(8);
            let (mut names, mut values) = (Vec::with_capacity(size), Vec::with_capacity(size));
            while let Some(name) = map.next_key::<String>()? {
                names.push(name);
                values.push(map.next_value::<Value>()?);
            }
            return Ok(Picked::Fields(names, values));
        };
        let mut roots = vec![None; wanted_roots.len()];
        while let Some(wanted) = map.next_key_seed(FieldIndex {
            roots: wanted_roots,
        })? {
            match wanted {
                Some(index) => roots[index] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Picked::Object(roots))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Picked, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Picked::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<Picked, E> {
        Ok(Picked::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Picked, E> {
        Ok(Picked::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Picked, E> {
        Ok(Picked::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Picked, E> {
        Ok(Picked::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Picked, E> {
        Ok(Picked::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Picked, E> {
        Ok(Picked::Other("a string"))
    }
}

/// A map key as the index of the wanted field it names, compared without copying the key.
struct FieldIndex<'r> {
    roots: &'r [String],
}

impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.roots.iter().position(|root| root == key))
    }
}

impl ColumnMap {
    fn plain(column: &str, from: &str) -> ColumnMap {
        ColumnMap {
            column: column.to_string(),
            from: from.split('.').map(str::to_string).collect(),
            cast: None,
            default: None,
            required: false,
            sql_type: None,
        }
    }
}

fn parse_entry(
    column: &str,
    spec: &toml::Table,
    at: &str,
    problems: &mut Problems,
) -> Option<ColumnMap> {
    let mut entry = ColumnMap::plain(column, column);
    for (key, value) in spec {
        let field = format!("{at}.{key}");
        match (key.as_str(), value) {
            ("from", toml::Value::String(from)) if !from.is_empty() => {
                entry.from = from.split('.').map(str::to_string).collect()
            }
            ("type", toml::Value::String(name)) => match Cast::parse(name) {
                Some(cast) => {
                    entry.cast = Some(cast);
                    entry.sql_type = Some(name.trim().to_string());
                }
                None => problems.push(
                    field,
                    format!(
                        "unknown type `{name}` (expected text, integer, real, decimal, boolean or json, or a SQL type name)"
                    ),
                ),
            },
            ("default", value) => match serde_json::to_value(value) {
                Ok(value) => entry.default = Some(value),
                Err(error) => problems.push(field, format!("cannot use as a default: {error}")),
            },
            ("required", toml::Value::Boolean(required)) => entry.required = *required,
            ("from" | "type" | "required", other) => {
                problems.push(field, format!("unexpected {}", other.type_str()))
            }
            _ => problems.push(
                field,
                "unknown key (expected from, type, default or required)",
            ),
        }
    }
    Some(entry)
}

/// [`cast`] for a value the row may keep: values that need no conversion are moved, not
/// copied.
fn cast_owned(value: Value, column: &ColumnMap) -> Result<Value, MapError> {
    let keep = matches!(
        (column.cast, &value),
        (None | Some(Cast::Json), _)
            | (Some(Cast::Text), Value::String(_))
            | (Some(Cast::Decimal), Value::Number(_))
            | (Some(Cast::Boolean), Value::Bool(_))
    );
    if keep {
        Ok(value)
    } else {
        cast(&value, column)
    }
}

fn cast(value: &Value, column: &ColumnMap) -> Result<Value, MapError> {
    let Some(cast) = column.cast else {
        return Ok(value.clone());
    };
    let cast_value = match (cast, value) {
        (Cast::Json, value) => Some(value.clone()),
        (Cast::Text, Value::String(_)) => Some(value.clone()),
        (Cast::Text, Value::Number(n)) => Some(Value::String(n.to_string())),
        (Cast::Text, Value::Bool(b)) => Some(Value::String(b.to_string())),
        (Cast::Text, other) => Some(Value::String(other.to_string())),
        (Cast::Integer, Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Value::from),
        (Cast::Integer, Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        (Cast::Integer, Value::Bool(b)) => Some(Value::from(i64::from(*b))),
        (Cast::Real, Value::Number(n)) => n.as_f64().map(Value::from),
        (Cast::Real, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from),
        (Cast::Decimal, Value::Number(_)) => Some(value.clone()),
        (Cast::Decimal, Value::String(s)) => {
            is_decimal(s.trim()).then(|| Value::String(s.trim().to_string()))
        }
        (Cast::Boolean, Value::Bool(_)) => Some(value.clone()),
        (Cast::Boolean, Value::Number(n)) => match n.as_i64() {
            Some(0) => Some(Value::Bool(false)),
            Some(1) => Some(Value::Bool(true)),
            _ => None,
        },
        (Cast::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(Value::Bool(true)),
            "false" | "0" | "no" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    };
    cast_value.ok_or_else(|| MapError::Cast {
        from: column.from.join("."),
        column: column.column.clone(),
        value: shorten(&value.to_string()),
        cast: cast.name(),
    })
}

/// `-12.50`, `3`, `1e-3`: digits with an optional sign, point and exponent.
fn is_decimal(text: &str) -> bool {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let digits = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty())
        && all_digits(whole)
        && all_digits(fraction)
        && exponent.is_none_or(|e| e.parse::<i32>().is_ok())
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// What kind of JSON value `value` is, for messages (`a string`, `null`).
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(text: &str) -> Mapping {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut problems = Problems::default();
        let mapping = Mapping::parse(&table, "sink[0].map", &mut problems);
        assert!(problems.is_empty(), "{problems}");
        mapping.unwrap()
    }

    /// Maps `record` from a value and from its text; both ways must agree.
    fn both_ways(mapping: &Mapping, record: Value) -> Result<Value, MapError> {
        let raw = crate::unit::record(&record);
        let from_text = mapping.apply_raw(&raw);
        let from_value = mapping.apply(record);
        assert_eq!(from_text, from_value, "apply_raw and apply disagree");
        from_value.map(|row| Value::Object(row.to_object()))
    }

    #[test]
    fn mapping_selects_renames_casts_and_defaults() {
        let map = mapping(
            r#"
            id = "id"
            amount = { from = "total", type = "real" }
            note = { from = "comment", default = "" }
            city = "address.city"
            "#,
        );
        let row = both_ways(
            &map,
            json!({"id": 7, "total": "12.50", "extra": true, "address": {"city": "Oslo"}}),
        )
        .unwrap();
        assert_eq!(
            row,
            json!({"id": 7, "amount": 12.5, "note": "", "city": "Oslo"})
        );
    }

    #[test]
    fn mapping_passthrough_keeps_every_field() {
        let record = json!({"a": 1, "b": {"c": [1, 2]}});
        let row = both_ways(&Mapping::passthrough(), record.clone()).unwrap();
        assert_eq!(row, record);
    }

    #[test]
    fn mapping_passthrough_from_text_matches_a_whole_parse_even_for_odd_records() {
        let passthrough = Mapping::passthrough();
        let texts = [
            r#"{"b": 1, "a": {"x": [1, {"y": null}]}, "c": "é\n"}"#,
            r#"{}"#,
            // A field named twice: the last value wins, in the first one's place.
            r#"{"a": 1, "b": 2, "a": 3}"#,
        ];
        for text in texts {
            let raw = RawValue::from_string(text.to_string()).unwrap();
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                passthrough.apply_raw(&raw),
                passthrough.apply(value),
                "{text}"
            );
        }
        let wide: Map<String, Value> = (0..40)
            .map(|n| (format!("f{}", n % 30), json!(n)))
            .collect();
        let text = (0..40)
            .map(|n| format!("\"f{}\": {n}", n % 30))
            .collect::<Vec<_>>()
            .join(",");
        let raw = RawValue::from_string(format!("{{{text}}}")).unwrap();
        let row = passthrough.apply_raw(&raw).unwrap();
        assert_eq!(row.to_object(), wide, "a wide record with duplicates");
        for (text, found) in [("[1, 2]", "an array"), ("7", "a number"), ("null", "null")] {
            let raw = RawValue::from_string(text.to_string()).unwrap();
            let error = passthrough.apply_raw(&raw).unwrap_err();
            assert!(
                matches!(error, MapError::NotAnObject { found: f } if f == found),
                "{text}"
            );
        }
    }

    #[test]
    fn mapping_cast_failure_names_field_column_and_value() {
        let map = mapping(r#"amount = { from = "total", type = "real" }"#);
        let error = both_ways(&map, json!({"total": "twelve"})).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field `total` (column `amount`): cannot cast \"twelve\" to real"
        );
    }

    #[test]
    fn mapping_casts_follow_documented_rules() {
        let map = mapping(
            r#"
            i = { type = "bigint" }
            t = { type = "text" }
            b = { type = "bool" }
            "#,
        );
        let row = both_ways(&map, json!({"i": "42", "t": 3.5, "b": "yes"})).unwrap();
        assert_eq!(row, json!({"i": 42, "t": "3.5", "b": true}));
        assert!(
            both_ways(&map, json!({"i": 1.5})).is_err(),
            "fractions are not integers"
        );
        assert!(
            both_ways(&map, json!({"b": 2})).is_err(),
            "2 is not a boolean"
        );
    }

    #[test]
    fn mapping_decimal_keeps_every_digit_and_dates_stay_text() {
        let map = mapping(
            r#"
            d = { type = "decimal" }
            at = { type = "datetime2" }
            "#,
        );
        let digits = "12345678901234567890.123456789";
        let row = both_ways(
            &map,
            json!({"d": format!(" {digits} "), "at": "2024-01-02T03:04:05"}),
        )
        .unwrap();
        assert_eq!(row, json!({"d": digits, "at": "2024-01-02T03:04:05"}));
        assert!(
            both_ways(&map, json!({"d": "12,5"})).is_err(),
            "not a decimal"
        );
        assert!(
            both_ways(&map, json!({"d": 1.25})).is_ok(),
            "numbers stay numbers"
        );
    }

    #[test]
    fn mapping_required_field_missing_is_an_error() {
        let map = mapping(r#"id = { from = "id", required = true }"#);
        assert!(matches!(
            both_ways(&map, json!({"x": 1})),
            Err(MapError::Missing { .. })
        ));
        assert!(matches!(
            both_ways(&map, json!([1])),
            Err(MapError::NotAnObject { .. })
        ));
    }

    #[test]
    fn mapping_bad_entries_are_config_problems_with_paths() {
        let table: toml::Table =
            toml::from_str(r#"amount = { from = "total", type = "money", colour = 1 }"#).unwrap();
        let mut problems = Problems::default();
        assert!(Mapping::parse(&table, "sink[0].map", &mut problems).is_none());
        let text = problems.to_string();
        assert!(
            text.contains("sink[0].map.amount.type: unknown type `money`"),
            "{text}"
        );
        assert!(
            text.contains("sink[0].map.amount.colour: unknown key"),
            "{text}"
        );
    }
}
