//! `kind = "mysql"`: its settings and the checks made once at load. The URL is parsed here,
//! the table must name its database (in the URL or as `database.table`), and every `type`
//! of `[sink.map]` must be a MySQL/MariaDB type, so a sink is never built from settings that
//! could not work.

use std::sync::Arc;

use super::connection::ConnectionSettings;
use super::schema::MysqlType;
use crate::mapping::Mapping;
use crate::settings::{KindSettings, Secret, Section};
use crate::sink::table::settings::{RawTableSettings, TableSettings};

/// Settings of the `mysql` sink.
#[derive(Debug, Clone)]
pub struct MysqlSinkConfig {
    /// The parsed connection URL; its password is never printed.
    pub connection: ConnectionSettings,
    /// Table, mode, key and limits.
    pub table: TableSettings,
}

impl KindSettings for MysqlSinkConfig {}

/// Reads `[[sink]] kind = "mysql"`.
pub(super) fn read(
    section: &mut Section<'_>,
    map: Option<&Mapping>,
) -> Option<Arc<dyn KindSettings>> {
    let mut raw: RawTableSettings = section.read()?;
    let connection_text = std::mem::take(&mut raw.connection);
    // Column names are compared without regard to case by MySQL and MariaDB alike.
    let table = TableSettings::read(raw, "mysql", str::to_lowercase, section, map);
    let connection = match ConnectionSettings::parse(&Secret::new(connection_text)) {
        Ok(connection) => Some(connection),
        Err(error) => {
            section.problem("connection", error.to_string());
            None
        }
    };
    if let Some(connection) = &connection
        && connection.database.is_empty()
        && !table.table.contains('.')
    {
        section.problem(
            "table",
            format!(
                "`{}` names no database: put one in the URL (mysql://user@host/database) or \
                 write database.table",
                table.table
            ),
        );
    }
    TableSettings::check_types(section, map, MysqlType::parse);
    Some(Arc::new(MysqlSinkConfig {
        connection: connection?,
        table,
    }))
}
