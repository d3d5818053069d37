//! The target table as the server describes it, and the check of a mapping against it.
//!
//! Rows are encoded from the table's real column types (what `SELECT TOP 0` reports, the same
//! metadata tiberius's bulk load uses), never from guesses about the JSON. A mapped column
//! that does not exist, a type stevedore cannot encode, or a NOT NULL column the mapping
//! leaves out (with no default) is a config error naming the column.

use tiberius::{ColumnFlag, FixedLenType, MetaDataColumn, TypeInfo, VarLenType};

use super::sql::TableName;

/// A column type stevedore can load, with the limits that values are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SqlType {
    /// `tinyint`, 0..=255.
    TinyInt,
    /// `smallint`.
    SmallInt,
    /// `int`.
    Int,
    /// `bigint`.
    BigInt,
    /// `bit`.
    Bit,
    /// `real` (4-byte float).
    Real,
    /// `float` (8-byte float).
    Float,
    /// `decimal(p, s)` / `numeric(p, s)`.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// `nvarchar(n)` / `nchar(n)`; `None` for `(max)`. Lengths in UTF-16 code units.
    NVarChar(Option<usize>),
    /// `varchar(n)` / `char(n)`; `None` for `(max)`. Lengths in bytes of the column's code page.
    VarChar(Option<usize>),
    /// `varbinary(n)` / `binary(n)`; `None` for `(max)`.
    VarBinary(Option<usize>),
    /// `uniqueidentifier`.
    UniqueIdentifier,
    /// `date`.
    Date,
    /// `time(scale)`.
    Time(u8),
    /// `datetime` (legacy, 1/300 s).
    DateTime,
    /// `datetime2(scale)`.
    DateTime2(u8),
    /// `datetimeoffset(scale)`.
    DateTimeOffset(u8),
}

impl std::fmt::Display for SqlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let length = |n: &Option<usize>| n.map_or("max".to_string(), |n| n.to_string());
        match self {
            SqlType::TinyInt => write!(f, "tinyint"),
            SqlType::SmallInt => write!(f, "smallint"),
            SqlType::Int => write!(f, "int"),
            SqlType::BigInt => write!(f, "bigint"),
            SqlType::Bit => write!(f, "bit"),
            SqlType::Real => write!(f, "real"),
            SqlType::Float => write!(f, "float"),
            SqlType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            SqlType::NVarChar(n) => write!(f, "nvarchar({})", length(n)),
            SqlType::VarChar(n) => write!(f, "varchar({})", length(n)),
            SqlType::VarBinary(n) => write!(f, "varbinary({})", length(n)),
            SqlType::UniqueIdentifier => write!(f, "uniqueidentifier"),
            SqlType::Date => write!(f, "date"),
            SqlType::Time(scale) => write!(f, "time({scale})"),
            SqlType::DateTime => write!(f, "datetime"),
            SqlType::DateTime2(scale) => write!(f, "datetime2({scale})"),
            SqlType::DateTimeOffset(scale) => write!(f, "datetimeoffset({scale})"),
        }
    }
}

/// Reads a column's wire type; `Err` names the type for a message when stevedore cannot load
/// it.
pub(super) fn sql_type(ty: &TypeInfo) -> Result<SqlType, String> {
    // Lengths above this are the PLP `(max)` marker.
    const MAX_MARKER: usize = 0xffff;
    let sized = |len: usize, per_char: usize| (len < MAX_MARKER).then_some(len / per_char);
    Ok(match ty {
        TypeInfo::FixedLen(fixed) => match fixed {
            FixedLenType::Int1 => SqlType::TinyInt,
            FixedLenType::Int2 => SqlType::SmallInt,
            FixedLenType::Int4 => SqlType::Int,
            FixedLenType::Int8 => SqlType::BigInt,
            FixedLenType::Bit => SqlType::Bit,
            FixedLenType::Float4 => SqlType::Real,
            FixedLenType::Float8 => SqlType::Float,
            FixedLenType::Datetime => SqlType::DateTime,
            FixedLenType::Datetime4 => return Err("smalldatetime".into()),
            FixedLenType::Money | FixedLenType::Money4 => return Err("money".into()),
            other => return Err(format!("{other:?}")),
        },
        TypeInfo::VarLenSized(context) => {
            let len = context.len();
            match context.r#type() {
                VarLenType::Intn => match len {
                    1 => SqlType::TinyInt,
                    2 => SqlType::SmallInt,
                    4 => SqlType::Int,
                    _ => SqlType::BigInt,
                },
                VarLenType::Bitn => SqlType::Bit,
                VarLenType::Floatn if len == 4 => SqlType::Real,
                VarLenType::Floatn => SqlType::Float,
                VarLenType::Datetimen if len == 8 => SqlType::DateTime,
                VarLenType::Datetimen => return Err("smalldatetime".into()),
                VarLenType::Daten => SqlType::Date,
                VarLenType::Timen => SqlType::Time(len as u8),
                VarLenType::Datetime2 => SqlType::DateTime2(len as u8),
                VarLenType::DatetimeOffsetn => SqlType::DateTimeOffset(len as u8),
                VarLenType::Guid => SqlType::UniqueIdentifier,
                VarLenType::NVarchar | VarLenType::NChar => SqlType::NVarChar(sized(len, 2)),
                VarLenType::BigVarChar | VarLenType::BigChar => SqlType::VarChar(sized(len, 1)),
                VarLenType::BigVarBin | VarLenType::BigBinary => SqlType::VarBinary(sized(len, 1)),
                VarLenType::Money => return Err("money".into()),
                VarLenType::Text => return Err("text".into()),
                VarLenType::NText => return Err("ntext".into()),
                VarLenType::Image => return Err("image".into()),
                other => return Err(format!("{other:?}").to_lowercase()),
            }
        }
        TypeInfo::VarLenSizedPrecision {
            precision, scale, ..
        } => SqlType::Decimal {
            precision: *precision,
            scale: *scale,
        },
        TypeInfo::Xml { .. } => return Err("xml".into()),
        TypeInfo::Udt(udt) => return Err(udt.type_name.clone()),
    })
}

/// One column of the target table.
#[derive(Debug, Clone)]
pub(super) struct TableColumn {
    /// Its name, as the server spells it.
    pub name: String,
    /// Its type.
    pub ty: SqlType,
    /// Whether it takes NULL.
    pub nullable: bool,
}

/// The columns a mapping writes, in mapping order, with their wire metadata for bulk loads.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The table.
    pub table: TableName,
    /// The mapped columns.
    pub columns: Vec<TableColumn>,
}

/// Matches the mapped `columns` against the table's metadata (`all`, from `SELECT TOP 0 *`)
/// and the columns that must be given a value (`required`: NOT NULL, no default, not identity
/// or computed). Every problem is listed, each naming its column.
pub(super) fn match_columns(
    table: &TableName,
    all: &[MetaDataColumn<'_>],
    required: &[String],
    mapped: &[String],
) -> Result<Target, Vec<String>> {
    let mut problems = Vec::new();
    let mut columns = Vec::with_capacity(mapped.len());
    for name in mapped {
        let Some(meta) = all.iter().find(|c| c.col_name.eq_ignore_ascii_case(name)) else {
            problems.push(format!("column `{name}` does not exist in table {table}"));
            continue;
        };
        let flags = meta.base.flags;
        if flags.contains(ColumnFlag::Computed) {
            problems.push(format!("column `{name}` is computed and cannot be written"));
            continue;
        }
        if flags.contains(ColumnFlag::Identity) {
            problems.push(format!(
                "column `{name}` is an identity column; leave it out of [sink.map] and the server numbers the rows"
            ));
            continue;
        }
        match sql_type(&meta.base.ty) {
            Ok(ty) => columns.push(TableColumn {
                name: meta.col_name.to_string(),
                ty,
                nullable: flags.contains(ColumnFlag::Nullable),
            }),
            Err(type_name) => problems.push(format!(
                "column `{name}` has type {type_name}, which stevedore cannot load (supported: \
                 int, bigint, smallint, tinyint, bit, float, real, decimal/numeric, \
                 (n)varchar/(n)char incl. (max), varbinary/binary, date, time, datetime, \
                 datetime2, datetimeoffset, uniqueidentifier)"
            )),
        }
    }
    for name in required {
        if !mapped.iter().any(|m| m.eq_ignore_ascii_case(name)) {
            problems.push(format!(
                "column `{name}` is NOT NULL without a default, and [sink.map] does not write it"
            ));
        }
    }
    if problems.is_empty() {
        Ok(Target {
            table: table.clone(),
            columns,
        })
    } else {
        Err(problems)
    }
}
