//! One client connection: PRELOGIN, LOGIN7, then SQL batches, RPCs, bulk loads and
//! transaction manager requests, each run against this session's own SQLite connection.

use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::Value as Stored;

use super::Shared;
use super::translate::{self, Statement, quote};
use super::types::{self, ConvError, SqlType, Value, WireType};
use super::wire::{self, DONE_COUNT, DONE_ERROR, DONE_MORE, Malformed, Reader, Reply};

/// An error reported to the client as an ERROR token.
#[derive(Debug)]
pub struct SqlError {
    number: u32,
    state: u8,
    class: u8,
    message: String,
}

fn sql_error(number: u32, class: u8, message: impl Into<String>) -> SqlError {
    SqlError {
        number,
        state: 1,
        class,
        message: message.into(),
    }
}

impl From<Malformed> for SqlError {
    fn from(e: Malformed) -> SqlError {
        sql_error(
            4002,
            16,
            format!(
                "The incoming tabular data stream (TDS) protocol stream is incorrect: {}",
                e.0
            ),
        )
    }
}

/// A column of this server's answer.
struct Column {
    name: String,
    ty: SqlType,
    nullable: bool,
}

/// What a statement produced.
#[derive(Default)]
struct Outcome {
    /// ENVCHANGE tokens (transactions) to send before the result.
    env: Reply,
    /// A result set.
    result: Option<(Vec<Column>, Vec<Vec<Value>>)>,
    /// Rows affected, for DONE_COUNT.
    count: Option<u64>,
}

/// A column as `PRAGMA table_info` declares it.
#[derive(Clone, Debug)]
struct ColumnInfo {
    name: String,
    ty: Option<SqlType>,
    nullable: bool,
    has_default: bool,
    identity: bool,
}

/// A pending `INSERT BULK`: the rows arrive in the next message.
struct BulkTarget {
    table: String,
    columns: Vec<String>,
}

/// Statement parameters by lowercase name (`@p1`).
type Params = HashMap<String, Value>;

/// One connection's state.
pub struct Session {
    stream: TcpStream,
    db: Connection,
    shared: Arc<Shared>,
    packet_size: usize,
    trancount: u32,
    descriptor: u64,
    next_descriptor: u64,
    savepoints: Vec<String>,
    bulk: Option<BulkTarget>,
    /// Whether this session holds the shared writer gate.
    writing: bool,
    /// Whether the open transaction has begun in SQLite (at its first write).
    open: bool,
    /// Rows the last statement affected or returned: `@@ROWCOUNT`.
    rowcount: u64,
}

/// Serves one connection until the client leaves, a fault drops it, or login fails.
pub fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let db = match open_db(&shared) {
        Ok(db) => db,
        Err(_) => return,
    };
    let mut session = Session {
        stream,
        db,
        shared,
        packet_size: 4096,
        trancount: 0,
        descriptor: 0,
        next_descriptor: 1,
        savepoints: Vec::new(),
        bulk: None,
        writing: false,
        open: false,
        rowcount: 0,
    };
    let _ = session.run();
    session.stop_writing();
    // Dropping the SQLite connection rolls back any open transaction, as SQL Server does
    // when a connection dies.
}

/// Errors after which SQL Server goes on with the next statement of the batch (duplicate key,
/// NULL, constraint, truncation); after any other error the test server stops the batch.
const STATEMENT_TERMINATING: [u32; 6] = [2627, 2601, 515, 547, 8152, 2628];

/// Whether a statement writes, so that inside a transaction it must run in the SQLite
/// transaction (which it begins). Reads, transaction control and `INSERT BULK` (whose rows
/// arrive later, in the bulk load) do not.
fn writes(statement: &Statement) -> bool {
    match statement {
        Statement::Noop
        | Statement::Version
        | Statement::Begin
        | Statement::Commit
        | Statement::CommitIfRowcount(_)
        | Statement::Rollback { .. }
        | Statement::NotNullColumns(_)
        | Statement::Throw { .. }
        | Statement::InsertBulk { .. } => false,
        // Taken before the condition is evaluated, so that the check and the statement it
        // guards are one step for other sessions.
        Statement::If { then, .. } => writes(&translate::translate(then)),
        Statement::Sql { sql, .. } => !sql
            .trim_start()
            .get(..6)
            .is_some_and(|head| head.eq_ignore_ascii_case("SELECT")),
        _ => true,
    }
}

/// Opens this session's SQLite connection to the shared file.
pub fn open_db(shared: &Shared) -> rusqlite::Result<Connection> {
    let db = Connection::open(&shared.sqlite_path)?;
    db.busy_timeout(Duration::from_secs(30))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "OFF")?;
    Ok(db)
}

impl Session {
    fn run(&mut self) -> io::Result<()> {
        // PRELOGIN
        let Some((kind, _)) = self.read_message()? else {
            return Ok(());
        };
        if kind != wire::PRELOGIN {
            return Ok(());
        }
        self.send(wire::REPLY, &prelogin_reply())?;
        // LOGIN7
        let Some((kind, login)) = self.read_message()? else {
            return Ok(());
        };
        if kind != wire::LOGIN7 {
            return Ok(());
        }
        let (reply, ok) = self.login(&login);
        self.send(wire::REPLY, &reply.bytes)?;
        if !ok {
            return Ok(());
        }
        while let Some((kind, data)) = self.read_message()? {
            let reply = match kind {
                wire::SQL_BATCH => self.sql_batch(&data),
                wire::RPC => self.rpc(&data),
                wire::BULK_LOAD => self.bulk_load(&data),
                wire::TRANSACTION_MANAGER => self.transaction_manager(&data),
                wire::ATTENTION => {
                    let mut r = Reply::default();
                    r.done(wire::DONE_ATTN, 0);
                    r
                }
                _ => return Ok(()),
            };
            self.send(wire::REPLY, &reply.bytes)?;
        }
        Ok(())
    }

    /// Reads a whole message; a bulk load is cut short here when the fault asks for it.
    fn read_message(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        let Some(first) = wire::read_packet(&mut self.stream)? else {
            return Ok(None);
        };
        if first.kind == wire::BULK_LOAD && self.shared.faults.take_bulk_drop() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            return Err(io::Error::other(
                "fault: connection dropped during bulk load",
            ));
        }
        let (kind, mut data, mut last) = (first.kind, first.data, first.last);
        while !last {
            let Some(next) = wire::read_packet(&mut self.stream)? else {
                return Ok(None);
            };
            data.extend_from_slice(&next.data);
            last = next.last;
        }
        Ok(Some((kind, data)))
    }

    fn send(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let delay = self.shared.faults.delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        wire::write_message(&mut self.stream, kind, payload, self.packet_size)
    }

    fn login(&mut self, data: &[u8]) -> (Reply, bool) {
        let mut reply = Reply::default();
        let login = match parse_login(data) {
            Ok(login) => login,
            Err(e) => {
                reply.error(4002, 1, 16, &e.0);
                reply.done(DONE_ERROR, 0);
                return (reply, false);
            }
        };
        let opts = &self.shared.options;
        if login.user != opts.user || login.password != opts.password {
            reply.error(
                18456,
                1,
                14,
                &format!("Login failed for user '{}'.", login.user),
            );
            reply.done(DONE_ERROR, 0);
            return (reply, false);
        }
        if !login.database.is_empty() && !login.database.eq_ignore_ascii_case(&opts.database) {
            reply.error(
                4060,
                1,
                11,
                &format!(
                    "Cannot open database \"{}\" requested by the login. The login failed.",
                    login.database
                ),
            );
            reply.error(
                18456,
                1,
                14,
                &format!("Login failed for user '{}'.", login.user),
            );
            reply.done(DONE_ERROR, 0);
            return (reply, false);
        }
        reply.env_change_text(1, &opts.database, "master");
        reply.message(
            0xAB,
            5701,
            2,
            0,
            &format!("Changed database context to '{}'.", opts.database),
        );
        reply.env_change_bytes(7, &wire::COLLATION, &[]);
        reply.env_change_text(2, "us_english", "");
        reply.message(0xAB, 5703, 1, 0, "Changed language setting to us_english.");
        reply.login_ack();
        let size = if login.packet_size == 0 {
            4096
        } else {
            login.packet_size.clamp(512, 32767)
        };
        reply.env_change_text(4, &size.to_string(), "4096");
        reply.done(0, 0);
        self.packet_size = size as usize;
        (reply, true)
    }

    // ------------------------------------------------------------------ requests

    fn sql_batch(&mut self, data: &[u8]) -> Reply {
        let mut r = Reader::new(data);
        let text = match r
            .skip_all_headers()
            .and_then(|_| wire::utf16_to_string(r.rest()))
        {
            Ok(text) => text,
            Err(e) => return error_reply(e.into(), wire::DONE_ERROR),
        };
        let statements = translate::split_batch(&text);
        let mut reply = Reply::default();
        if statements.is_empty() {
            reply.done(0, 0);
        }
        for (i, statement) in statements.iter().enumerate() {
            let more = if i + 1 < statements.len() {
                DONE_MORE
            } else {
                0
            };
            match self.run_one(statement, &Params::new(), &mut reply, 0xFD, more) {
                Ok(()) => {}
                // Like SQL Server, a statement-terminating error ends only its statement.
                Err(number) if STATEMENT_TERMINATING.contains(&number) => {}
                Err(_) => break,
            }
        }
        reply
    }

    /// Runs one statement and writes its tokens and DONE; the error number if it failed.
    fn run_one(
        &mut self,
        statement: &str,
        params: &Params,
        reply: &mut Reply,
        done: u8,
        more: u16,
    ) -> Result<(), u32> {
        let outcome = match self.shared.faults.take_failure(statement) {
            Some((number, message)) => {
                let class = if number == 1205 { 13 } else { 16 };
                Err(sql_error(number, class, message))
            }
            None => self.execute(statement, params),
        };
        self.rowcount = match &outcome {
            Ok(outcome) => match &outcome.result {
                Some((_, rows)) => rows.len() as u64,
                None => outcome.count.unwrap_or(0),
            },
            Err(_) => 0,
        };
        match outcome {
            Ok(outcome) => {
                reply.bytes.extend_from_slice(&outcome.env.bytes);
                let mut status = more;
                if let Some((columns, rows)) = &outcome.result {
                    write_result(reply, columns, rows);
                    reply.done_token(done, status | DONE_COUNT, rows.len() as u64);
                } else {
                    if outcome.count.is_some() {
                        status |= DONE_COUNT;
                    }
                    reply.done_token(done, status, outcome.count.unwrap_or(0));
                }
                Ok(())
            }
            Err(e) => {
                reply.error(e.number, e.state, e.class, &e.message);
                reply.done_token(done, DONE_ERROR | more, 0);
                Err(e.number)
            }
        }
    }

    fn rpc(&mut self, data: &[u8]) -> Reply {
        match self.parse_rpc(data) {
            Ok((statement, params)) => {
                let mut reply = Reply::default();
                let statements = translate::split_batch(&statement);
                let mut ok = true;
                for statement in &statements {
                    if self
                        .run_one(statement, &params, &mut reply, 0xFF, DONE_MORE)
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                }
                reply.return_status(if ok { 0 } else { 1 });
                reply.done_token(0xFE, if ok { 0 } else { DONE_ERROR }, 0);
                reply
            }
            Err(e) => {
                let mut reply = Reply::default();
                reply.error(e.number, e.state, e.class, &e.message);
                reply.done_token(0xFE, DONE_ERROR, 0);
                reply
            }
        }
    }

    /// Reads an RPC request: `sp_executesql` (id 10 or by name) and its parameters.
    fn parse_rpc(&self, data: &[u8]) -> Result<(String, Params), SqlError> {
        let mut r = Reader::new(data);
        r.skip_all_headers()?;
        let name_len = r.u16()?;
        let proc = if name_len == 0xFFFF {
            format!("#{}", r.u16()?)
        } else {
            r.utf16(name_len as usize)?
        };
        r.u16()?; // option flags
        let mut values = Vec::new();
        while !r.is_empty() {
            if matches!(r.rest()[0], 0x80 | 0xFF | 0xFE) {
                break;
            }
            let name = r.b_varchar()?;
            r.u8()?; // status
            let ty: WireType = types::read_type_info(&mut r)?;
            values.push((name, types::read_value(&mut r, &ty)?));
        }
        let is_executesql = proc == "#10" || proc.to_ascii_lowercase().ends_with("sp_executesql");
        if !is_executesql {
            return Err(sql_error(
                2812,
                16,
                format!("Could not find stored procedure '{proc}'."),
            ));
        }
        let mut values = values.into_iter();
        let statement = match values.next() {
            Some((_, Value::Text(t))) => t,
            _ => {
                return Err(sql_error(
                    214,
                    16,
                    "Procedure expects parameter '@statement' of type 'ntext/nchar/nvarchar'.",
                ));
            }
        };
        values.next(); // @params declarations
        let params = values
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        Ok((statement, params))
    }

    fn transaction_manager(&mut self, data: &[u8]) -> Reply {
        let mut r = Reader::new(data);
        let request = r.skip_all_headers().and_then(|_| r.u16());
        let statement = match request {
            Ok(5) => "BEGIN TRANSACTION",
            Ok(7) => "COMMIT TRANSACTION",
            Ok(8) => "ROLLBACK TRANSACTION",
            _ => {
                return error_reply(
                    sql_error(4002, 16, "unsupported transaction manager request"),
                    DONE_ERROR,
                );
            }
        };
        let mut reply = Reply::default();
        let _ = self.run_one(statement, &Params::new(), &mut reply, 0xFD, 0);
        reply
    }

    // ------------------------------------------------------------------ statements

    fn execute(&mut self, statement: &str, params: &Params) -> Result<Outcome, SqlError> {
        // Set STEVEDORE_TDS_TRACE=1 to see every statement a client sends.
        if std::env::var_os("STEVEDORE_TDS_TRACE").is_some() {
            eprintln!("tds: {statement}");
        }
        let stmt = translate::translate(statement);
        if self.bulk.is_some() && !matches!(stmt, Statement::InsertBulk { .. }) {
            self.bulk = None;
        }
        if self.trancount > 0 && (writes(&stmt) || translate::holds_locks(statement)) {
            self.open_transaction()?;
        }
        match stmt {
            Statement::Noop => Ok(Outcome::default()),
            Statement::Version => Ok(Outcome {
                result: Some((
                    vec![Column {
                        name: String::new(),
                        ty: SqlType::NVarChar(Some(300)),
                        nullable: true,
                    }],
                    vec![vec![Value::Text(VERSION.into())]],
                )),
                ..Outcome::default()
            }),
            Statement::Begin => self.begin(),
            Statement::Commit => self.commit(),
            Statement::CommitIfRowcount(n) if self.rowcount == n => self.commit(),
            Statement::CommitIfRowcount(_) => Ok(Outcome::default()),
            Statement::Rollback {
                savepoint,
                only_if_open,
            } => self.rollback(savepoint, only_if_open),
            Statement::Save(name) => {
                if self.trancount == 0 {
                    return Err(sql_error(
                        628,
                        16,
                        "Cannot issue SAVE TRANSACTION when there is no active transaction.",
                    ));
                }
                self.db
                    .execute_batch(&format!("SAVEPOINT {}", quote(&name)))
                    .map_err(|e| self.map_err(e, None, None))?;
                self.savepoints.push(name);
                Ok(Outcome::default())
            }
            Statement::If { condition, then } => {
                if self.holds(&condition, params)? {
                    self.execute(&then, params)
                } else {
                    Ok(Outcome::default())
                }
            }
            Statement::Throw {
                number,
                message,
                state,
            } => Err(SqlError {
                number,
                state,
                class: 16,
                message,
            }),
            Statement::SelectInto {
                columns,
                source,
                target,
            } => self.select_into(&columns, &source, &target),
            Statement::NotNullColumns(arg) => self.not_null_columns(&arg, params),
            Statement::InsertBulk { table, columns } => {
                if self.columns_of(&table)?.is_empty() {
                    return Err(invalid_object(&table));
                }
                self.bulk = Some(BulkTarget { table, columns });
                Ok(Outcome::default())
            }
            Statement::Insert {
                table,
                columns,
                head,
                rows,
            } => self.insert(&table, &columns, &head, &rows, params),
            Statement::Sql {
                sql,
                tables,
                items,
                star,
            } => self.sql(&sql, &tables, &items, star, params),
        }
    }

    /// Whether the SQLite expression `condition` (an IF's, rule 12) holds.
    fn holds(&self, condition: &str, params: &Params) -> Result<bool, SqlError> {
        let sql = format!("SELECT CASE WHEN {condition} THEN 1 ELSE 0 END");
        let mut stmt = self
            .db
            .prepare(&sql)
            .map_err(|e| self.map_err(e, None, None))?;
        bind(&mut stmt, params)?;
        let mut rows = stmt.raw_query();
        let row = rows.next().map_err(|e| self.map_err(e, None, None))?;
        Ok(row.and_then(|row| row.get::<_, i64>(0).ok()) == Some(1))
    }

    /// Takes the writer gate (waiting for another session's write transaction to end).
    fn start_writing(&mut self) {
        if !self.writing {
            self.shared.writer.enter();
            self.writing = true;
        }
    }

    /// Gives the writer gate back.
    fn stop_writing(&mut self) {
        if self.writing {
            self.writing = false;
            self.shared.writer.leave();
        }
    }

    /// Begins the SQLite transaction of an open T-SQL transaction at its first write, taking
    /// the writer gate then: SQL Server's BEGIN TRAN takes no lock either, and reads before
    /// the first write see committed data, as under READ COMMITTED.
    fn open_transaction(&mut self) -> Result<(), SqlError> {
        if !self.open {
            self.start_writing();
            if let Err(e) = self.db.execute_batch("BEGIN IMMEDIATE") {
                self.stop_writing();
                return Err(self.map_err(e, None, None));
            }
            self.open = true;
        }
        Ok(())
    }

    /// Ends the SQLite transaction, if it began, with `end` (COMMIT or ROLLBACK).
    fn close_transaction(&mut self, end: &str) -> Result<(), SqlError> {
        let result = if self.open {
            self.db
                .execute_batch(end)
                .map_err(|e| self.map_err(e, None, None))
        } else {
            Ok(())
        };
        if result.is_ok() {
            self.open = false;
            self.stop_writing();
        }
        result
    }

    fn begin(&mut self) -> Result<Outcome, SqlError> {
        let mut outcome = Outcome::default();
        if self.trancount == 0 {
            self.descriptor = self.next_descriptor;
            self.next_descriptor += 1;
            outcome
                .env
                .env_change_bytes(8, &self.descriptor.to_le_bytes(), &[]);
        }
        self.trancount += 1;
        Ok(outcome)
    }

    fn commit(&mut self) -> Result<Outcome, SqlError> {
        let mut outcome = Outcome::default();
        match self.trancount {
            0 => {
                return Err(sql_error(
                    3902,
                    16,
                    "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
                ));
            }
            1 => {
                self.close_transaction("COMMIT")?;
                outcome
                    .env
                    .env_change_bytes(9, &[], &self.descriptor.to_le_bytes());
                self.savepoints.clear();
            }
            _ => {}
        }
        self.trancount -= 1;
        Ok(outcome)
    }

    fn rollback(
        &mut self,
        savepoint: Option<String>,
        only_if_open: bool,
    ) -> Result<Outcome, SqlError> {
        let mut outcome = Outcome::default();
        if self.trancount == 0 {
            if only_if_open {
                return Ok(outcome);
            }
            return Err(sql_error(
                3903,
                16,
                "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION.",
            ));
        }
        if let Some(name) = savepoint {
            if let Some(pos) = self
                .savepoints
                .iter()
                .rposition(|s| s.eq_ignore_ascii_case(&name))
            {
                self.db
                    .execute_batch(&format!("ROLLBACK TO {}", quote(&name)))
                    .map_err(|e| self.map_err(e, None, None))?;
                self.savepoints.truncate(pos + 1);
                return Ok(outcome);
            }
            return Err(sql_error(
                6401,
                16,
                format!(
                    "Cannot roll back {name}. No transaction or savepoint of that name was found."
                ),
            ));
        }
        self.close_transaction("ROLLBACK")?;
        outcome
            .env
            .env_change_bytes(10, &[], &self.descriptor.to_le_bytes());
        self.trancount = 0;
        self.savepoints.clear();
        Ok(outcome)
    }

    fn select_into(
        &mut self,
        columns: &[String],
        source: &str,
        target: &str,
    ) -> Result<Outcome, SqlError> {
        let infos = self.columns_of(source)?;
        if infos.is_empty() {
            return Err(invalid_object(source));
        }
        let mut defs = Vec::new();
        for info in &infos {
            if columns.is_empty() || columns.iter().any(|c| c.eq_ignore_ascii_case(&info.name)) {
                defs.push(format!(
                    "{} {}{}",
                    quote(&info.name),
                    self.declared_type(source, &info.name)?,
                    if info.nullable { "" } else { " NOT NULL" }
                ));
            }
        }
        for c in columns {
            if !infos.iter().any(|i| i.name.eq_ignore_ascii_case(c)) {
                return Err(invalid_column(c));
            }
        }
        let temp = if target.starts_with('#') { "TEMP " } else { "" };
        let sql = format!("CREATE {temp}TABLE {} ({})", quote(target), defs.join(", "));
        self.db
            .execute_batch(&sql)
            .map_err(|e| self.map_err(e, Some(target), None))?;
        Ok(Outcome {
            count: Some(0),
            ..Outcome::default()
        })
    }

    fn declared_type(&self, table: &str, column: &str) -> Result<String, SqlError> {
        let sql = format!(
            "SELECT type FROM pragma_table_info({}) WHERE name = ?1",
            sql_string(table)
        );
        self.db
            .query_row(&sql, [column], |row| row.get::<_, String>(0))
            .map_err(|e| self.map_err(e, Some(table), None))
    }

    fn not_null_columns(&mut self, arg: &str, params: &Params) -> Result<Outcome, SqlError> {
        let name = match params.get(&arg.to_ascii_lowercase()) {
            Some(Value::Text(t)) => t.clone(),
            _ => arg.to_string(),
        };
        let table = name
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let rows = self
            .columns_of(&table)?
            .into_iter()
            .filter(|c| !c.nullable && !c.has_default && !c.identity)
            .map(|c| vec![Value::Text(c.name)])
            .collect();
        let columns = vec![Column {
            name: "name".into(),
            ty: SqlType::NVarChar(Some(128)),
            nullable: false,
        }];
        Ok(Outcome {
            result: Some((columns, rows)),
            ..Outcome::default()
        })
    }

    fn insert(
        &mut self,
        table: &str,
        columns: &[String],
        head: &str,
        rows: &[Vec<String>],
        params: &Params,
    ) -> Result<Outcome, SqlError> {
        let infos = self.columns_of(table)?;
        if infos.is_empty() {
            return Err(invalid_object(table));
        }
        let mut bindings: Params = HashMap::new();
        let mut tuples = Vec::new();
        let mut context = Vec::new();
        for row in rows {
            if row.len() != columns.len() {
                return Err(sql_error(
                    110,
                    15,
                    "There are fewer columns in the INSERT statement than values specified in the VALUES clause. The number of values in the VALUES clause must match the number of columns specified in the INSERT statement.",
                ));
            }
            context.clear();
            let mut exprs = Vec::new();
            for (column, expr) in columns.iter().zip(row) {
                let info = infos
                    .iter()
                    .find(|i| i.name.eq_ignore_ascii_case(column))
                    .ok_or_else(|| invalid_column(column))?;
                let value = match params.get(&expr.to_ascii_lowercase()) {
                    Some(v) => Some(v.clone()),
                    None if expr.starts_with('@') => {
                        return Err(sql_error(
                            137,
                            15,
                            format!("Must declare the scalar variable \"{expr}\"."),
                        ));
                    }
                    None => literal(expr),
                };
                match value {
                    Some(value) => {
                        let value = self.to_column(value, info, table)?;
                        context.push((info.name.clone(), value.clone()));
                        let name = format!("@__v{}", bindings.len() + 1);
                        exprs.push(name.clone());
                        let stored = info
                            .ty
                            .as_ref()
                            .map_or_else(|| value.to_stored(), |ty| types::stored(&value, ty));
                        bindings.insert(name.to_ascii_lowercase(), Value::from_stored(&stored));
                    }
                    None => exprs.push(expr.clone()),
                }
            }
            tuples.push(format!("({})", exprs.join(", ")));
        }
        let sql = format!("{head} {}", tuples.join(", "));
        let mut all = params.clone();
        all.extend(bindings);
        let ctx = if rows.len() == 1 {
            Some(&context[..])
        } else {
            None
        };
        let count = {
            let mut stmt = self
                .db
                .prepare(&sql)
                .map_err(|e| self.map_err(e, Some(table), None))?;
            bind(&mut stmt, &all)?;
            stmt.raw_execute()
        };
        let count = count.map_err(|e| self.map_err(e, Some(table), ctx))?;
        Ok(Outcome {
            count: Some(count as u64),
            ..Outcome::default()
        })
    }

    /// Converts a value to a column's declared type; NULL into NOT NULL is 515.
    fn to_column(&self, value: Value, info: &ColumnInfo, table: &str) -> Result<Value, SqlError> {
        if value == Value::Null {
            if !info.nullable {
                return Err(null_error(&info.name, table));
            }
            return Ok(Value::Null);
        }
        let Some(ty) = &info.ty else { return Ok(value) };
        types::convert(value, ty).map_err(|e| match e {
            ConvError::Failed(number, message) => sql_error(number, 16, message),
            ConvError::Truncated(start) => sql_error(
                2628,
                16,
                format!(
                    "String or binary data would be truncated in table '{}', column '{}'. Truncated value: '{start}'.",
                    full_name(table),
                    info.name
                ),
            ),
        })
    }

    fn sql(
        &mut self,
        sql: &str,
        tables: &[String],
        items: &[Option<String>],
        star: bool,
        params: &Params,
    ) -> Result<Outcome, SqlError> {
        let first_word = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let table = tables.first().map(String::as_str);
        let mut stmt = self
            .db
            .prepare(sql)
            .map_err(|e| self.map_err(e, table, None))?;
        bind(&mut stmt, params)?;
        if stmt.column_count() == 0 {
            let count = stmt
                .raw_execute()
                .map_err(|e| self.map_err(e, table, None))?;
            let dml = matches!(first_word.as_str(), "INSERT" | "UPDATE" | "DELETE");
            return Ok(Outcome {
                count: dml.then_some(count as u64),
                ..Outcome::default()
            });
        }
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let mut stored_rows: Vec<Vec<Stored>> = Vec::new();
        {
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().map_err(|e| self.map_err(e, table, None))? {
                let mut values = Vec::with_capacity(names.len());
                for i in 0..names.len() {
                    values.push(
                        row.get::<_, Stored>(i)
                            .map_err(|e| self.map_err(e, table, None))?,
                    );
                }
                stored_rows.push(values);
            }
        }
        drop(stmt);
        // Column metadata: declared types for plain column references, else from the values.
        let mut infos = Vec::new();
        for t in tables {
            infos.extend(self.columns_of(t)?);
        }
        let mut columns = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let source = if star {
                Some(name.clone())
            } else {
                items.get(i).cloned().flatten()
            };
            let declared = source
                .and_then(|s| infos.iter().find(|c| c.name.eq_ignore_ascii_case(&s)))
                .and_then(|c| c.ty.clone().map(|ty| (ty, c.nullable)));
            let (ty, nullable) =
                declared.unwrap_or_else(|| (infer_type(stored_rows.iter().map(|r| &r[i])), true));
            columns.push(Column {
                name: name.clone(),
                ty,
                nullable,
            });
        }
        let mut rows = Vec::with_capacity(stored_rows.len());
        for stored in stored_rows {
            let mut row = Vec::with_capacity(columns.len());
            for (value, column) in stored.iter().zip(&columns) {
                let value =
                    types::convert(Value::from_stored(value), &column.ty).map_err(|_| {
                        sql_error(
                            50000,
                            16,
                            format!(
                                "stored value {value:?} of column '{}' is not a {}",
                                column.name,
                                column.ty.name()
                            ),
                        )
                    })?;
                row.push(value);
            }
            rows.push(row);
        }
        Ok(Outcome {
            result: Some((columns, rows)),
            ..Outcome::default()
        })
    }

    // ------------------------------------------------------------------ bulk load

    fn bulk_load(&mut self, data: &[u8]) -> Reply {
        let Some(target) = self.bulk.take() else {
            return error_reply(
                sql_error(
                    4804,
                    16,
                    "While reading current row from host, a premature end-of-message was encountered--an incoming row was split over multiple packets.",
                ),
                DONE_ERROR,
            );
        };
        let loaded = self.load_rows(&target, data);
        if std::env::var_os("STEVEDORE_TDS_TRACE").is_some() {
            eprintln!(
                "tds: bulk load of {} bytes into {}: {loaded:?}",
                data.len(),
                target.table
            );
        }
        match loaded {
            Ok(count) => {
                self.shared.faults.count_bulk_load();
                let mut reply = Reply::default();
                reply.done(DONE_COUNT, count);
                reply
            }
            Err(e) => error_reply(e, DONE_ERROR),
        }
    }

    fn load_rows(&mut self, target: &BulkTarget, data: &[u8]) -> Result<u64, SqlError> {
        let mut r = Reader::new(data);
        if r.u8()? != 0x81 {
            return Err(Malformed("bulk load must start with COLMETADATA".into()).into());
        }
        let count = r.u16()?;
        let mut wire_columns = Vec::new();
        for _ in 0..count {
            r.u32()?; // user type
            r.u16()?; // flags
            let ty = types::read_type_info(&mut r)?;
            let name = r.b_varchar()?;
            wire_columns.push((name, ty));
        }
        let mut rows = Vec::new();
        // tiberius ends the rows with DONE; FreeTDS just ends the message.
        while !r.is_empty() {
            match r.u8()? {
                0xD1 => {
                    let mut row = Vec::with_capacity(wire_columns.len());
                    for (_, ty) in &wire_columns {
                        row.push(types::read_value(&mut r, ty)?);
                    }
                    rows.push(row);
                }
                0xFD => break,
                other => {
                    return Err(
                        Malformed(format!("unexpected token 0x{other:02X} in bulk load")).into(),
                    );
                }
            }
        }
        let infos = self.columns_of(&target.table)?;
        let names: Vec<String> = if target.columns.len() == wire_columns.len() {
            target.columns.clone()
        } else {
            wire_columns.iter().map(|(n, _)| n.clone()).collect()
        };
        let mut targets = Vec::new();
        for name in &names {
            targets.push(
                infos
                    .iter()
                    .find(|i| i.name.eq_ignore_ascii_case(name))
                    .cloned()
                    .ok_or_else(|| invalid_column(name))?,
            );
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote(&target.table),
            names
                .iter()
                .map(|n| quote(n))
                .collect::<Vec<_>>()
                .join(", "),
            (1..=names.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Statement-level atomicity: all rows or none, and an open transaction survives.
        let autocommit = self.trancount == 0;
        if autocommit {
            self.start_writing();
        } else {
            self.open_transaction()?;
        }
        let (start, commit, undo) = if !autocommit {
            (
                "SAVEPOINT __bulk",
                "RELEASE __bulk",
                "ROLLBACK TO __bulk; RELEASE __bulk",
            )
        } else {
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        };
        let result = self
            .db
            .execute_batch(start)
            .map_err(|e| self.map_err(e, None, None))
            .and_then(|()| self.insert_rows(&sql, &target.table, &targets, rows))
            .and_then(|n| {
                self.db
                    .execute_batch(commit)
                    .map_err(|e| self.map_err(e, None, None))
                    .map(|()| n)
            });
        if result.is_err() {
            let _ = self.db.execute_batch(undo);
        }
        if autocommit {
            self.stop_writing();
        }
        result
    }

    fn insert_rows(
        &self,
        sql: &str,
        table: &str,
        targets: &[ColumnInfo],
        rows: Vec<Vec<Value>>,
    ) -> Result<u64, SqlError> {
        let mut stmt = self
            .db
            .prepare(sql)
            .map_err(|e| self.map_err(e, Some(table), None))?;
        let mut count = 0;
        for row in rows {
            let mut context = Vec::with_capacity(row.len());
            for (i, (value, info)) in row.into_iter().zip(targets).enumerate() {
                let value = self.to_column(value, info, table)?;
                let stored = info
                    .ty
                    .as_ref()
                    .map_or_else(|| value.to_stored(), |ty| types::stored(&value, ty));
                stmt.raw_bind_parameter(i + 1, stored)
                    .map_err(|e| self.map_err(e, Some(table), None))?;
                context.push((info.name.clone(), value));
            }
            stmt.raw_execute()
                .map_err(|e| self.map_err(e, Some(table), Some(&context)))?;
            count += 1;
        }
        Ok(count)
    }

    // ------------------------------------------------------------------ catalog and errors

    /// The columns of a table (temp tables first, as SQLite resolves names); empty if missing.
    fn columns_of(&self, table: &str) -> Result<Vec<ColumnInfo>, SqlError> {
        let sql = format!(
            "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info({})",
            sql_string(table)
        );
        let mut stmt = self
            .db
            .prepare(&sql)
            .map_err(|e| self.map_err(e, None, None))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, bool>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.map_err(e, None, None))?;
        let pk_count = rows.iter().filter(|r| r.4 > 0).count();
        Ok(rows
            .into_iter()
            .map(|(name, decl, notnull, has_default, pk)| ColumnInfo {
                identity: pk == 1 && pk_count == 1 && decl.eq_ignore_ascii_case("INTEGER"),
                ty: SqlType::parse(&decl),
                nullable: !notnull && pk == 0,
                has_default,
                name,
            })
            .collect())
    }

    /// Maps a SQLite error to SQL Server's error for it.
    fn map_err(
        &self,
        e: rusqlite::Error,
        table: Option<&str>,
        row: Option<&[(String, Value)]>,
    ) -> SqlError {
        use rusqlite::ffi;
        let message = match &e {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
            other => other.to_string(),
        };
        let extended = match &e {
            rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
            _ => 0,
        };
        let after = |prefix: &str| message.strip_prefix(prefix).map(|s| s.trim().to_string());
        if extended == ffi::SQLITE_CONSTRAINT_NOTNULL {
            let (t, c) = after("NOT NULL constraint failed:")
                .and_then(|s| {
                    s.split_once('.')
                        .map(|(t, c)| (t.to_string(), c.to_string()))
                })
                .unwrap_or_default();
            return null_error(&c, &t);
        }
        if extended == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || extended == ffi::SQLITE_CONSTRAINT_UNIQUE
        {
            let cols: Vec<String> = after("UNIQUE constraint failed:")
                .unwrap_or_default()
                .split(',')
                .filter_map(|c| c.trim().split_once('.').map(|(_, c)| c.to_string()))
                .collect();
            let t = message
                .split(':')
                .nth(1)
                .and_then(|s| s.trim().split('.').next())
                .unwrap_or(table.unwrap_or(""))
                .to_string();
            return self.duplicate_error(&t, &cols, row);
        }
        if extended == ffi::SQLITE_CONSTRAINT_CHECK {
            let name = after("CHECK constraint failed:").unwrap_or_default();
            return SqlError {
                number: 547,
                state: 0,
                class: 16,
                message: format!(
                    "The INSERT statement conflicted with the CHECK constraint \"{name}\". The conflict occurred in database \"{}\", table \"{}\".",
                    self.shared.options.database,
                    dbo_name(table.unwrap_or(""))
                ),
            };
        }
        // Newer SQLite appends " in <statement> at offset N" to some messages.
        let message = match message.find(" in ") {
            Some(i) if message.starts_with("no such") => message[..i].to_string(),
            _ => message,
        };
        let after = |prefix: &str| message.strip_prefix(prefix).map(|s| s.trim().to_string());
        if let Some(name) = after("no such table:") {
            return invalid_object(name.trim_start_matches("main.").trim_start_matches("temp."));
        }
        if let Some(name) = after("no such column:") {
            return invalid_column(name.rsplit('.').next().unwrap_or(&name));
        }
        if let Some(rest) = message
            .strip_prefix("table ")
            .filter(|m| m.contains(" has no column named "))
        {
            return invalid_column(rest.rsplit(' ').next().unwrap_or(""));
        }
        if let Some(rest) = message
            .strip_prefix("table ")
            .and_then(|m| m.strip_suffix(" already exists"))
        {
            return sql_error(
                2714,
                16,
                format!(
                    "There is already an object named '{}' in the database.",
                    rest.trim_matches('"')
                ),
            );
        }
        if let Some(near) = message
            .strip_prefix("near \"")
            .and_then(|m| m.strip_suffix("\": syntax error"))
        {
            return sql_error(102, 15, format!("Incorrect syntax near '{near}'."));
        }
        if message.contains("incomplete input") || message.contains("syntax error") {
            return sql_error(102, 15, "Incorrect syntax near the end of the statement.");
        }
        if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        ) {
            return sql_error(1222, 16, "Lock request time out period exceeded.");
        }
        sql_error(50000, 16, format!("SQLite: {message}"))
    }

    /// Error 2627 (primary key or unique constraint) or 2601 (unique index).
    fn duplicate_error(
        &self,
        table: &str,
        columns: &[String],
        row: Option<&[(String, Value)]>,
    ) -> SqlError {
        let key = match row {
            Some(row) => columns
                .iter()
                .map(|c| {
                    row.iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(c))
                        .map_or("?".to_string(), |(_, v)| v.key_text())
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => "?".to_string(),
        };
        let create_sql: String = self
            .db
            .query_row(
                "SELECT sql FROM sqlite_temp_master WHERE name = ?1 UNION ALL SELECT sql FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap_or_default();
        // Which index: origin 'pk', 'u' (UNIQUE constraint) or 'c' (CREATE UNIQUE INDEX).
        let mut origin = "pk".to_string();
        let mut index_name = String::new();
        let list = format!(
            "SELECT name, origin FROM pragma_index_list({}) WHERE \"unique\"",
            sql_string(table)
        );
        if let Ok(mut stmt) = self.db.prepare(&list) {
            let indexes: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .unwrap_or_default();
            for (name, o) in indexes {
                let info = format!("SELECT name FROM pragma_index_info({})", sql_string(&name));
                let cols: Vec<String> = self
                    .db
                    .prepare(&info)
                    .and_then(|mut s| {
                        s.query_map([], |r| r.get(0))
                            .and_then(|rows| rows.collect())
                    })
                    .unwrap_or_default();
                if cols.len() == columns.len()
                    && cols
                        .iter()
                        .all(|c| columns.iter().any(|k| k.eq_ignore_ascii_case(c)))
                {
                    origin = o;
                    index_name = name;
                    break;
                }
            }
        }
        let object = dbo_name(table);
        match origin.as_str() {
            "c" => sql_error(
                2601,
                14,
                format!(
                    "Cannot insert duplicate key row in object '{object}' with unique index '{index_name}'. The duplicate key value is ({key})."
                ),
            ),
            "u" => {
                let name = translate::named_constraint(&create_sql, "UNIQUE")
                    .unwrap_or_else(|| format!("UQ_{table}"));
                sql_error(
                    2627,
                    14,
                    format!(
                        "Violation of UNIQUE KEY constraint '{name}'. Cannot insert duplicate key in object '{object}'. The duplicate key value is ({key})."
                    ),
                )
            }
            _ => {
                let name = translate::named_constraint(&create_sql, "PRIMARY")
                    .unwrap_or_else(|| format!("PK_{table}"));
                sql_error(
                    2627,
                    14,
                    format!(
                        "Violation of PRIMARY KEY constraint '{name}'. Cannot insert duplicate key in object '{object}'. The duplicate key value is ({key})."
                    ),
                )
            }
        }
    }
}

/// What `SELECT @@VERSION` answers.
pub const VERSION: &str = "stevedore TDS test server (a protocol contract test double backed by SQLite, not Microsoft SQL Server) - speaks TDS 7.4";

fn error_reply(e: SqlError, status: u16) -> Reply {
    let mut reply = Reply::default();
    reply.error(e.number, e.state, e.class, &e.message);
    reply.done(status, 0);
    reply
}

fn invalid_object(name: &str) -> SqlError {
    sql_error(208, 16, format!("Invalid object name '{name}'."))
}

fn invalid_column(name: &str) -> SqlError {
    sql_error(207, 16, format!("Invalid column name '{name}'."))
}

fn null_error(column: &str, table: &str) -> SqlError {
    SqlError {
        number: 515,
        state: 2,
        class: 16,
        message: format!(
            "Cannot insert the value NULL into column '{column}', table '{}'; column does not allow nulls. INSERT fails.",
            full_name(table)
        ),
    }
}

fn dbo_name(table: &str) -> String {
    format!("dbo.{table}")
}

fn full_name(table: &str) -> String {
    if table.starts_with('#') {
        format!("tempdb.dbo.{table}")
    } else {
        format!("stevedore.dbo.{table}")
    }
}

fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The value of a literal expression (string, number, hex, NULL) in an INSERT's VALUES.
fn literal(expr: &str) -> Option<Value> {
    if expr.eq_ignore_ascii_case("NULL") {
        return Some(Value::Null);
    }
    if expr.len() >= 2 && expr.starts_with('\'') && expr.ends_with('\'') {
        return Some(Value::Text(expr[1..expr.len() - 1].replace("''", "'")));
    }
    if let Some(hex) = expr.strip_prefix("0x").or_else(|| expr.strip_prefix("0X")) {
        let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
            .collect();
        return bytes.map(Value::Bytes);
    }
    let number = expr.replace(' ', "");
    if number.parse::<f64>().is_ok() {
        return Some(match number.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Text(number),
        });
    }
    None
}

/// Binds every parameter the statement names from `params`.
fn bind(stmt: &mut rusqlite::Statement, params: &Params) -> Result<(), SqlError> {
    for i in 1..=stmt.parameter_count() {
        let Some(name) = stmt.parameter_name(i).map(str::to_string) else {
            continue;
        };
        let value = params.get(&name.to_ascii_lowercase()).ok_or_else(|| {
            sql_error(
                137,
                15,
                format!("Must declare the scalar variable \"{name}\"."),
            )
        })?;
        stmt.raw_bind_parameter(i, value.to_stored())
            .map_err(|e| sql_error(50000, 16, e.to_string()))?;
    }
    Ok(())
}

/// The type of an expression column, from its values.
fn infer_type<'a>(values: impl Iterator<Item = &'a Stored>) -> SqlType {
    let (mut text, mut long, mut blob, mut real, mut big) = (false, false, false, false, false);
    for v in values {
        match v {
            Stored::Text(t) => {
                text = true;
                long |= t.encode_utf16().count() > 4000;
            }
            Stored::Blob(_) => blob = true,
            Stored::Real(_) => real = true,
            Stored::Integer(i) => big |= i32::try_from(*i).is_err(),
            Stored::Null => {}
        }
    }
    match () {
        _ if text => SqlType::NVarChar(if long { None } else { Some(4000) }),
        _ if blob => SqlType::VarBinary(None),
        _ if real => SqlType::Float,
        _ if big => SqlType::BigInt,
        _ => SqlType::Int,
    }
}

fn write_result(reply: &mut Reply, columns: &[Column], rows: &[Vec<Value>]) {
    let out = &mut reply.bytes;
    out.push(0x81);
    out.extend_from_slice(&(columns.len() as u16).to_le_bytes());
    for c in columns {
        out.extend_from_slice(&0u32.to_le_bytes()); // user type
        let flags: u16 = 0x08 | c.nullable as u16; // updateable: unknown (as SQL Server reports)
        out.extend_from_slice(&flags.to_le_bytes());
        types::write_type_info(out, &c.ty, c.nullable);
        let mut name = Reply::default();
        name.b_varchar(&c.name);
        out.extend_from_slice(&name.bytes);
    }
    for row in rows {
        out.push(0xD1);
        for (value, c) in row.iter().zip(columns) {
            types::write_value(out, value, &c.ty, c.nullable);
        }
    }
}

/// The LOGIN7 fields this server checks.
struct Login {
    user: String,
    password: String,
    database: String,
    packet_size: u32,
}

fn parse_login(data: &[u8]) -> Result<Login, Malformed> {
    let mut r = Reader::new(data);
    r.take(8)?; // length, TDS version
    let packet_size = r.u32()?;
    let field = |offset_at: usize| -> Result<(usize, usize), Malformed> {
        let mut f = Reader::new(data);
        f.take(offset_at)?;
        Ok((f.u16()? as usize, f.u16()? as usize))
    };
    let text = |(offset, chars): (usize, usize)| -> Result<String, Malformed> {
        let mut t = Reader::new(data);
        t.take(offset)?;
        t.utf16(chars)
    };
    let (user, (pw_offset, pw_chars), database) =
        (text(field(40)?)?, field(44)?, text(field(68)?)?);
    let mut pw_reader = Reader::new(data);
    pw_reader.take(pw_offset)?;
    let decoded: Vec<u8> = pw_reader
        .take(pw_chars * 2)?
        .iter()
        .map(|b| (b ^ 0xA5).rotate_left(4))
        .collect();
    let password = wire::utf16_to_string(&decoded)?;
    Ok(Login {
        user,
        password,
        database,
        packet_size,
    })
}

fn prelogin_reply() -> Vec<u8> {
    // (token, data): VERSION, ENCRYPTION = NOT_SUP, INSTOPT valid, THREADID empty, MARS off.
    let fields: [(u8, &[u8]); 5] = [
        (0, &[16, 0, 0x10, 0x00, 0, 0]),
        (1, &[2]),
        (2, &[0]),
        (3, &[]),
        (4, &[0]),
    ];
    let mut header = Vec::new();
    let mut data = Vec::new();
    let mut offset = (fields.len() * 5 + 1) as u16;
    for (token, bytes) in fields {
        header.push(token);
        header.extend_from_slice(&offset.to_be_bytes());
        header.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        data.extend_from_slice(bytes);
        offset += bytes.len() as u16;
    }
    header.push(0xFF);
    header.extend_from_slice(&data);
    header
}
