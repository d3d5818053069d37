//! The target table as MySQL/MariaDB describes it (`information_schema`), the check of a
//! mapping against it, and the table a mapping creates when there is none.
//!
//! Rows travel as text, which the server converts for each column's real type in strict
//! mode (so its own rules and messages judge numbers, dates and lengths); only byte columns
//! (base64 in JSON, hex on the wire), JSON columns (any JSON value), booleans (1/0) and
//! date-times with an offset (converted to UTC, which MariaDB cannot do) are prepared by the
//! client.

use super::sql::{TableName, quote};

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueClass {
    /// The value's text: strings as they are, numbers as written, objects as JSON.
    Text,
    /// `true`/`false` as 1/0.
    Boolean,
    /// Any JSON value, as JSON text.
    Json,
    /// Base64 in JSON, hex on the wire.
    Bytes,
    /// RFC 3339 with an offset becomes UTC `YYYY-MM-DD HH:MM:SS.ffffff`; other text as it is.
    DateTime,
}

impl ValueClass {
    /// The class of a column of `DATA_TYPE` `data_type` and `COLUMN_TYPE` `column_type`.
    pub(super) fn of(data_type: &str, column_type: &str) -> ValueClass {
        match data_type.to_ascii_lowercase().as_str() {
            "tinyint" if column_type.to_ascii_lowercase().starts_with("tinyint(1)") => {
                ValueClass::Boolean
            }
            "json" => ValueClass::Json,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                ValueClass::Bytes
            }
            "datetime" | "timestamp" => ValueClass::DateTime,
            _ => ValueClass::Text,
        }
    }
}

/// A `type` of `[sink.map]` that MySQL or MariaDB has, as written (for `CREATE TABLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MysqlType(String);

/// Type names MySQL and MariaDB have (without length, precision or `unsigned`), lower case.
const MYSQL_TYPES: &[&str] = &[
    "tinyint",
    "smallint",
    "mediumint",
    "int",
    "integer",
    "bigint",
    "float",
    "double",
    "double precision",
    "real",
    "decimal",
    "numeric",
    "dec",
    "char",
    "varchar",
    "binary",
    "varbinary",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
    "json",
    "date",
    "datetime",
    "timestamp",
    "time",
    "year",
    "boolean",
    "bool",
    "bit",
    "uuid",
];

impl MysqlType {
    /// A declared type MySQL/MariaDB takes; `Err` says why not, and what to write instead.
    pub(super) fn parse(declared: &str) -> Result<MysqlType, String> {
        let text = declared.trim().to_ascii_lowercase();
        let allowed = |c: char| c.is_ascii_alphanumeric() || " (),_".contains(c);
        let base = text.split('(').next().unwrap_or_default();
        let base = base
            .split_whitespace()
            .filter(|word| !matches!(*word, "unsigned" | "signed" | "zerofill"))
            .collect::<Vec<_>>()
            .join(" ");
        if MYSQL_TYPES.contains(&base.as_str()) && text.chars().all(allowed) {
            return Ok(MysqlType(text));
        }
        let instead = match base.as_str() {
            "timestamptz" | "timestamp with time zone" | "datetimeoffset" | "datetime2" => {
                " (use datetime or timestamp: values with an offset are stored in UTC)"
            }
            "jsonb" => " (use json)",
            "bytea" => " (use blob or varbinary(n))",
            "uniqueidentifier" => " (use char(36), or uuid on MariaDB 10.7+)",
            "nvarchar" | "character varying" => " (use varchar(n))",
            "int4" | "int8" | "int2" => " (use int, bigint or smallint)",
            _ => "",
        };
        Err(format!(
            "`{declared}` is not a MySQL type stevedore writes{instead}"
        ))
    }

    /// As written in `CREATE TABLE`.
    pub(super) fn as_sql(&self) -> &str {
        &self.0
    }
}

/// One column of the target table, as `information_schema` describes it.
#[derive(Debug, Clone)]
pub(super) struct TableColumn {
    /// Its name, as the server spells it.
    pub name: String,
    /// Its type (`decimal(12,2)`).
    pub ty: String,
    /// How its values are written.
    pub class: ValueClass,
    /// Whether it refuses NULL.
    pub not_null: bool,
    /// Whether the server fills it when it is left out (a default, auto_increment).
    pub has_default: bool,
    /// Whether it is computed: it cannot be written.
    pub generated: bool,
}

/// The table a sink writes: its name and the mapped columns, in mapping order.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The table, as the server spells it.
    pub table: TableName,
    /// The mapped columns, in mapping order.
    pub columns: Vec<TableColumn>,
}

/// The table's columns matched against the mapped ones (`mapped`, mapping order) and, in
/// upsert mode, its unique indexes (each a list of column names) against the key. Every
/// problem is listed, each naming its column. Names compare without regard to case.
pub(super) fn match_columns(
    table: &TableName,
    all: &[TableColumn],
    unique_indexes: &[Vec<String>],
    mapped: &[String],
    key: Option<&[String]>,
) -> Result<Target, Vec<String>> {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let mut problems = Vec::new();
    let mut columns = Vec::with_capacity(mapped.len());
    for name in mapped {
        let Some(column) = all.iter().find(|c| same(&c.name, name)) else {
            problems.push(format!("column `{name}` does not exist in table {table}"));
            continue;
        };
        if column.generated {
            problems.push(format!(
                "column `{name}` is generated and cannot be written"
            ));
            continue;
        }
        columns.push(column.clone());
    }
    for column in all {
        let written = mapped.iter().any(|m| same(&column.name, m));
        if column.not_null && !column.has_default && !column.generated && !written {
            problems.push(format!(
                "column `{}` is NOT NULL without a default, and [sink.map] does not write it",
                column.name
            ));
        }
    }
    if let Some(key) = key {
        let fits = |index: &Vec<String>| {
            index.len() == key.len() && key.iter().all(|k| index.iter().any(|c| same(c, k)))
        };
        if !unique_indexes.iter().any(fits) {
            problems.push(format!(
                "upsert needs a unique index or primary key on exactly ({}) of table {table}, \
                 and there is none: create one, e.g. ALTER TABLE {} ADD UNIQUE ({})",
                key.join(", "),
                table.quoted(),
                key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
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

/// The `CREATE TABLE` a mapping makes when its table is missing: every mapped column with its
/// declared type, NOT NULL where the map requires the field, the upsert key as its primary
/// key, InnoDB and utf8mb4. `Err` lists the columns the map gives no type.
pub(super) fn create_table(
    table: &TableName,
    mapped: &[(String, Option<String>, bool)],
    key: Option<&[String]>,
) -> Result<String, String> {
    let untyped: Vec<&str> = mapped
        .iter()
        .filter(|(_, ty, _)| ty.is_none())
        .map(|(name, _, _)| name.as_str())
        .collect();
    if !untyped.is_empty() {
        return Err(format!(
            "table {table} does not exist, and it cannot be created from [sink.map]: give a \
             type to {}",
            untyped.join(", ")
        ));
    }
    let mut columns: Vec<String> = Vec::with_capacity(mapped.len() + 1);
    for (name, ty, required) in mapped {
        let ty = MysqlType::parse(ty.as_deref().unwrap_or_default())?;
        let key_column = key.is_some_and(|key| key.iter().any(|k| k == name));
        let null = if *required || key_column {
            " NOT NULL"
        } else {
            ""
        };
        columns.push(format!("{} {}{null}", quote(name), ty.as_sql()));
    }
    if let Some(key) = key {
        columns.push(format!(
            "PRIMARY KEY ({})",
            key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        table.quoted(),
        columns.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_types_are_mysql_names_with_their_precision() {
        assert!(MysqlType::parse("decimal(30,10)").is_ok());
        assert!(MysqlType::parse("BIGINT UNSIGNED").is_ok());
        assert!(MysqlType::parse("varchar(64)").is_ok());
        let why = MysqlType::parse("timestamptz").unwrap_err();
        assert!(why.contains("use datetime or timestamp"), "{why}");
        assert!(MysqlType::parse("text; DROP TABLE x").is_err());
        assert_eq!(ValueClass::of("tinyint", "tinyint(1)"), ValueClass::Boolean);
        assert_eq!(ValueClass::of("tinyint", "tinyint(4)"), ValueClass::Text);
        assert_eq!(
            ValueClass::of("varbinary", "varbinary(16)"),
            ValueClass::Bytes
        );
    }

    #[test]
    fn mysql_table_is_created_from_typed_map_columns_only() {
        let table = TableName::parse("Members", "org");
        let mapped = vec![
            ("userId".to_string(), Some("varchar(64)".to_string()), false),
            ("updated".to_string(), Some("datetime(3)".to_string()), true),
        ];
        assert_eq!(
            create_table(&table, &mapped, Some(&["userId".to_string()])).unwrap(),
            "CREATE TABLE IF NOT EXISTS `org`.`Members` (`userId` varchar(64) NOT NULL, \
             `updated` datetime(3) NOT NULL, PRIMARY KEY (`userId`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        );
    }
}
