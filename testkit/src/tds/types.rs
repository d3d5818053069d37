//! SQL Server types: parsing declared types, reading values off the wire (RPC parameters, bulk
//! rows), converting them to a column's type with SQL Server's errors, the SQLite storage form
//! of each type, and writing COLMETADATA / ROW values back to the client.
//!
//! Storage forms (chosen so every value round-trips exactly):
//! - tinyint, smallint, int, bigint, bit: INTEGER; real, float: REAL.
//! - decimal(p,s) / numeric(p,s): TEXT with exactly `s` decimals (`-12.3400`). The column is
//!   declared `decimal text(p,s)` so SQLite's NUMERIC affinity does not turn it into a REAL.
//! - (n)varchar: TEXT; varbinary: BLOB; uniqueidentifier: lowercase hyphenated TEXT.
//! - date `2024-01-31`; time(n) `13:45:00.1234567` (n decimals); datetime2(n)
//!   `2024-01-31 13:45:00.1234567`; datetime `2024-01-31 13:45:00.123` (1/300 s ticks, rounded
//!   to milliseconds); datetimeoffset(n) `2024-01-31 13:45:00.1234567 +02:00` (local time).

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use rusqlite::types::Value as Stored;

use super::wire::{COLLATION, Malformed, ReadResult, Reader, string_to_utf16, utf16_to_string};

/// A column type as declared in `CREATE TABLE` (`None` lengths mean `(max)`).
#[derive(Clone, Debug, PartialEq)]
pub enum SqlType {
    /// tinyint (0..=255)
    TinyInt,
    /// smallint
    SmallInt,
    /// int
    Int,
    /// bigint
    BigInt,
    /// bit
    Bit,
    /// real (float(24))
    Real,
    /// float (float(53))
    Float,
    /// decimal(p,s) and numeric(p,s)
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// nvarchar(n) in characters, or nvarchar(max)
    NVarChar(Option<u16>),
    /// varchar(n) in bytes (code page 1252), or varchar(max)
    VarChar(Option<u16>),
    /// varbinary(n), or varbinary(max)
    VarBinary(Option<u16>),
    /// datetime2(n)
    DateTime2(u8),
    /// datetime
    DateTime,
    /// date
    Date,
    /// time(n)
    Time(u8),
    /// datetimeoffset(n)
    DateTimeOffset(u8),
    /// uniqueidentifier
    UniqueIdentifier,
}

impl SqlType {
    /// Parses a declared type such as `nvarchar(20)`, `nvarchar(-1)` (max), `decimal text(18,4)`.
    pub fn parse(declared: &str) -> Option<SqlType> {
        let lower = declared.trim().to_ascii_lowercase();
        let (name_part, args) = match lower.find('(') {
            Some(i) => (
                &lower[..i],
                lower[i + 1..].trim_end_matches(')').to_string(),
            ),
            None => (lower.as_str(), String::new()),
        };
        let name = name_part.split_whitespace().next()?;
        let args: Vec<&str> = args
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let number = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok());
        let length = |default: u16| match number(0) {
            Some(n) if n < 0 => None,
            Some(n) => Some(n as u16),
            None if args.first() == Some(&"max") => None,
            None => Some(default),
        };
        let scale = |default: u8| number(0).map(|n| n as u8).unwrap_or(default);
        Some(match name {
            "tinyint" => SqlType::TinyInt,
            "smallint" => SqlType::SmallInt,
            "int" | "integer" => SqlType::Int,
            "bigint" => SqlType::BigInt,
            "bit" => SqlType::Bit,
            "real" => SqlType::Real,
            "float" if number(0).is_some_and(|n| n <= 24) => SqlType::Real,
            "float" | "double" => SqlType::Float,
            "decimal" | "numeric" | "dec" => SqlType::Decimal {
                precision: number(0).unwrap_or(18) as u8,
                scale: number(1).unwrap_or(0) as u8,
            },
            "nvarchar" | "nchar" | "sysname" => SqlType::NVarChar(length(1)),
            "varchar" | "char" => SqlType::VarChar(length(1)),
            "varbinary" | "binary" => SqlType::VarBinary(length(1)),
            "datetime2" => SqlType::DateTime2(scale(7)),
            "datetime" | "smalldatetime" => SqlType::DateTime,
            "date" => SqlType::Date,
            "time" => SqlType::Time(scale(7)),
            "datetimeoffset" => SqlType::DateTimeOffset(scale(7)),
            "uniqueidentifier" => SqlType::UniqueIdentifier,
            _ => return None,
        })
    }

    /// The type's name as SQL Server writes it, for messages.
    pub fn name(&self) -> String {
        let len = |n: &Option<u16>| n.map_or("max".to_string(), |n| n.to_string());
        match self {
            SqlType::TinyInt => "tinyint".into(),
            SqlType::SmallInt => "smallint".into(),
            SqlType::Int => "int".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Bit => "bit".into(),
            SqlType::Real => "real".into(),
            SqlType::Float => "float".into(),
            SqlType::Decimal { .. } => "numeric".into(),
            SqlType::NVarChar(n) => format!("nvarchar({})", len(n)),
            SqlType::VarChar(n) => format!("varchar({})", len(n)),
            SqlType::VarBinary(n) => format!("varbinary({})", len(n)),
            SqlType::DateTime2(_) => "datetime2".into(),
            SqlType::DateTime => "datetime".into(),
            SqlType::Date => "date".into(),
            SqlType::Time(_) => "time".into(),
            SqlType::DateTimeOffset(_) => "datetimeoffset".into(),
            SqlType::UniqueIdentifier => "uniqueidentifier".into(),
        }
    }
}

/// A value as read from the wire or from SQLite, before or after conversion to a column type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// NULL
    Null,
    /// Any integer type and bit.
    Int(i64),
    /// real and float.
    Float(f64),
    /// decimal/numeric/money: mantissa and scale.
    Decimal(i128, u8),
    /// Character data.
    Text(String),
    /// Binary data.
    Bytes(Vec<u8>),
    /// uniqueidentifier, bytes in display order.
    Guid([u8; 16]),
    /// date
    Date(NaiveDate),
    /// time
    Time(NaiveTime),
    /// datetime2 / datetime
    DateTime(NaiveDateTime),
    /// datetimeoffset: local time and offset in minutes.
    DateTimeOffset(NaiveDateTime, i16),
}

impl Value {
    /// The value from SQLite, untyped.
    pub fn from_stored(stored: &Stored) -> Value {
        match stored {
            Stored::Null => Value::Null,
            Stored::Integer(i) => Value::Int(*i),
            Stored::Real(f) => Value::Float(*f),
            Stored::Text(t) => Value::Text(t.clone()),
            Stored::Blob(b) => Value::Bytes(b.clone()),
        }
    }

    /// The SQLite form of an untyped value (an RPC parameter bound outside an INSERT's VALUES).
    pub fn to_stored(&self) -> Stored {
        match self {
            Value::Null => Stored::Null,
            Value::Int(i) => Stored::Integer(*i),
            Value::Float(f) => Stored::Real(*f),
            Value::Bytes(b) => Stored::Blob(b.clone()),
            other => Stored::Text(display(other, 7)),
        }
    }

    /// How SQL Server prints the value in a duplicate-key message.
    pub fn key_text(&self) -> String {
        match self {
            Value::Null => "<NULL>".into(),
            Value::Bytes(b) => hex(b),
            other => display(other, 7),
        }
    }

    /// The T-SQL type name of an untyped value, for conversion messages.
    fn type_name(&self) -> &'static str {
        match self {
            Value::Null | Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Decimal(..) => "numeric",
            Value::Text(_) => "nvarchar",
            Value::Bytes(_) => "varbinary",
            Value::Guid(_) => "uniqueidentifier",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::DateTime(_) => "datetime2",
            Value::DateTimeOffset(..) => "datetimeoffset",
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Formats a decimal mantissa with `scale` digits after the point.
pub fn decimal_text(mantissa: i128, scale: u8) -> String {
    let digits = mantissa.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if mantissa < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn fraction(nanos: u32, scale: u8) -> String {
    if scale == 0 {
        return String::new();
    }
    let digits = format!("{nanos:09}");
    let scale = scale.min(7) as usize;
    format!(".{}", &digits[..scale])
}

fn time_text(t: &NaiveTime, scale: u8) -> String {
    format!(
        "{}{}",
        t.format("%H:%M:%S"),
        fraction(t.nanosecond(), scale)
    )
}

fn offset_text(minutes: i16) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// The canonical text of a value (the storage form of the text-stored types).
fn display(value: &Value, scale: u8) -> String {
    match value {
        Value::Null => String::new(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Decimal(m, s) => decimal_text(*m, *s),
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => hex(b),
        Value::Guid(g) => {
            let h: String = g.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        Value::Date(d) => d.format("%Y-%m-%d").to_string(),
        Value::Time(t) => time_text(t, scale),
        Value::DateTime(dt) => {
            format!("{} {}", dt.format("%Y-%m-%d"), time_text(&dt.time(), scale))
        }
        Value::DateTimeOffset(dt, off) => format!(
            "{} {} {}",
            dt.format("%Y-%m-%d"),
            time_text(&dt.time(), scale),
            offset_text(*off)
        ),
    }
}

/// Why a value does not fit a column.
#[derive(Debug)]
pub enum ConvError {
    /// A conversion error with SQL Server's number and message.
    Failed(u32, String),
    /// Longer than the column's declared length (2628); carries the start of the value.
    Truncated(String),
}

fn failed<T>(number: u32, message: String) -> Result<T, ConvError> {
    Err(ConvError::Failed(number, message))
}

fn parse_decimal(text: &str) -> Option<(i128, u8)> {
    let t = text.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        || int.len() + frac.len() > 38
    {
        return None;
    }
    let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
    Some((if neg { -mantissa } else { mantissa }, frac.len() as u8))
}

fn rescale(mantissa: i128, from: u8, to: u8) -> Option<i128> {
    if to >= from {
        mantissa.checked_mul(10i128.checked_pow((to - from) as u32)?)
    } else {
        let factor = 10i128.pow((from - to) as u32);
        let (q, r) = (mantissa / factor, mantissa % factor);
        let round = if r.abs() * 2 >= factor { r.signum() } else { 0 };
        Some(q + round)
    }
}

fn parse_datetime(text: &str) -> Option<NaiveDateTime> {
    let t = text.trim();
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, format) {
            return Some(dt);
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(NaiveTime::MIN))
}

fn parse_offset(text: &str) -> Option<i16> {
    if text == "Z" {
        return Some(0);
    }
    let (sign, rest) = match text.chars().next()? {
        '+' => (1, &text[1..]),
        '-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    Some(sign * (h.parse::<i16>().ok()? * 60 + m.parse::<i16>().ok()?))
}

fn parse_datetimeoffset(text: &str) -> Option<(NaiveDateTime, i16)> {
    let t = text.trim();
    if let Some(local) = t.strip_suffix('Z') {
        return Some((parse_datetime(local)?, 0));
    }
    let split = t
        .rfind([' ', '+'])
        .or_else(|| t.rfind('-').filter(|&i| i > 10))?;
    let (local, offset) = t.split_at(split);
    Some((parse_datetime(local)?, parse_offset(offset.trim())?))
}

fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || text.trim().trim_matches(['{', '}']).len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Rounds a time of day to `scale` fractional digits (datetime2/time precision); may carry
/// into the next day.
fn round_nanos(dt: NaiveDateTime, scale: u8) -> NaiveDateTime {
    let unit = 10u32.pow(9 - scale.min(7) as u32);
    let nanos = dt.nanosecond() % 1_000_000_000;
    let rounded = (nanos + unit / 2) / unit * unit;
    dt.with_nanosecond(0).expect("zero nanos") + Duration::nanoseconds(rounded as i64)
}

/// Rounds to datetime's 1/300 s ticks.
fn round_ticks(dt: NaiveDateTime) -> NaiveDateTime {
    let nanos = dt.nanosecond() as u64 % 1_000_000_000;
    let ticks = (nanos * 300 + 500_000_000) / 1_000_000_000;
    dt.with_nanosecond(0).expect("zero nanos")
        + Duration::nanoseconds((ticks * 10_000_000 / 3) as i64)
}

fn fits(i: i64, ty: &SqlType) -> bool {
    match ty {
        SqlType::TinyInt => (0..=255).contains(&i),
        SqlType::SmallInt => i16::try_from(i).is_ok(),
        SqlType::Int => i32::try_from(i).is_ok(),
        _ => true,
    }
}

/// Converts a value to a column's type, as SQL Server's implicit conversion would, with its
/// errors; the result is in the typed shape [`stored`] and [`write_value`] expect.
pub fn convert(value: Value, ty: &SqlType) -> Result<Value, ConvError> {
    use SqlType as T;
    if value == Value::Null {
        return Ok(Value::Null);
    }
    let from = value.type_name();
    let clash = |value: &Value| {
        failed(
            206,
            format!(
                "Operand type clash: {} is incompatible with {}",
                value.type_name(),
                ty.name()
            ),
        )
    };
    match ty {
        T::TinyInt | T::SmallInt | T::Int | T::BigInt => {
            let i = match &value {
                Value::Int(i) => *i,
                Value::Float(f) if f.is_finite() && f.abs() < 9.3e18 => f.trunc() as i64,
                Value::Decimal(m, s) => match i64::try_from(m / 10i128.pow(*s as u32)) {
                    Ok(i) => i,
                    Err(_) => return overflow(ty),
                },
                Value::Text(t) => match t.trim().parse::<i64>() {
                    Ok(i) => i,
                    Err(_) => {
                        return failed(
                            245,
                            format!(
                                "Conversion failed when converting the nvarchar value '{t}' to data type {}.",
                                ty.name()
                            ),
                        );
                    }
                },
                Value::Float(_) => return overflow(ty),
                other => return clash(other),
            };
            if fits(i, ty) { Ok(Value::Int(i)) } else { overflow(ty) }
        }
        T::Bit => match &value {
            Value::Int(i) => Ok(Value::Int((*i != 0) as i64)),
            Value::Float(f) => Ok(Value::Int((*f != 0.0) as i64)),
            Value::Decimal(m, _) => Ok(Value::Int((*m != 0) as i64)),
            Value::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "1" | "true" => Ok(Value::Int(1)),
                "0" | "false" => Ok(Value::Int(0)),
                _ => failed(
                    245,
                    format!("Conversion failed when converting the nvarchar value '{t}' to data type bit."),
                ),
            },
            other => clash(other),
        },
        T::Real | T::Float => {
            let f = match &value {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                Value::Decimal(m, s) => decimal_text(*m, *s).parse().unwrap_or(f64::NAN),
                Value::Text(t) => match t.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => f,
                    _ => return failed(8114, format!("Error converting data type {from} to float.")),
                },
                other => return clash(other),
            };
            Ok(Value::Float(if *ty == T::Real { f as f32 as f64 } else { f }))
        }
        T::Decimal { precision, scale } => {
            let (m, s) = match &value {
                Value::Int(i) => (*i as i128, 0),
                Value::Decimal(m, s) => (*m, *s),
                Value::Float(f) => match parse_decimal(&format!("{f:.*}", *scale as usize + 1)) {
                    Some(d) => d,
                    None => return overflow(ty),
                },
                Value::Text(t) => match parse_decimal(t) {
                    Some(d) => d,
                    None => return failed(8114, format!("Error converting data type {from} to numeric.")),
                },
                other => return clash(other),
            };
            let m = rescale(m, s, *scale).filter(|m| m.unsigned_abs() < 10u128.pow(*precision as u32));
            match m {
                Some(m) => Ok(Value::Decimal(m, *scale)),
                None => failed(8115, format!("Arithmetic overflow error converting {from} to data type numeric.")),
            }
        }
        T::NVarChar(limit) | T::VarChar(limit) => {
            let text = match &value {
                Value::Text(t) => t.clone(),
                other => display(other, 7),
            };
            let length = match ty {
                T::NVarChar(_) => text.encode_utf16().count(),
                _ => text.chars().count(),
            };
            match limit {
                Some(n) if length > *n as usize => Err(ConvError::Truncated(text.chars().take(*n as usize).collect())),
                _ => Ok(Value::Text(text)),
            }
        }
        T::VarBinary(limit) => {
            let bytes = match value {
                Value::Bytes(b) => b,
                Value::Guid(g) => g.to_vec(),
                other => {
                    return failed(
                        257,
                        format!(
                            "Implicit conversion from data type {} to {} is not allowed. Use the CONVERT function to run this query.",
                            other.type_name(),
                            ty.name()
                        ),
                    );
                }
            };
            match limit {
                Some(n) if bytes.len() > *n as usize => Err(ConvError::Truncated(hex(&bytes[..*n as usize]))),
                _ => Ok(Value::Bytes(bytes)),
            }
        }
        T::UniqueIdentifier => match &value {
            Value::Guid(g) => Ok(Value::Guid(*g)),
            Value::Text(t) => match parse_guid(t) {
                Some(g) => Ok(Value::Guid(g)),
                None => failed(8169, "Conversion failed when converting from a character string to uniqueidentifier.".into()),
            },
            other => clash(other),
        },
        T::Date | T::Time(_) | T::DateTime2(_) | T::DateTime | T::DateTimeOffset(_) => {
            let (local, offset) = match &value {
                Value::Date(d) => (d.and_time(NaiveTime::MIN), None),
                Value::Time(t) => (NaiveDate::from_ymd_opt(1900, 1, 1).expect("date").and_time(*t), None),
                Value::DateTime(dt) => (*dt, None),
                Value::DateTimeOffset(dt, off) => (*dt, Some(*off)),
                Value::Text(t) => {
                    let parsed = match ty {
                        T::DateTimeOffset(_) => parse_datetimeoffset(t).map(|(dt, o)| (dt, Some(o))),
                        T::Time(_) => NaiveTime::parse_from_str(t.trim(), "%H:%M:%S%.f")
                            .ok()
                            .map(|tm| (NaiveDate::from_ymd_opt(1900, 1, 1).expect("date").and_time(tm), None)),
                        _ => None,
                    };
                    match parsed.or_else(|| parse_datetime(t).map(|dt| (dt, None))) {
                        Some(p) => p,
                        None => {
                            return failed(
                                241,
                                "Conversion failed when converting date and/or time from character string.".into(),
                            );
                        }
                    }
                }
                other => return clash(other),
            };
            Ok(match ty {
                T::Date => Value::Date(local.date()),
                T::Time(s) => Value::Time(round_nanos(local, *s).time()),
                T::DateTime2(s) => Value::DateTime(round_nanos(local, *s)),
                T::DateTime => Value::DateTime(round_ticks(local)),
                T::DateTimeOffset(s) => Value::DateTimeOffset(round_nanos(local, *s), offset.unwrap_or(0)),
                _ => unreachable!("temporal types only"),
            })
        }
    }
}

fn overflow<T>(ty: &SqlType) -> Result<T, ConvError> {
    failed(
        8115,
        format!(
            "Arithmetic overflow error converting expression to data type {}.",
            ty.name()
        ),
    )
}

/// The SQLite storage form of a value already converted to `ty`.
pub fn stored(value: &Value, ty: &SqlType) -> Stored {
    match (value, ty) {
        (Value::Null, _) => Stored::Null,
        (Value::Int(i), _) => Stored::Integer(*i),
        (Value::Float(f), _) => Stored::Real(*f),
        (Value::Bytes(b), _) => Stored::Blob(b.clone()),
        (Value::DateTime(dt), SqlType::DateTime) => Stored::Text(format!(
            "{}.{:03}",
            dt.format("%Y-%m-%d %H:%M:%S"),
            (dt.nanosecond() + 500_000) / 1_000_000
        )),
        (v, SqlType::DateTime2(s) | SqlType::Time(s) | SqlType::DateTimeOffset(s)) => {
            Stored::Text(display(v, *s))
        }
        (v, _) => Stored::Text(display(v, 7)),
    }
}

// ---------------------------------------------------------------------------------------------
// The wire: TYPE_INFO and values (MS-TDS 2.2.5.4 data type definitions, 2.2.5.5 data encodings).

/// A TYPE_INFO as the client sent it (RPC parameter or bulk COLMETADATA).
#[derive(Clone, Debug)]
pub struct WireType {
    /// The type code.
    pub code: u8,
    /// Declared length (bytes), or scale for time types; 0xFFFF for PLP (max) types.
    pub len: usize,
    /// Scale of decimals and time types.
    pub scale: u8,
}

/// Reads a TYPE_INFO.
pub fn read_type_info(r: &mut Reader) -> ReadResult<WireType> {
    let code = r.u8()?;
    let (len, scale) = match code {
        0x1F => (0, 0),
        0x30 | 0x32 => (1, 0),
        0x34 => (2, 0),
        0x38 | 0x3A | 0x3B | 0x7A => (4, 0),
        0x3C | 0x3D | 0x3E | 0x7F => (8, 0),
        0x24 | 0x26 | 0x68 | 0x6D | 0x6E | 0x6F => (r.u8()? as usize, 0),
        0x37 | 0x3F | 0x6A | 0x6C => {
            let len = r.u8()? as usize;
            let _precision = r.u8()?;
            (len, r.u8()?)
        }
        0x28 => (3, 0),
        0x29..=0x2B => (0, r.u8()?),
        0xA5 | 0xAD => (r.u16()? as usize, 0),
        0xA7 | 0xAF | 0xE7 | 0xEF => {
            let len = r.u16()? as usize;
            r.take(5)?; // collation
            (len, 0)
        }
        other => return Err(Malformed(format!("unsupported TYPE_INFO 0x{other:02X}"))),
    };
    Ok(WireType { code, len, scale })
}

fn le_int(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    let raw = i64::from_le_bytes(buf);
    let shift = 64 - 8 * bytes.len() as u32;
    if shift == 0 {
        raw
    } else {
        (raw << shift) >> shift
    }
}

fn read_plp(r: &mut Reader) -> ReadResult<Option<Vec<u8>>> {
    let total = r.u64()?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let chunk = r.u32()? as usize;
        if chunk == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(r.take(chunk)?);
    }
}

fn date_from_days(days: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1, 1, 1).expect("date") + Duration::days(days as i64)
}

fn time_from_units(units: u64, scale: u8) -> NaiveTime {
    let nanos = units * 10u64.pow(9 - scale.min(7) as u32);
    NaiveTime::MIN + Duration::nanoseconds(nanos as i64)
}

fn time_bytes(scale: u8) -> usize {
    match scale {
        0..=2 => 3,
        3..=4 => 4,
        _ => 5,
    }
}

/// Reads one value of a TYPE_INFO.
pub fn read_value(r: &mut Reader, ty: &WireType) -> ReadResult<Value> {
    let fixed = matches!(
        ty.code,
        0x30 | 0x32 | 0x34 | 0x38 | 0x3A | 0x3B | 0x7A | 0x3C | 0x3D | 0x3E | 0x7F | 0x1F
    );
    let bytes: Vec<u8> = match ty.code {
        _ if fixed => r.take(ty.len)?.to_vec(),
        0xA5 | 0xA7 | 0xAD | 0xAF | 0xE7 | 0xEF if ty.len == 0xFFFF => match read_plp(r)? {
            Some(b) => b,
            None => return Ok(Value::Null),
        },
        0xA5 | 0xA7 | 0xAD | 0xAF | 0xE7 | 0xEF => {
            let n = r.u16()?;
            if n == 0xFFFF {
                return Ok(Value::Null);
            }
            r.take(n as usize)?.to_vec()
        }
        _ => {
            let n = r.u8()?;
            if n == 0 {
                return Ok(Value::Null);
            }
            r.take(n as usize)?.to_vec()
        }
    };
    let epoch1900 = NaiveDate::from_ymd_opt(1900, 1, 1)
        .expect("date")
        .and_time(NaiveTime::MIN);
    Ok(match ty.code {
        0x1F => Value::Null,
        0x30 => Value::Int(bytes[0] as i64),
        0x26 if bytes.len() == 1 => Value::Int(bytes[0] as i64), // tinyint is unsigned
        0x32 | 0x68 => Value::Int((bytes[0] != 0) as i64),
        0x34 | 0x38 | 0x7F | 0x26 => Value::Int(le_int(&bytes)),
        0x3B | 0x3E | 0x6D => match bytes.len() {
            4 => Value::Float(f32::from_le_bytes(bytes[..4].try_into().expect("4")) as f64),
            _ => Value::Float(f64::from_le_bytes(bytes[..8].try_into().expect("8"))),
        },
        0x3C | 0x7A | 0x6E => match bytes.len() {
            4 => Value::Decimal(le_int(&bytes) as i128, 4),
            _ => {
                let hi = i32::from_le_bytes(bytes[..4].try_into().expect("4")) as i64;
                let lo = u32::from_le_bytes(bytes[4..8].try_into().expect("4")) as i64;
                Value::Decimal(((hi << 32) | lo) as i128, 4)
            }
        },
        0x37 | 0x3F | 0x6A | 0x6C => {
            let mut mag = [0u8; 16];
            mag[..bytes.len() - 1].copy_from_slice(&bytes[1..]);
            let m = u128::from_le_bytes(mag) as i128;
            Value::Decimal(if bytes[0] == 1 { m } else { -m }, ty.scale)
        }
        0x3D | 0x6F | 0x3A => match bytes.len() {
            4 => {
                let days = u16::from_le_bytes([bytes[0], bytes[1]]) as i64;
                let minutes = u16::from_le_bytes([bytes[2], bytes[3]]) as i64;
                Value::DateTime(epoch1900 + Duration::days(days) + Duration::minutes(minutes))
            }
            _ => {
                let days = i32::from_le_bytes(bytes[..4].try_into().expect("4")) as i64;
                let ticks = u32::from_le_bytes(bytes[4..8].try_into().expect("4")) as i64;
                Value::DateTime(
                    epoch1900
                        + Duration::days(days)
                        + Duration::nanoseconds(ticks * 10_000_000 / 3),
                )
            }
        },
        0x24 => {
            let mut g = [0u8; 16];
            g.copy_from_slice(&bytes[..16]);
            g[0..4].reverse();
            g[4..6].reverse();
            g[6..8].reverse();
            Value::Guid(g)
        }
        0x28 => Value::Date(date_from_days(le_int(&bytes[..3]) as u32)),
        0x29 => Value::Time(time_from_units(
            le_int(&bytes) as u64 & 0xFF_FFFF_FFFF,
            ty.scale,
        )),
        0x2A | 0x2B => {
            let tb = time_bytes(ty.scale);
            let time = time_from_units(le_int(&bytes[..tb]) as u64 & 0xFF_FFFF_FFFF, ty.scale);
            let date = date_from_days((le_int(&bytes[tb..tb + 3]) as u64 & 0xFF_FFFF) as u32);
            let dt = date.and_time(time);
            if ty.code == 0x2A {
                Value::DateTime(dt)
            } else {
                let offset = i16::from_le_bytes([bytes[tb + 3], bytes[tb + 4]]);
                Value::DateTimeOffset(dt + Duration::minutes(offset as i64), offset)
            }
        }
        0xA5 | 0xAD => Value::Bytes(bytes),
        0xE7 | 0xEF => Value::Text(utf16_to_string(&bytes)?),
        0xA7 | 0xAF => Value::Text(bytes.iter().map(|b| cp1252_char(*b)).collect()),
        other => return Err(Malformed(format!("unsupported value type 0x{other:02X}"))),
    })
}

/// Code page 1252 bytes 0x80..=0x9F; the rest of the page equals Latin-1.
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
];

fn cp1252_char(b: u8) -> char {
    match b {
        0x80..=0x9F => CP1252_HIGH[(b - 0x80) as usize],
        _ => b as char,
    }
}

fn cp1252_bytes(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c as u32 {
            0..=0x7F | 0xA0..=0xFF => c as u8,
            _ => CP1252_HIGH
                .iter()
                .position(|h| *h == c)
                .map_or(b'?', |i| 0x80 + i as u8),
        })
        .collect()
}

/// Writes the TYPE_INFO of a column (COLMETADATA), as SQL Server does: fixed-length types
/// for NOT NULL columns, nullable variants otherwise.
pub fn write_type_info(out: &mut Vec<u8>, ty: &SqlType, nullable: bool) {
    let var_len = |out: &mut Vec<u8>, n: &Option<u16>, unit: u16| {
        out.extend_from_slice(&n.map_or(0xFFFF, |n| n * unit).to_le_bytes())
    };
    match ty {
        SqlType::TinyInt | SqlType::SmallInt | SqlType::Int | SqlType::BigInt => {
            let (fixed, len) = match ty {
                SqlType::TinyInt => (0x30, 1),
                SqlType::SmallInt => (0x34, 2),
                SqlType::Int => (0x38, 4),
                _ => (0x7F, 8),
            };
            if nullable {
                out.extend_from_slice(&[0x26, len]);
            } else {
                out.push(fixed);
            }
        }
        SqlType::Bit => out.extend_from_slice(if nullable { &[0x68, 1] } else { &[0x32] }),
        SqlType::Real => out.extend_from_slice(if nullable { &[0x6D, 4] } else { &[0x3B] }),
        SqlType::Float => out.extend_from_slice(if nullable { &[0x6D, 8] } else { &[0x3E] }),
        SqlType::DateTime => out.extend_from_slice(if nullable { &[0x6F, 8] } else { &[0x3D] }),
        SqlType::Decimal { precision, scale } => {
            out.extend_from_slice(&[0x6A, decimal_len(*precision), *precision, *scale])
        }
        SqlType::NVarChar(n) => {
            out.push(0xE7);
            var_len(out, n, 2);
            out.extend_from_slice(&COLLATION);
        }
        SqlType::VarChar(n) => {
            out.push(0xA7);
            var_len(out, n, 1);
            out.extend_from_slice(&COLLATION);
        }
        SqlType::VarBinary(n) => {
            out.push(0xA5);
            var_len(out, n, 1);
        }
        SqlType::DateTime2(s) => out.extend_from_slice(&[0x2A, *s]),
        SqlType::Date => out.push(0x28),
        SqlType::Time(s) => out.extend_from_slice(&[0x29, *s]),
        SqlType::DateTimeOffset(s) => out.extend_from_slice(&[0x2B, *s]),
        SqlType::UniqueIdentifier => out.extend_from_slice(&[0x24, 16]),
    }
}

fn decimal_len(precision: u8) -> u8 {
    match precision {
        0..=9 => 5,
        10..=19 => 9,
        20..=28 => 13,
        _ => 17,
    }
}

fn is_plp(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::NVarChar(None) | SqlType::VarChar(None) | SqlType::VarBinary(None)
    )
}

fn write_sized(out: &mut Vec<u8>, ty: &SqlType, data: &[u8]) {
    if is_plp(ty) {
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        for chunk in data.chunks(8000) {
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&0u32.to_le_bytes());
    } else {
        out.extend_from_slice(&(data.len() as u16).to_le_bytes());
        out.extend_from_slice(data);
    }
}

fn days_since(date: NaiveDate, epoch: NaiveDate) -> i64 {
    (date - epoch).num_days()
}

fn time_units(t: NaiveTime, scale: u8) -> u64 {
    let nanos = t.num_seconds_from_midnight() as u64 * 1_000_000_000 + t.nanosecond() as u64;
    nanos / 10u64.pow(9 - scale.min(7) as u32)
}

/// Writes one value (already converted to `ty`) into a ROW token.
pub fn write_value(out: &mut Vec<u8>, value: &Value, ty: &SqlType, nullable: bool) {
    let fixed_nn = !nullable
        && matches!(
            ty,
            SqlType::TinyInt
                | SqlType::SmallInt
                | SqlType::Int
                | SqlType::BigInt
                | SqlType::Bit
                | SqlType::Real
                | SqlType::Float
                | SqlType::DateTime
        );
    if *value == Value::Null {
        if is_plp(ty) {
            out.extend_from_slice(&u64::MAX.to_le_bytes());
        } else if matches!(
            ty,
            SqlType::NVarChar(_) | SqlType::VarChar(_) | SqlType::VarBinary(_)
        ) {
            out.extend_from_slice(&0xFFFFu16.to_le_bytes());
        } else {
            out.push(0);
        }
        return;
    }
    let mut body = Vec::new();
    match (value, ty) {
        (Value::Int(i), SqlType::TinyInt) => body.push(*i as u8),
        (Value::Int(i), SqlType::SmallInt) => body.extend_from_slice(&(*i as i16).to_le_bytes()),
        (Value::Int(i), SqlType::Int) => body.extend_from_slice(&(*i as i32).to_le_bytes()),
        (Value::Int(i), SqlType::BigInt) => body.extend_from_slice(&i.to_le_bytes()),
        (Value::Int(i), SqlType::Bit) => body.push((*i != 0) as u8),
        (Value::Float(f), SqlType::Real) => body.extend_from_slice(&(*f as f32).to_le_bytes()),
        (Value::Float(f), SqlType::Float) => body.extend_from_slice(&f.to_le_bytes()),
        (Value::DateTime(dt), SqlType::DateTime) => {
            let epoch = NaiveDate::from_ymd_opt(1900, 1, 1).expect("date");
            body.extend_from_slice(&(days_since(dt.date(), epoch) as i32).to_le_bytes());
            let nanos =
                dt.num_seconds_from_midnight() as u64 * 1_000_000_000 + dt.nanosecond() as u64;
            body.extend_from_slice(&((nanos * 3 + 5_000_000) / 10_000_000).to_le_bytes()[..4]);
        }
        (Value::Decimal(m, _), SqlType::Decimal { precision, .. }) => {
            body.push(if *m < 0 { 0 } else { 1 });
            let len = decimal_len(*precision) as usize - 1;
            body.extend_from_slice(&m.unsigned_abs().to_le_bytes()[..len]);
        }
        (Value::Text(t), SqlType::NVarChar(_)) => return write_sized(out, ty, &string_to_utf16(t)),
        (Value::Text(t), SqlType::VarChar(_)) => return write_sized(out, ty, &cp1252_bytes(t)),
        (Value::Bytes(b), SqlType::VarBinary(_)) => return write_sized(out, ty, b),
        (Value::Guid(g), SqlType::UniqueIdentifier) => {
            let mut w = *g;
            w[0..4].reverse();
            w[4..6].reverse();
            w[6..8].reverse();
            body.extend_from_slice(&w);
        }
        (Value::Date(d), SqlType::Date) => {
            let epoch = NaiveDate::from_ymd_opt(1, 1, 1).expect("date");
            body.extend_from_slice(&(days_since(*d, epoch) as u32).to_le_bytes()[..3]);
        }
        (Value::Time(t), SqlType::Time(s)) => {
            body.extend_from_slice(&time_units(*t, *s).to_le_bytes()[..time_bytes(*s)]);
        }
        (Value::DateTime(dt), SqlType::DateTime2(s))
        | (Value::DateTimeOffset(dt, _), SqlType::DateTimeOffset(s)) => {
            let offset = match value {
                Value::DateTimeOffset(_, o) => *o,
                _ => 0,
            };
            let utc = *dt - Duration::minutes(offset as i64);
            let epoch = NaiveDate::from_ymd_opt(1, 1, 1).expect("date");
            body.extend_from_slice(&time_units(utc.time(), *s).to_le_bytes()[..time_bytes(*s)]);
            body.extend_from_slice(&(days_since(utc.date(), epoch) as u32).to_le_bytes()[..3]);
            if matches!(ty, SqlType::DateTimeOffset(_)) {
                body.extend_from_slice(&offset.to_le_bytes());
            }
        }
        (other, ty) => {
            // Not converted to this type: convert now (a stored value read back).
            match convert(other.clone(), ty) {
                Ok(v) if v != *other => return write_value(out, &v, ty, nullable),
                _ => return write_value(out, &Value::Null, ty, nullable),
            }
        }
    }
    if !fixed_nn {
        out.push(body.len() as u8);
    }
    out.extend_from_slice(&body);
}
