//! `kind = "postgres"`: its settings and the checks made once at load. The URL is parsed
//! here, and every `type` of `[sink.map]` must be a PostgreSQL type, so a sink is never built
//! from settings that could not work.

use std::sync::Arc;

use super::connection::ConnectionSettings;
use super::schema::PgType;
use crate::mapping::Mapping;
use crate::settings::{KindSettings, Secret, Section};
use crate::sink::table::settings::{RawTableSettings, TableSettings};

/// Settings of the `postgres` sink.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    /// The parsed connection URL; its password is never printed.
    pub connection: ConnectionSettings,
    /// Table, mode, key and limits.
    pub table: TableSettings,
}

impl KindSettings for PostgresSinkConfig {}

/// Reads `[[sink]] kind = "postgres"`.
pub(super) fn read(
    section: &mut Section<'_>,
    map: Option<&Mapping>,
) -> Option<Arc<dyn KindSettings>> {
    let mut raw: RawTableSettings = section.read()?;
    let connection_text = std::mem::take(&mut raw.connection);
    // Unquoted names fold to lower case; stevedore's names are matched the same way.
    let table = TableSettings::read(raw, "postgres", str::to_lowercase, section, map);
    let connection = match ConnectionSettings::parse(&Secret::new(connection_text)) {
        Ok(connection) => Some(connection),
        Err(error) => {
            section.problem("connection", error.to_string());
            None
        }
    };
    TableSettings::check_types(section, map, PgType::parse);
    Some(Arc::new(PostgresSinkConfig {
        connection: connection?,
        table,
    }))
}
