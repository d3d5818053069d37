//! The target table as PostgreSQL describes it, the check of a mapping against it, and the
//! table a mapping creates when there is none.
//!
//! Rows travel as `COPY` text, which the server parses for each column's real type (so a
//! `numeric(38,10)` keeps every digit and a timestamp any ISO 8601 form the server takes);
//! only `bytea` (base64 in JSON), `json`/`jsonb` (any JSON value) and `boolean` are prepared
//! differently, by the column's type as the catalog reports it. A mapped column that does not
//! exist, a NOT NULL column the mapping leaves out (with no default), a generated column, or
//! an upsert key without a unique index is a config error naming the column.

use super::sql::{TableName, quote};

/// How a column's values are written in `COPY` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueClass {
    /// The value's text: strings as they are, numbers as written, objects as JSON.
    Text,
    /// `true`/`false` as `t`/`f`; anything else as text for the server to judge.
    Boolean,
    /// Any JSON value, as JSON text (a string keeps its quotes).
    Json,
    /// Base64 in JSON, hex (`\x...`) on the wire.
    Bytes,
}

impl ValueClass {
    /// The class of a column of catalog type `typname` (`pg_type.typname`).
    pub(super) fn of(typname: &str) -> ValueClass {
        match typname {
            "bool" => ValueClass::Boolean,
            "json" | "jsonb" => ValueClass::Json,
            "bytea" => ValueClass::Bytes,
            _ => ValueClass::Text,
        }
    }
}

/// A `type` of `[sink.map]` that PostgreSQL has, as written (for `CREATE TABLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PgType(String);

/// Type names PostgreSQL has (without their length or precision), lower case.
const PG_TYPES: &[&str] = &[
    "smallint",
    "int2",
    "integer",
    "int",
    "int4",
    "bigint",
    "int8",
    "real",
    "float4",
    "double precision",
    "float8",
    "float",
    "numeric",
    "decimal",
    "text",
    "varchar",
    "character varying",
    "char",
    "character",
    "boolean",
    "bool",
    "json",
    "jsonb",
    "date",
    "time",
    "timetz",
    "time with time zone",
    "time without time zone",
    "timestamp",
    "timestamptz",
    "timestamp with time zone",
    "timestamp without time zone",
    "interval",
    "uuid",
    "bytea",
    "inet",
    "citext",
];

impl PgType {
    /// A declared type PostgreSQL takes; `Err` says why not, and what to write instead.
    pub(super) fn parse(declared: &str) -> Result<PgType, String> {
        let text = declared.trim().to_ascii_lowercase();
        let allowed = |c: char| c.is_ascii_alphanumeric() || " (),_".contains(c);
        let base = text.split('(').next().unwrap_or_default();
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        let known = PG_TYPES.contains(&base.as_str());
        if known && text.chars().all(allowed) {
            return Ok(PgType(text));
        }
        let instead = match base.as_str() {
            "datetime" | "datetime2" | "smalldatetime" => " (use timestamp or timestamptz)",
            "datetimeoffset" => " (use timestamptz)",
            "tinyint" | "mediumint" | "bit" => " (use smallint, integer or boolean)",
            "nvarchar" | "nchar" | "tinytext" | "mediumtext" | "longtext" => {
                " (use text or varchar(n))"
            }
            "blob" | "tinyblob" | "mediumblob" | "longblob" | "varbinary" | "binary" => {
                " (use bytea)"
            }
            "uniqueidentifier" => " (use uuid)",
            "double" => " (use double precision)",
            _ => "",
        };
        Err(format!(
            "`{declared}` is not a PostgreSQL type stevedore writes{instead}"
        ))
    }

    /// As written in `CREATE TABLE`.
    pub(super) fn as_sql(&self) -> &str {
        &self.0
    }
}

/// One column of the target table, as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct TableColumn {
    /// Its name, as the catalog spells it.
    pub name: String,
    /// Its type, as `format_type` prints it (`numeric(12,2)`).
    pub ty: String,
    /// How its values are written.
    pub class: ValueClass,
    /// Whether it refuses NULL.
    pub not_null: bool,
    /// Whether the server fills it when it is left out (a default, an identity).
    pub has_default: bool,
    /// Whether it is computed (`GENERATED ALWAYS AS`): it cannot be written.
    pub generated: bool,
}

/// The table a sink writes: its name and the mapped columns, in mapping order.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The table, as the catalog spells it.
    pub table: TableName,
    /// The mapped columns, in mapping order.
    pub columns: Vec<TableColumn>,
}

/// The table's columns matched against the mapped ones (`mapped`, mapping order) and, in
/// upsert mode, its unique indexes (each a list of column names) against the key. Every
/// problem is listed, each naming its column.
pub(super) fn match_columns(
    table: &TableName,
    all: &[TableColumn],
    unique_indexes: &[Vec<String>],
    mapped: &[String],
    key: Option<&[String]>,
) -> Result<Target, Vec<String>> {
    let mut problems = Vec::new();
    let mut columns = Vec::with_capacity(mapped.len());
    for name in mapped {
        let Some(column) = find(all, name) else {
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
        let written = mapped.iter().any(|m| same_name(&column.name, m));
        if column.not_null && !column.has_default && !column.generated && !written {
            problems.push(format!(
                "column `{}` is NOT NULL without a default, and [sink.map] does not write it",
                column.name
            ));
        }
    }
    if let Some(key) = key {
        let fits = |index: &Vec<String>| {
            index.len() == key.len()
                && key
                    .iter()
                    .all(|k| index.iter().any(|column| same_name(column, k)))
        };
        if !unique_indexes.iter().any(fits) {
            problems.push(format!(
                "upsert needs a unique index or primary key on exactly ({}) of table {table}, \
                 and there is none: create one, e.g. CREATE UNIQUE INDEX ON {} ({})",
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

/// The column `name` names: spelt alike, or alike once folded to lower case, as PostgreSQL
/// folds a name written without quotes.
fn find<'a>(all: &'a [TableColumn], name: &str) -> Option<&'a TableColumn> {
    all.iter()
        .find(|c| c.name == name)
        .or_else(|| all.iter().find(|c| same_name(&c.name, name)))
}

fn same_name(catalog: &str, written: &str) -> bool {
    catalog == written || catalog == written.to_lowercase()
}

/// The `CREATE TABLE` a mapping makes when its table is missing: every mapped column with its
/// declared type (names folded to lower case, as PostgreSQL folds unquoted names), NOT NULL
/// where the map requires the field, and the upsert key as its primary key. `Err` lists the
/// columns the map gives no type.
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
        let ty = PgType::parse(ty.as_deref().unwrap_or_default())?;
        let key_column = key.is_some_and(|key| key.iter().any(|k| k == name));
        let null = if *required || key_column {
            " NOT NULL"
        } else {
            ""
        };
        columns.push(format!(
            "{} {}{null}",
            quote(&name.to_lowercase()),
            ty.as_sql()
        ));
    }
    if let Some(key) = key {
        columns.push(format!(
            "PRIMARY KEY ({})",
            key.iter()
                .map(|k| quote(&k.to_lowercase()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        table.folded().quoted(),
        columns.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, not_null: bool, has_default: bool) -> TableColumn {
        TableColumn {
            name: name.into(),
            ty: "text".into(),
            class: ValueClass::Text,
            not_null,
            has_default,
            generated: false,
        }
    }

    #[test]
    fn postgres_types_are_postgresql_names_with_their_precision() {
        assert!(PgType::parse("numeric(12,2)").is_ok());
        assert!(PgType::parse("timestamp with time zone").is_ok());
        assert!(PgType::parse("VARCHAR(64)").is_ok());
        let why = PgType::parse("datetime").unwrap_err();
        assert!(why.contains("use timestamp or timestamptz"), "{why}");
        assert!(PgType::parse("text; DROP TABLE x").is_err());
    }

    #[test]
    fn postgres_mapping_is_checked_against_the_table() {
        let table = TableName::parse("members");
        let all = [
            column("userid", true, false),
            column("name", false, false),
            column("region", true, false),
            column("created", true, true),
        ];
        let mapped = ["userId".to_string(), "name".into(), "missing".into()];
        let key = ["userId".to_string()];
        let problems = match_columns(&table, &all, &[], &mapped, Some(&key)).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("`missing` does not exist"));
        assert!(problems[1].contains("`region` is NOT NULL without a default"));
        assert!(problems[2].contains("unique index or primary key on exactly (userId)"));
        let target = match_columns(
            &table,
            &all,
            &[vec!["userid".into()]],
            &["userId".into(), "region".into()],
            Some(&key),
        )
        .expect("fits");
        assert_eq!(target.columns[0].name, "userid");
    }

    #[test]
    fn postgres_table_is_created_from_typed_map_columns_only() {
        let table = TableName::parse("org.Members");
        let mapped = vec![
            ("userId".to_string(), Some("varchar(64)".to_string()), false),
            ("updated".to_string(), Some("timestamptz".to_string()), true),
        ];
        assert_eq!(
            create_table(&table, &mapped, Some(&["userId".to_string()])).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"org\".\"members\" (\"userid\" varchar(64) NOT NULL, \
             \"updated\" timestamptz NOT NULL, PRIMARY KEY (\"userid\"))"
        );
        let untyped = vec![("name".to_string(), None, false)];
        let why = create_table(&table, &untyped, None).unwrap_err();
        assert!(why.contains("give a type to name"), "{why}");
    }
}
