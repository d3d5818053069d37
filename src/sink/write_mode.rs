//! How table sinks apply rows, and the key columns upsert needs: shared by `sqlite` and `mssql`.

use crate::mapping::Mapping;
use crate::settings::Section;

/// How a sink applies rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert every row; a unit applied twice is caught by the ledger.
    Append,
    /// Replace rows with the same key.
    Upsert,
}

impl WriteMode {
    /// The default, for `#[serde(default = ...)]`.
    pub fn append() -> WriteMode {
        WriteMode::Append
    }
}

/// Upsert needs key columns that the mapping writes; append takes none.
pub(super) fn check_keys(
    mode: WriteMode,
    key: &[String],
    map: Option<&Mapping>,
    section: &mut Section<'_>,
) {
    match mode {
        WriteMode::Upsert if key.is_empty() => section.problem(
            "key",
            "upsert mode needs the key columns, e.g. key = [\"id\"]",
        ),
        WriteMode::Append if !key.is_empty() => {
            section.problem("key", "key applies only to mode = \"upsert\"")
        }
        _ => {}
    }
    for column in key {
        section.check_identifier("key", column);
        if let Some(map) = map
            && !map.is_passthrough()
            && !map.has_column(column)
        {
            section.problem("key", format!("key column `{column}` is not in [sink.map]"));
        }
    }
}

/// Names that a SQL database would take for one column, its names being equal under `fold`
/// (SQLite folds ASCII letters; SQL Server's usual collations fold every letter), said for a
/// person: `` `ID` and `id` name the same column ...``. `None` when all differ.
pub(crate) fn same_column<'a>(
    names: impl Iterator<Item = &'a str>,
    fold: fn(&str) -> String,
) -> Option<String> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for name in names {
        if let Some(earlier) = seen.insert(fold(name), name) {
            return Some(format!(
                "`{earlier}` and `{name}` name the same column (column names ignore case); \
                 one value would be lost"
            ));
        }
    }
    None
}
