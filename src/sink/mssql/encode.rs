//! JSON values to SQL Server values, by the target column's real type.
//!
//! JSON has strings, numbers, booleans and null; a table has dates, decimals and uuids. Each
//! value is converted for its column: strings are parsed for dates, times, decimals and uuids,
//! base64 for varbinary; numbers are range-checked; lengths are checked against the column, so
//! a value the server would refuse fails here, alone, with a message naming the column. NULL
//! goes through as a typed NULL (the server decides whether the column takes it).

use std::borrow::Cow;

use base64::Engine;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::Value;
use tiberius::ColumnData;
use tiberius::numeric::Numeric;
use tiberius::time::{Date, DateTime2, DateTimeOffset, Time};

use super::schema::{SqlType, TableColumn};

/// Converts `value` for `column`; `Err` says why, naming the column. Text borrows from the
/// value, so a row is not copied on its way to the wire.
pub(super) fn encode<'a>(value: &'a Value, column: &TableColumn) -> Result<ColumnData<'a>, String> {
    let problem = |why: String| format!("column `{}` ({}): {why}", column.name, column.ty);
    if value.is_null() {
        return Ok(null(column.ty));
    }
    let encoded = match column.ty {
        SqlType::TinyInt => integer(value, 0, 255).map(|v| ColumnData::U8(Some(v as u8))),
        SqlType::SmallInt => integer(value, i16::MIN.into(), i16::MAX.into())
            .map(|v| ColumnData::I16(Some(v as i16))),
        SqlType::Int => integer(value, i32::MIN.into(), i32::MAX.into())
            .map(|v| ColumnData::I32(Some(v as i32))),
        SqlType::BigInt => integer(value, i64::MIN, i64::MAX).map(|v| ColumnData::I64(Some(v))),
        SqlType::Bit => bit(value).map(|v| ColumnData::Bit(Some(v))),
        SqlType::Real => float(value).and_then(|v| {
            let narrow = v as f32;
            if narrow.is_finite() {
                Ok(ColumnData::F32(Some(narrow)))
            } else {
                Err(format!("{v} is out of range for real"))
            }
        }),
        SqlType::Float => float(value).map(|v| ColumnData::F64(Some(v))),
        SqlType::Decimal { precision, scale } => {
            decimal(value, precision, scale).map(|v| ColumnData::Numeric(Some(v)))
        }
        // A UTF-8 string never has more UTF-16 code units or characters than bytes, so
        // only a string longer in bytes than the limit needs counting.
        SqlType::NVarChar(limit) => {
            let text = text(value);
            match limit {
                Some(limit) if text.len() > limit && text.encode_utf16().count() > limit => {
                    Err(format!(
                        "the value has {} UTF-16 code units, more than {limit}",
                        text.encode_utf16().count()
                    ))
                }
                _ => Ok(ColumnData::String(Some(text))),
            }
        }
        SqlType::VarChar(limit) => {
            let text = text(value);
            match limit {
                Some(limit) if text.len() > limit && text.chars().count() > limit => Err(format!(
                    "the value has {} characters, more than {limit}",
                    text.chars().count()
                )),
                _ => Ok(ColumnData::String(Some(text))),
            }
        }
        SqlType::VarBinary(limit) => binary(value).and_then(|bytes| match limit {
            Some(limit) if bytes.len() > limit => Err(format!(
                "the value has {} bytes, more than {limit}",
                bytes.len()
            )),
            _ => Ok(ColumnData::Binary(Some(Cow::Owned(bytes)))),
        }),
        SqlType::UniqueIdentifier => string(value, "a uuid")
            .and_then(|s| tiberius::Uuid::parse_str(s.trim()).map_err(|e| format!("{s:?}: {e}")))
            .map(|v| ColumnData::Guid(Some(v))),
        SqlType::Date => string(value, "a date")
            .and_then(parse_date)
            .map(|d| ColumnData::Date(Some(date(d)))),
        SqlType::Time(scale) => string(value, "a time")
            .and_then(parse_time)
            .map(|t| ColumnData::Time(Some(time(t, scale)))),
        SqlType::DateTime => string(value, "a date and time")
            .and_then(parse_datetime)
            .and_then(legacy_datetime)
            .map(|v| ColumnData::DateTime(Some(v))),
        SqlType::DateTime2(scale) => string(value, "a date and time")
            .and_then(parse_datetime)
            .map(|v| ColumnData::DateTime2(Some(datetime2(v, scale)))),
        SqlType::DateTimeOffset(scale) => string(value, "a date and time with offset")
            .and_then(parse_datetime_offset)
            .map(|v| {
                let offset = (v.offset().local_minus_utc() / 60) as i16;
                ColumnData::DateTimeOffset(Some(DateTimeOffset::new(
                    datetime2(v.naive_utc(), scale),
                    offset,
                )))
            }),
    };
    encoded.map_err(problem)
}

/// A typed NULL for a column of type `ty`.
fn null(ty: SqlType) -> ColumnData<'static> {
    match ty {
        SqlType::TinyInt => ColumnData::U8(None),
        SqlType::SmallInt => ColumnData::I16(None),
        SqlType::Int => ColumnData::I32(None),
        SqlType::BigInt => ColumnData::I64(None),
        SqlType::Bit => ColumnData::Bit(None),
        SqlType::Real => ColumnData::F32(None),
        SqlType::Float => ColumnData::F64(None),
        SqlType::Decimal { .. } => ColumnData::Numeric(None),
        SqlType::NVarChar(_) | SqlType::VarChar(_) => ColumnData::String(None),
        SqlType::VarBinary(_) => ColumnData::Binary(None),
        SqlType::UniqueIdentifier => ColumnData::Guid(None),
        SqlType::Date => ColumnData::Date(None),
        SqlType::Time(_) => ColumnData::Time(None),
        SqlType::DateTime => ColumnData::DateTime(None),
        SqlType::DateTime2(_) => ColumnData::DateTime2(None),
        SqlType::DateTimeOffset(_) => ColumnData::DateTimeOffset(None),
    }
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn string<'a>(value: &'a Value, what: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected {what} as a string, found {}", describe(value)))
}

fn text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

fn integer(value: &Value, min: i64, max: i64) -> Result<i64, String> {
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match parsed {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(format!("{v} is out of range ({min} to {max})")),
        None => Err(format!("{} is not an integer", describe(value))),
    }
}

fn bit(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| format!("{} is not a boolean", describe(value)))
}

fn float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
    .ok_or_else(|| format!("{} is not a number", describe(value)))
}

fn binary(value: &Value) -> Result<Vec<u8>, String> {
    let text = string(value, "base64")?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))
}

/// Parses a decimal written as a JSON number or string (`-12.5`, `1e3`) at the column's
/// scale, rounding half away from zero like SQL Server, and checks the precision.
fn decimal(value: &Value, precision: u8, scale: u8) -> Result<Numeric, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return Err(format!("{} is not a number", describe(value))),
    };
    let not_decimal = || format!("{text:?} is not a decimal number");
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| not_decimal())?),
        None => (text.as_str(), 0),
    };
    let (negative, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(not_decimal());
    }
    // All digits as one integer, and the power of ten it must be divided by.
    let all: String = format!("{whole}{fraction}");
    let all = all.trim_start_matches('0');
    let mut places = fraction.len() as i32 - exponent;
    let mut digits: Vec<u8> = all.bytes().map(|b| b - b'0').collect();
    while places < 0 {
        digits.push(0);
        places += 1;
    }
    let target = i32::from(scale);
    let mut round_up = false;
    if places > target {
        let drop = (places - target) as usize;
        let keep = digits.len().saturating_sub(drop);
        round_up = digits.get(keep).is_some_and(|d| *d >= 5);
        digits.truncate(keep);
        places = target;
    }
    let mut magnitude: i128 = 0;
    for d in &digits {
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(*d)))
            .ok_or_else(|| format!("{text} is out of range for decimal({precision},{scale})"))?;
    }
    if round_up {
        magnitude += 1;
    }
    for _ in places..target {
        magnitude = magnitude
            .checked_mul(10)
            .ok_or_else(|| format!("{text} is out of range for decimal({precision},{scale})"))?;
    }
    if magnitude != 0 && magnitude.ilog10() + 1 > u32::from(precision) {
        return Err(format!(
            "{text} is out of range for decimal({precision},{scale})"
        ));
    }
    Ok(Numeric::new_with_scale(
        if negative { -magnitude } else { magnitude },
        scale,
    ))
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|e| format!("{text:?} is not a date (YYYY-MM-DD): {e}"))
}

fn parse_time(text: &str) -> Result<NaiveTime, String> {
    let text = text.trim();
    NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
        .map_err(|e| format!("{text:?} is not a time (HH:MM:SS.fffffff): {e}"))
}

/// `2024-05-01T10:00:00.1234567`, with a space instead of `T`, or a date alone (midnight).
/// A value with an offset (`Z`, `+02:00`) is converted to UTC.
fn parse_datetime(text: &str) -> Result<NaiveDateTime, String> {
    let trimmed = text.trim();
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(with_offset.naive_utc());
    }
    NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M"))
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M"))
        .or_else(|_| parse_date(trimmed).map(|d| d.and_time(NaiveTime::MIN)))
        .map_err(|_| format!("{text:?} is not a date and time (YYYY-MM-DDTHH:MM:SS.fffffff)"))
}

/// A date and time with an offset; without one, UTC.
fn parse_datetime_offset(text: &str) -> Result<DateTime<FixedOffset>, String> {
    let trimmed = text.trim();
    DateTime::parse_from_rfc3339(trimmed)
        .or_else(|_| DateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .or_else(|_| parse_datetime(trimmed).map(|naive| naive.and_utc().fixed_offset()))
        .map_err(|_| {
            format!("{text:?} is not a date and time with offset (YYYY-MM-DDTHH:MM:SS+HH:MM)")
        })
}

/// Days since 0001-01-01.
fn date(value: NaiveDate) -> Date {
    let start = NaiveDate::from_ymd_opt(1, 1, 1).expect("valid");
    Date::new((value - start).num_days() as u32)
}

/// Time of day in units of 10^-scale seconds; digits beyond the scale are dropped.
fn time(value: NaiveTime, scale: u8) -> Time {
    let nanos = u64::from(value.num_seconds_from_midnight()) * 1_000_000_000
        + u64::from(value.nanosecond().min(999_999_999));
    Time::new(nanos / 10u64.pow(9 - u32::from(scale.min(7))), scale)
}

fn datetime2(value: NaiveDateTime, scale: u8) -> DateTime2 {
    DateTime2::new(date(value.date()), time(value.time(), scale))
}

/// `datetime`: days since 1900-01-01 and 1/300 s ticks, within 1753-01-01..9999-12-31.
fn legacy_datetime(value: NaiveDateTime) -> Result<tiberius::time::DateTime, String> {
    let epoch = NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid");
    if value.date() < NaiveDate::from_ymd_opt(1753, 1, 1).expect("valid") {
        return Err(format!(
            "{value} is before 1753-01-01, the earliest datetime"
        ));
    }
    let days = (value.date() - epoch).num_days() as i32;
    let nanos = u64::from(value.time().num_seconds_from_midnight()) * 1_000_000_000
        + u64::from(value.time().nanosecond().min(999_999_999));
    let ticks = ((nanos * 3 + 5_000_000) / 10_000_000) as u32;
    Ok(tiberius::time::DateTime::new(days, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn column(ty: SqlType) -> TableColumn {
        TableColumn {
            name: "c".into(),
            ty,
            nullable: true,
        }
    }

    fn numeric(value: Value, precision: u8, scale: u8) -> Result<String, String> {
        decimal(&value, precision, scale).map(|n| n.to_string())
    }

    #[test]
    fn mssql_encode_decimals_exactly_at_the_column_scale() {
        assert_eq!(numeric(json!("12.345"), 18, 4).unwrap(), "12.3450");
        assert_eq!(numeric(json!("-0.00005"), 18, 4).unwrap(), "-0.0001");
        assert_eq!(numeric(json!(1e3), 10, 2).unwrap(), "1000.00");
        assert_eq!(
            numeric(json!("99999999999999.9999"), 18, 4).unwrap(),
            "99999999999999.9999"
        );
        assert!(
            numeric(json!("100000000000000"), 18, 4)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            numeric(json!("12a"), 18, 4)
                .unwrap_err()
                .contains("not a decimal")
        );
    }

    #[test]
    fn mssql_encode_checks_ranges_and_lengths_naming_the_column() {
        let error = encode(&json!(300), &column(SqlType::TinyInt)).unwrap_err();
        assert_eq!(
            error,
            "column `c` (tinyint): 300 is out of range (0 to 255)"
        );
        let error = encode(&json!("🚢🚢"), &column(SqlType::NVarChar(Some(3)))).unwrap_err();
        assert!(
            error.contains("4 UTF-16 code units, more than 3"),
            "{error}"
        );
        assert!(encode(&json!("ab"), &column(SqlType::NVarChar(None))).is_ok());
        assert!(encode(&json!(1.5), &column(SqlType::Int)).is_err());
        assert!(matches!(
            encode(&json!("7"), &column(SqlType::BigInt)),
            Ok(ColumnData::I64(Some(7)))
        ));
    }

    #[test]
    fn mssql_encode_dates_and_times() {
        let dt = parse_datetime("2024-02-29 23:59:59.1234567").unwrap();
        let encoded = datetime2(dt, 7);
        assert_eq!(encoded.time().increments(), 863_991_234_567);
        assert_eq!(datetime2(dt, 3).time().increments(), 86_399_123);
        assert_eq!(
            parse_datetime("2024-03-01T01:00:00+02:00").unwrap(),
            parse_datetime("2024-02-29T23:00:00").unwrap()
        );
        assert_eq!(date(parse_date("0001-01-02").unwrap()).days(), 1);
        let legacy = legacy_datetime(parse_datetime("1900-01-02T00:00:01").unwrap()).unwrap();
        assert_eq!((legacy.days(), legacy.seconds_fragments()), (1, 300));
        assert!(encode(&json!("yesterday"), &column(SqlType::Date)).is_err());
        assert!(encode(&json!(null), &column(SqlType::Date)).is_ok());
    }
}
