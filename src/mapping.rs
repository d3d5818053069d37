//! Per-sink field mapping: which fields of a record become which columns, cast to what.
//!
//! A sink without `[sink.map]` gets every field under its own name. With a map, only the
//! mapped columns are written, each taken `from` a field (a dotted path reaches into nested
//! objects), optionally cast to a `type`, with a `default` for missing or null fields.
//! A record that cannot be mapped fails alone with a [`MapError`] naming field and column.

use serde_json::{Map, Value};

use crate::config::Problems;

/// A mapped record: column name to value, ready for a sink.
pub type Row = Map<String, Value>;

/// How one sink maps records to rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    columns: Option<Vec<ColumnMap>>,
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
    /// Parses a `type = "..."` value.
    pub fn parse(name: &str) -> Option<Cast> {
        Some(match name.to_ascii_lowercase().as_str() {
            "text" | "string" | "varchar" | "nvarchar" | "char" | "nchar" => Cast::Text,
            // Parsed by the sink for the column's real type; JSON carries them as strings.
            "date" | "time" | "datetime" | "datetime2" | "datetimeoffset" | "uniqueidentifier"
            | "varbinary" | "binary" => Cast::Text,
            "integer" | "int" | "bigint" | "smallint" | "tinyint" => Cast::Integer,
            "real" | "float" | "double" => Cast::Real,
            "decimal" | "numeric" => Cast::Decimal,
            "boolean" | "bool" | "bit" => Cast::Boolean,
            "json" => Cast::Json,
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
        Mapping { columns: None }
    }

    /// A mapping from explicit columns.
    pub fn from_columns(columns: Vec<ColumnMap>) -> Mapping {
        Mapping {
            columns: Some(columns),
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
            crate::config::check_identifier(column, &at, problems);
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
        (*problems == before).then_some(Mapping {
            columns: Some(columns),
        })
    }

    /// Maps one record to a row.
    pub fn apply(&self, record: Value) -> Result<Row, MapError> {
        match (record, &self.columns) {
            (Value::Object(object), None) => Ok(object),
            (record, _) => self.apply_ref(&record),
        }
    }

    /// Maps a record it does not own: only the mapped values are copied (the consumer keeps
    /// the unit's records for its dead letters).
    pub fn apply_ref(&self, record: &Value) -> Result<Row, MapError> {
        let Value::Object(object) = record else {
            return Err(MapError::NotAnObject {
                found: json_type(record),
            });
        };
        let Some(columns) = &self.columns else {
            return Ok(object.clone());
        };
        let mut row = Map::with_capacity(columns.len());
        for column in columns {
            let value = lookup(object, &column.from).filter(|value| !value.is_null());
            let value = match (value, &column.default) {
                (Some(value), _) => cast(value, column)?,
                (None, Some(default)) => default.clone(),
                (None, None) if column.required => {
                    return Err(MapError::Missing {
                        from: column.from.join("."),
                        column: column.column.clone(),
                    });
                }
                (None, None) => Value::Null,
            };
            row.insert(column.column.clone(), value);
        }
        Ok(row)
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
                Some(cast) => entry.cast = Some(cast),
                None => problems.push(
                    field,
                    format!(
                        "unknown type `{name}` (expected text, integer, real, boolean or json)"
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

fn lookup<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(object.get(first)?, |value, key| value.get(key))
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

fn json_type(value: &Value) -> &'static str {
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
        let row = map
            .apply(json!({"id": 7, "total": "12.50", "extra": true, "address": {"city": "Oslo"}}))
            .unwrap();
        assert_eq!(
            Value::Object(row),
            json!({"id": 7, "amount": 12.5, "note": "", "city": "Oslo"})
        );
    }

    #[test]
    fn mapping_passthrough_keeps_every_field() {
        let record = json!({"a": 1, "b": {"c": [1, 2]}});
        let row = Mapping::passthrough().apply(record.clone()).unwrap();
        assert_eq!(Value::Object(row), record);
    }

    #[test]
    fn mapping_cast_failure_names_field_column_and_value() {
        let map = mapping(r#"amount = { from = "total", type = "real" }"#);
        let error = map.apply(json!({"total": "twelve"})).unwrap_err();
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
        let row = map.apply(json!({"i": "42", "t": 3.5, "b": "yes"})).unwrap();
        assert_eq!(Value::Object(row), json!({"i": 42, "t": "3.5", "b": true}));
        assert!(
            map.apply(json!({"i": 1.5})).is_err(),
            "fractions are not integers"
        );
        assert!(map.apply(json!({"b": 2})).is_err(), "2 is not a boolean");
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
        let row = map
            .apply_ref(&json!({"d": format!(" {digits} "), "at": "2024-01-02T03:04:05"}))
            .unwrap();
        assert_eq!(
            Value::Object(row),
            json!({"d": digits, "at": "2024-01-02T03:04:05"})
        );
        assert!(
            map.apply_ref(&json!({"d": "12,5"})).is_err(),
            "not a decimal"
        );
        assert!(
            map.apply_ref(&json!({"d": 1.25})).is_ok(),
            "numbers stay numbers"
        );
    }

    #[test]
    fn mapping_required_field_missing_is_an_error() {
        let map = mapping(r#"id = { from = "id", required = true }"#);
        assert!(matches!(
            map.apply(json!({"x": 1})),
            Err(MapError::Missing { .. })
        ));
        assert!(matches!(
            map.apply(json!([1])),
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
