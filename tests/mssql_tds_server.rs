//! Protocol contract tests for the test-only TDS server in `testkit/src/tds`: the real
//! tiberius client and FreeTDS (`tsql`, `freebcp`) against it. They prove the server speaks
//! the protocol the sink relies on (handshake, batches, RPC, bulk load, transactions, error
//! tokens, faults), not SQL Server semantics.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use tiberius::numeric::Numeric;
use tiberius::{IntoSql, ToSql, TokenRow, Uuid};

use testkit::tds::{TdsServer, connect};

type Client = tiberius::Client<tokio_util::compat::Compat<tokio::net::TcpStream>>;

const ALL_TYPES: &str = "CREATE TABLE dbo.all_types (
    id bigint NOT NULL PRIMARY KEY,
    i int NULL, si smallint NULL, ti tinyint NULL, b bit NULL, f float NULL, r real NULL,
    d decimal(18,4) NULL, n numeric(38,10) NULL,
    nv nvarchar(20) NULL, v varchar(10) NULL, nvmax nvarchar(max) NULL,
    dt2 datetime2(7) NULL, dt2s datetime2(3) NULL, dtm datetime NULL, dd date NULL, tm time(7) NULL,
    dto datetimeoffset(7) NULL, g uniqueidentifier NULL, vb varbinary(16) NULL, vbmax varbinary(max) NULL
)";

const COLUMNS: &str =
    "id, i, si, ti, b, f, r, d, n, nv, v, nvmax, dt2, dt2s, dtm, dd, tm, dto, g, vb, vbmax";

/// One row of `all_types`, as tiberius reads it.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    id: i64,
    i: Option<i32>,
    si: Option<i16>,
    ti: Option<u8>,
    b: Option<bool>,
    f: Option<f64>,
    r: Option<f32>,
    d: Option<Numeric>,
    n: Option<Numeric>,
    nv: Option<String>,
    v: Option<String>,
    nvmax: Option<String>,
    dt2: Option<NaiveDateTime>,
    dt2s: Option<NaiveDateTime>,
    dtm: Option<NaiveDateTime>,
    dd: Option<NaiveDate>,
    tm: Option<NaiveTime>,
    dto: Option<DateTime<FixedOffset>>,
    g: Option<Uuid>,
    vb: Option<Vec<u8>>,
    vbmax: Option<Vec<u8>>,
}

fn datetime(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").expect("test datetime")
}

impl Sample {
    fn nulls(id: i64) -> Sample {
        Sample {
            id,
            i: None,
            si: None,
            ti: None,
            b: None,
            f: None,
            r: None,
            d: None,
            n: None,
            nv: None,
            v: None,
            nvmax: None,
            dt2: None,
            dt2s: None,
            dtm: None,
            dd: None,
            tm: None,
            dto: None,
            g: None,
            vb: None,
            vbmax: None,
        }
    }

    fn typical(id: i64) -> Sample {
        Sample {
            id,
            i: Some(42),
            si: Some(-7),
            ti: Some(200),
            b: Some(true),
            f: Some(1.0 / 3.0),
            r: Some(2.5),
            d: Some(Numeric::new_with_scale(12_345_678, 4)), // 1234.5678
            n: Some(Numeric::new_with_scale(-5, 10)),        // -0.0000000005
            nv: Some("Grüße, 東京 🚢".into()),
            v: Some("Grüße".into()),
            nvmax: Some("ü".repeat(5000)), // 10,000 bytes of UTF-16: PLP chunks
            dt2: Some(datetime("2024-02-29 13:45:30.1234567")),
            dt2s: Some(datetime("2024-02-29 13:45:30.123")),
            dtm: Some(datetime("2024-02-29 13:45:30.010")),
            dd: Some(NaiveDate::from_ymd_opt(2024, 2, 29).expect("date")),
            tm: Some(NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_900).expect("time")),
            dto: Some(
                DateTime::parse_from_rfc3339("2024-02-29T13:45:30.1234567+05:30").expect("dto"),
            ),
            g: Some(Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").expect("uuid")),
            vb: Some(vec![0, 1, 2, 0xFE, 0xFF]),
            vbmax: Some((0..20_000u32).map(|i| (i % 251) as u8).collect()),
        }
    }

    fn extremes(id: i64) -> Sample {
        Sample {
            id,
            i: Some(i32::MIN),
            si: Some(i16::MAX),
            ti: Some(255),
            b: Some(false),
            f: Some(f64::MAX),
            r: Some(f32::MIN_POSITIVE),
            d: Some(Numeric::new_with_scale(-999_999_999_999_999_999, 4)),
            n: Some(Numeric::new_with_scale(
                99_999_999_999_999_999_999_999_999_999_999_999_999,
                10,
            )),
            nv: Some("ж".repeat(20)), // exactly the declared length
            v: Some("abcdefghij".into()),
            nvmax: Some(String::new()),
            dt2: Some(datetime("9999-12-31 23:59:59.9999999")),
            dt2s: Some(datetime("0001-01-01 00:00:00.000")),
            dtm: Some(datetime("1900-01-01 00:00:00.000")), // tiberius refuses earlier datetimes
            dd: Some(NaiveDate::from_ymd_opt(1, 1, 1).expect("date")),
            tm: Some(NaiveTime::from_hms_opt(0, 0, 0).expect("time")),
            dto: Some(DateTime::parse_from_rfc3339("0001-01-02T00:00:00-14:00").expect("dto")),
            g: Some(Uuid::nil()),
            vb: Some(vec![0xAB; 16]),
            vbmax: Some(Vec::new()),
        }
    }

    fn to_row(&self) -> TokenRow<'_> {
        let mut row = TokenRow::new();
        row.push(self.id.into_sql());
        row.push(self.i.into_sql());
        row.push(self.si.into_sql());
        row.push(self.ti.into_sql());
        row.push(self.b.into_sql());
        row.push(self.f.into_sql());
        row.push(self.r.into_sql());
        row.push(self.d.into_sql());
        row.push(self.n.into_sql());
        row.push(self.nv.as_deref().into_sql());
        row.push(self.v.as_deref().into_sql());
        row.push(self.nvmax.as_deref().into_sql());
        row.push(self.dt2.into_sql());
        row.push(self.dt2s.into_sql());
        row.push(self.dtm.into_sql());
        row.push(self.dd.into_sql());
        row.push(self.tm.into_sql());
        row.push(self.dto.into_sql());
        row.push(self.g.as_ref().into_sql());
        row.push(self.vb.as_ref().into_sql());
        row.push(self.vbmax.as_ref().into_sql());
        row
    }

    fn params(&self) -> Vec<&dyn ToSql> {
        vec![
            &self.id,
            &self.i,
            &self.si,
            &self.ti,
            &self.b,
            &self.f,
            &self.r,
            &self.d,
            &self.n,
            &self.nv,
            &self.v,
            &self.nvmax,
            &self.dt2,
            &self.dt2s,
            &self.dtm,
            &self.dd,
            &self.tm,
            &self.dto,
            &self.g,
            &self.vb,
            &self.vbmax,
        ]
    }

    fn read(row: &tiberius::Row) -> Sample {
        let text = |name: &str| row.get::<&str, _>(name).map(str::to_string);
        let bytes = |name: &str| row.get::<&[u8], _>(name).map(<[u8]>::to_vec);
        Sample {
            id: row.get("id").expect("id"),
            i: row.get("i"),
            si: row.get("si"),
            ti: row.get("ti"),
            b: row.get("b"),
            f: row.get("f"),
            r: row.get("r"),
            d: row.get("d"),
            n: row.get("n"),
            nv: text("nv"),
            v: text("v"),
            nvmax: text("nvmax"),
            dt2: row.get("dt2"),
            dt2s: row.get("dt2s"),
            dtm: row.get("dtm"),
            dd: row.get("dd"),
            tm: row.get("tm"),
            dto: row.get("dto"),
            g: row.get("g"),
            vb: bytes("vb"),
            vbmax: bytes("vbmax"),
        }
    }
}

async fn client(server: &TdsServer) -> Client {
    connect(&server.connection_string())
        .await
        .expect("connect to the test TDS server")
}

async fn read_samples(client: &mut Client) -> Vec<Sample> {
    let sql = format!("SELECT {COLUMNS} FROM dbo.all_types ORDER BY id");
    let rows = client
        .query(sql, &[])
        .await
        .expect("select")
        .into_first_result()
        .await
        .expect("rows");
    rows.iter().map(Sample::read).collect()
}

async fn count(client: &mut Client, table: &str) -> i32 {
    let row = client
        .query(format!("SELECT COUNT(*) FROM {table}"), &[])
        .await
        .expect("count")
        .into_row()
        .await
        .expect("count row")
        .expect("one row");
    row.get(0).expect("count value")
}

async fn bulk_insert(client: &mut Client, table: &str, rows: &[Sample]) -> tiberius::Result<u64> {
    let mut request = client.bulk_insert(table).await?;
    for row in rows {
        request.send(row.to_row()).await?;
    }
    Ok(request.finalize().await?.total())
}

fn server_error(error: &tiberius::error::Error) -> (u32, String) {
    match error {
        tiberius::error::Error::Server(e) => (e.code(), e.message().to_string()),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn mssql_tds_connects_and_reports_version() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    let row = client
        .query("SELECT @@VERSION", &[])
        .await
        .expect("query")
        .into_row()
        .await
        .expect("row")
        .expect("one row");
    let version: &str = row.get(0).expect("version text");
    assert!(version.contains("stevedore TDS test server"), "{version}");
}

#[tokio::test]
async fn mssql_tds_wrong_password_fails_login_with_18456() {
    let server = TdsServer::start();
    let error = connect(&server.connection_string_with_password("wrong"))
        .await
        .map(drop)
        .expect_err("a wrong password must not log in");
    assert_eq!(
        server_error(&error),
        (18456, "Login failed for user 'sa'.".to_string())
    );
}

#[tokio::test]
async fn mssql_tds_unknown_database_fails_login_with_4060() {
    let server = TdsServer::start();
    let conn_str = server
        .connection_string()
        .replace("database=stevedore", "database=other");
    let error = connect(&conn_str)
        .await
        .map(drop)
        .expect_err("unknown database");
    assert_eq!(server_error(&error).0, 4060);
}

#[tokio::test]
async fn mssql_tds_bulk_and_rpc_round_trip_every_type() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    client
        .simple_query(ALL_TYPES)
        .await
        .expect("create")
        .into_results()
        .await
        .expect("created");

    let bulk = vec![Sample::typical(1), Sample::extremes(2), Sample::nulls(3)];
    assert_eq!(
        bulk_insert(&mut client, "dbo.all_types", &bulk)
            .await
            .expect("bulk insert"),
        3
    );
    assert_eq!(server.faults().bulk_loads(), 1);

    let via_rpc = vec![Sample::typical(11), Sample::extremes(12), Sample::nulls(13)];
    let placeholders: Vec<String> = (1..=21).map(|i| format!("@P{i}")).collect();
    let insert = format!(
        "INSERT INTO dbo.all_types ({COLUMNS}) VALUES ({})",
        placeholders.join(", ")
    );
    for sample in &via_rpc {
        let result = client
            .execute(insert.as_str(), &sample.params())
            .await
            .expect("insert via RPC");
        assert_eq!(result.total(), 1);
    }

    let read = read_samples(&mut client).await;
    let expected: Vec<Sample> = bulk.into_iter().chain(via_rpc).collect();
    assert_eq!(read.len(), expected.len());
    for (got, want) in read.iter().zip(&expected) {
        assert_eq!(got, want, "row {}", want.id);
    }

    // A value sent as an RPC parameter is stored in the same canonical form as a bulk one.
    let db = rusqlite::Connection::open(server.sqlite_path()).expect("open sqlite");
    let stored: Vec<(String, String, String)> = db
        .prepare("SELECT d, dt2s, g FROM all_types WHERE id IN (1, 11) ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(stored[0], stored[1]);
    assert_eq!(
        stored[0],
        (
            "1234.5678".into(),
            "2024-02-29 13:45:30.123".into(),
            "6f9619ff-8b86-d011-b42d-00c04fc964ff".into()
        )
    );

    // Column metadata reports the declared types.
    let metadata = client
        .column_metadata("dbo.all_types", &["*"])
        .await
        .expect("metadata");
    let described: Vec<String> = metadata.iter().map(|c| c.to_string()).collect();
    assert_eq!(described[0], "[id] bigint");
    assert_eq!(described[7], "[d] decimal(18,4)");
    assert_eq!(described[11], "[nvmax] nvarchar(max)");
    assert!(!metadata[0].base().is_nullable() && metadata[1].base().is_nullable());
}

async fn create_orders(client: &mut Client) {
    client
        .simple_query(
            "IF OBJECT_ID(N'dbo.orders', N'U') IS NULL CREATE TABLE dbo.orders (\
             order_id bigint NOT NULL, name nvarchar(20) NOT NULL, amount decimal(18,4) NULL, \
             CONSTRAINT PK_orders PRIMARY KEY (order_id))",
        )
        .await
        .expect("create orders")
        .into_results()
        .await
        .expect("created");
}

async fn bulk_orders(client: &mut Client, ids: &[i64]) -> tiberius::Result<u64> {
    let mut request = client.bulk_insert("dbo.orders").await?;
    for id in ids {
        let mut row = TokenRow::new();
        row.push(id.into_sql());
        row.push(format!("order {id}").into_sql());
        row.push(Some(Numeric::new_with_scale(*id as i128 * 100, 2)).into_sql());
        request.send(row).await?;
    }
    Ok(request.finalize().await?.total())
}

async fn exec(client: &mut Client, sql: &str) {
    client
        .simple_query(sql)
        .await
        .expect(sql)
        .into_results()
        .await
        .expect(sql);
}

#[tokio::test]
async fn mssql_tds_rollback_discards_a_bulk_load() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    create_orders(&mut client).await;
    exec(&mut client, "BEGIN TRANSACTION").await;
    assert_eq!(bulk_orders(&mut client, &[1, 2, 3]).await.expect("bulk"), 3);
    assert_eq!(count(&mut client, "dbo.orders").await, 3);
    exec(&mut client, "ROLLBACK TRANSACTION").await;
    assert_eq!(count(&mut client, "dbo.orders").await, 0);
    let error = client
        .simple_query("COMMIT")
        .await
        .map(drop)
        .expect_err("COMMIT without BEGIN");
    assert_eq!(server_error(&error).0, 3902);
}

async fn count_orders(client: &mut Client) -> i32 {
    let row = client
        .simple_query("SELECT COUNT(*) AS n FROM dbo.orders")
        .await
        .expect("count")
        .into_row()
        .await
        .expect("counted")
        .expect("a row");
    row.get("n").expect("n")
}

/// As on SQL Server, BEGIN TRAN locks nothing and reads see committed data; the first write
/// takes the (single) writer lock. A statement-terminating error (2627) lets the batch go on,
/// and `IF @@ROWCOUNT = 1 COMMIT` commits only after an insert that went in.
#[tokio::test]
async fn mssql_tds_transaction_locks_at_first_write_and_rowcount_guards_commit() {
    let server = TdsServer::start();
    let (mut first, mut second) = (client(&server).await, client(&server).await);
    create_orders(&mut first).await;
    exec(&mut first, "BEGIN TRANSACTION").await;
    assert_eq!(count_orders(&mut first).await, 0);
    // Would wait for the first session's lock (and time out) if BEGIN had taken it.
    exec(
        &mut second,
        "INSERT INTO dbo.orders (order_id, name) VALUES (1, N'one')",
    )
    .await;
    assert_eq!(
        count_orders(&mut first).await,
        1,
        "reads see committed rows"
    );
    exec(
        &mut first,
        "INSERT INTO dbo.orders (order_id, name) VALUES (2, N'two');\nIF @@ROWCOUNT = 1 COMMIT TRANSACTION",
    )
    .await;
    assert_eq!(count_orders(&mut second).await, 2, "committed");

    exec(&mut first, "BEGIN TRANSACTION").await;
    bulk_orders(&mut first, &[3])
        .await
        .expect("bulk in the transaction");
    let duplicate = "INSERT INTO dbo.orders (order_id, name) VALUES (1, N'again');\n\
                     IF @@ROWCOUNT = 1 COMMIT TRANSACTION";
    let error = match first.simple_query(duplicate).await {
        Ok(stream) => stream.into_results().await.map(drop),
        Err(error) => Err(error),
    }
    .expect_err("duplicate key");
    assert_eq!(server_error(&error).0, 2627);
    assert_eq!(count_orders(&mut second).await, 2, "nothing committed");
    assert_eq!(
        count_orders(&mut first).await,
        3,
        "the transaction is still open"
    );
    exec(&mut first, "ROLLBACK TRANSACTION").await;
    assert_eq!(
        count_orders(&mut second).await,
        2,
        "the bulk-loaded row 3 was rolled back"
    );
}

#[tokio::test]
async fn mssql_tds_failed_bulk_rolls_back_to_savepoint_and_the_transaction_commits() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    create_orders(&mut client).await;
    exec(&mut client, "BEGIN TRAN").await;
    bulk_orders(&mut client, &[1, 2]).await.expect("first bulk");
    exec(&mut client, "SAVE TRANSACTION before_unit").await;
    let error = bulk_orders(&mut client, &[3, 2, 4])
        .await
        .map(drop)
        .expect_err("duplicate key");
    assert_eq!(
        server_error(&error),
        (
            2627,
            "Violation of PRIMARY KEY constraint 'PK_orders'. Cannot insert duplicate key in object 'dbo.orders'. \
             The duplicate key value is (2)."
                .to_string()
        )
    );
    exec(&mut client, "ROLLBACK TRANSACTION before_unit").await;
    exec(&mut client, "COMMIT TRANSACTION").await;
    let rows = client
        .query(
            "SELECT order_id, name, amount FROM dbo.orders ORDER BY order_id",
            &[],
        )
        .await
        .expect("select")
        .into_first_result()
        .await
        .expect("rows");
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r.get("order_id").expect("id"))
        .collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(rows[1].get::<&str, _>("name"), Some("order 2"));
    assert_eq!(
        rows[1].get::<Numeric, _>("amount"),
        Some(Numeric::new_with_scale(20_000, 4))
    );
    // Another session sees the committed rows.
    let mut other = connect(&server.connection_string())
        .await
        .expect("second connection");
    assert_eq!(count(&mut other, "dbo.orders").await, 2);
}

#[tokio::test]
async fn mssql_tds_errors_carry_sql_server_numbers() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    create_orders(&mut client).await;

    let mut request = client.bulk_insert("dbo.orders").await.expect("bulk start");
    let mut row = TokenRow::new();
    row.push(1i64.into_sql());
    row.push(Option::<&str>::None.into_sql());
    row.push(Option::<Numeric>::None.into_sql());
    request.send(row).await.expect("send");
    let error = request
        .finalize()
        .await
        .map(drop)
        .expect_err("NULL into NOT NULL");
    assert_eq!(
        server_error(&error),
        (
            515,
            "Cannot insert the value NULL into column 'name', table 'stevedore.dbo.orders'; column does not allow \
             nulls. INSERT fails."
                .to_string()
        )
    );

    let long = "x".repeat(21);
    let error = client
        .execute(
            "INSERT INTO dbo.orders (order_id, name) VALUES (@P1, @P2)",
            &[&5i64, &long],
        )
        .await
        .map(drop)
        .expect_err("too long");
    let (number, message) = server_error(&error);
    assert!(number == 2628 || number == 8152, "{number} {message}");
    assert!(
        message.starts_with("String or binary data would be truncated"),
        "{message}"
    );

    let error = client
        .simple_query("SELECT * FROM dbo.missing")
        .await
        .map(drop)
        .expect_err("missing table");
    assert_eq!(
        server_error(&error),
        (208, "Invalid object name 'missing'.".to_string())
    );
    let error = client
        .simple_query("SELECT nope FROM dbo.orders")
        .await
        .map(drop)
        .expect_err("missing column");
    assert_eq!(
        server_error(&error),
        (207, "Invalid column name 'nope'.".to_string())
    );
    assert_eq!(count(&mut client, "dbo.orders").await, 0);
}

#[tokio::test]
async fn mssql_tds_sink_statement_shapes() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    create_orders(&mut client).await;
    create_orders(&mut client).await; // IF OBJECT_ID ... IS NULL: the second one is a no-op
    bulk_orders(&mut client, &[1, 2]).await.expect("bulk");

    let rows = client
        .query(
            "SELECT name FROM sys.columns WHERE object_id = OBJECT_ID(@P1) AND is_nullable = 0 \
             AND is_identity = 0 AND is_computed = 0 AND default_object_id = 0",
            &[&"[dbo].[orders]"],
        )
        .await
        .expect("sys.columns")
        .into_first_result()
        .await
        .expect("rows");
    let names: Vec<&str> = rows.iter().map(|r| r.get("name").expect("name")).collect();
    assert_eq!(names, vec!["order_id", "name"]);

    // Upsert through a staging table: delete by key, then insert.
    exec(&mut client, "DROP TABLE IF EXISTS #stage; SELECT TOP 0 [order_id], [name], [amount] INTO #stage FROM dbo.orders").await;
    let mut request = client
        .bulk_insert("#stage")
        .await
        .expect("bulk into #stage");
    for (id, name) in [(2i64, "changed"), (3, "new")] {
        let mut row = TokenRow::new();
        row.push(id.into_sql());
        row.push(name.into_sql());
        row.push(Option::<Numeric>::None.into_sql());
        request.send(row).await.expect("send");
    }
    request.finalize().await.expect("finalize");
    exec(
        &mut client,
        "BEGIN TRAN;\nDELETE FROM dbo.orders WHERE EXISTS (SELECT 1 FROM #stage AS s WHERE s.[order_id] = orders.[order_id]);\n\
         INSERT INTO dbo.orders ([order_id], [name], [amount]) SELECT [order_id], [name], [amount] FROM #stage;\nCOMMIT",
    )
    .await;
    let rows = client
        .query(
            "SELECT TOP 10 order_id, name FROM dbo.orders ORDER BY order_id",
            &[],
        )
        .await
        .expect("select")
        .into_first_result()
        .await
        .expect("rows");
    let got: Vec<(i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r.get("order_id").expect("id"),
                r.get::<&str, _>("name").expect("name").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "order 1".into()),
            (2, "changed".into()),
            (3, "new".into())
        ]
    );

    // The temp table belongs to this session only.
    let mut other = connect(&server.connection_string())
        .await
        .expect("second connection");
    let error = other
        .simple_query("SELECT * FROM #stage")
        .await
        .map(drop)
        .expect_err("not visible");
    assert_eq!(server_error(&error).0, 208);
}

async fn fence_rows(client: &mut Client) -> Vec<(String, i64)> {
    client
        .simple_query("SELECT job, token FROM dbo.fences ORDER BY job")
        .await
        .expect("select")
        .into_first_result()
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r.get::<&str, _>(0).expect("job").to_string(),
                r.get::<i64, _>(1).expect("token"),
            )
        })
        .collect()
}

/// What a fencing check sends: table hints (dropped; holding ones take the writer lock in a
/// transaction), `IF [NOT] EXISTS (...) <statement>`, `THROW` ending the batch,
/// `IF COL_LENGTH(...) IS NULL ALTER TABLE ... ADD`, and a binary collation.
#[tokio::test]
async fn mssql_tds_conditional_statements_table_hints_and_throw() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    let create = "IF OBJECT_ID(N'dbo.fences', N'U') IS NULL CREATE TABLE dbo.[fences] (\
                  job nvarchar(128) COLLATE Latin1_General_BIN2 NOT NULL, token bigint NOT NULL, \
                  CONSTRAINT PK_fences PRIMARY KEY (job))";
    exec(&mut client, create).await;
    let pass = |job: &str, token: i64| {
        format!(
            "UPDATE dbo.[fences] SET token = {token} WHERE job = N'{job}' AND token < {token};\n\
             IF NOT EXISTS (SELECT 1 FROM dbo.[fences] WHERE job = N'{job}') \
             INSERT INTO dbo.[fences] (job, token) SELECT N'{job}', {token} WHERE NOT EXISTS \
             (SELECT 1 FROM dbo.[fences] WITH (UPDLOCK, HOLDLOCK) WHERE job = N'{job}');\n\
             IF EXISTS (SELECT 1 FROM dbo.[fences] WITH (REPEATABLEREAD) WHERE job = N'{job}' \
             AND token > {token}) THROW 51000, N'fenced: it''s newer', 1;\n\
             INSERT INTO dbo.[fences] (job, token) VALUES (N'after {job} {token}', {token})"
        )
    };
    exec(
        &mut client,
        &format!(
            "BEGIN TRANSACTION;\n{};\nCOMMIT TRANSACTION",
            pass("orders", 4)
        ),
    )
    .await;
    exec(&mut client, &pass("Orders", 2)).await;
    exec(&mut client, &pass("orders", 5)).await;
    let error = match client.simple_query(pass("orders", 3)).await {
        Ok(stream) => stream.into_results().await.map(drop),
        Err(error) => Err(error),
    }
    .expect_err("a lower token throws");
    assert_eq!(
        server_error(&error),
        (51000, "fenced: it's newer".to_string())
    );
    assert_eq!(
        fence_rows(&mut client).await,
        vec![
            ("Orders".to_string(), 2),
            ("after Orders 2".to_string(), 2),
            ("after orders 4".to_string(), 4),
            ("after orders 5".to_string(), 5),
            ("orders".to_string(), 5),
        ],
        "raised, inserted once per job (case and all), and nothing ran after the THROW"
    );

    // A column added once, however often asked.
    for _ in 0..2 {
        exec(
            &mut client,
            "IF COL_LENGTH(N'dbo.fences', N'note') IS NULL ALTER TABLE dbo.[fences] ADD note nvarchar(max) NULL",
        )
        .await;
    }
    exec(
        &mut client,
        "UPDATE dbo.fences SET note = N'x' WHERE job = N'orders'",
    )
    .await;
    let error = match client
        .simple_query(
            "IF COL_LENGTH(N'dbo.fences', N'note') IS NOT NULL THROW 50001, N'present', 1",
        )
        .await
    {
        Ok(stream) => stream.into_results().await.map(drop),
        Err(error) => Err(error),
    }
    .expect_err("the column is there");
    assert_eq!(server_error(&error).0, 50001);
}

#[tokio::test]
async fn mssql_tds_fault_drop_during_bulk_load_stores_nothing() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    create_orders(&mut client).await;
    server.faults().drop_during_bulk_load(1);
    exec(&mut client, "BEGIN TRANSACTION").await;
    let ids: Vec<i64> = (1..=500).collect();
    let error = bulk_orders(&mut client, &ids)
        .await
        .map(drop)
        .expect_err("the connection drops");
    assert!(
        !matches!(error, tiberius::error::Error::Server(_)),
        "expected an IO/connection error, got {error:?}"
    );
    drop(client);
    let mut fresh = connect(&server.connection_string())
        .await
        .expect("reconnect");
    assert_eq!(count(&mut fresh, "dbo.orders").await, 0);
    assert_eq!(server.faults().bulk_loads(), 0);
    // The fault was used up: the next bulk load works.
    assert_eq!(bulk_orders(&mut fresh, &ids).await.expect("bulk"), 500);
    assert_eq!(server.faults().bulk_loads(), 1);
}

#[tokio::test]
async fn mssql_tds_fault_fail_next_reaches_the_client() {
    let server = TdsServer::start();
    let mut client = client(&server).await;
    create_orders(&mut client).await;
    server.faults().fail_next(
        "INSERT BULK",
        1205,
        "Transaction (Process ID 52) was deadlocked on lock resources with another process and has been chosen as \
         the deadlock victim. Rerun the transaction.",
        1,
    );
    let error = bulk_orders(&mut client, &[1])
        .await
        .map(drop)
        .expect_err("injected deadlock");
    match &error {
        tiberius::error::Error::Server(e) => assert_eq!(e.code(), 1205),
        other => panic!("expected a server error, got {other:?}"),
    }
    server
        .faults()
        .fail_next("COUNT(*)", 40501, "The service is currently busy.", 1);
    let error = client
        .simple_query("SELECT COUNT(*) FROM dbo.orders")
        .await
        .map(drop)
        .expect_err("throttled");
    assert_eq!(server_error(&error).0, 40501);

    // Delayed replies still arrive, and the retried work succeeds.
    server.faults().delay_replies(Duration::from_millis(20));
    assert_eq!(bulk_orders(&mut client, &[1]).await.expect("retry"), 1);
    server.faults().delay_replies(Duration::ZERO);
    assert_eq!(count(&mut client, "dbo.orders").await, 1);
}

/// Runs a FreeTDS tool with a freetds.conf that points `stevedore` at the server.
fn freetds(
    server: &TdsServer,
    dir: &std::path::Path,
    tool: &str,
    args: &[&str],
    stdin: &str,
) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let conf = dir.join("freetds.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\n\ttds version = 7.4\n\tclient charset = UTF-8\n\n[stevedore]\n\thost = 127.0.0.1\n\tport = {}\n\
             \ttds version = 7.4\n\tencryption = off\n",
            server.port()
        ),
    )
    .expect("write freetds.conf");
    let mut child = Command::new(tool)
        .args(args)
        .env("FREETDSCONF", &conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{tool}` ({e}): install the Debian package freetds-bin (CI installs it)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait for FreeTDS");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{tool} {}` failed:\n{text}",
        args.join(" ")
    );
    text
}

#[tokio::test]
async fn mssql_tds_freetds_tsql_and_freebcp() {
    let server = TdsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut client = client(&server).await;
    exec(
        &mut client,
        "CREATE TABLE dbo.t (id int NOT NULL PRIMARY KEY, name nvarchar(40) NULL, amount decimal(10,2) NULL, \
         seen datetime2(3) NULL, flag bit NULL, ratio float NULL, big bigint NULL)",
    )
    .await;
    let data = dir.path().join("rows.tsv");
    std::fs::write(
        &data,
        "1\tGrüße, 東京 🚢\t12.50\t2024-02-29 13:45:30.123\t1\t0.25\t9223372036854775807\n\
         2\tplain\t-0.01\t2000-01-01 00:00:00.000\t0\t-1.5\t-42\n",
    )
    .expect("write rows");
    let pw = "Stevedore-test-1";
    let out = freetds(
        &server,
        dir.path(),
        "freebcp",
        &[
            "dbo.t",
            "in",
            data.to_str().expect("path"),
            "-c",
            "-U",
            "sa",
            "-P",
            pw,
            "-S",
            "stevedore",
            "-D",
            "stevedore",
        ],
        "",
    );
    // freebcp exits 0 even when the server reports an error.
    assert!(
        out.contains("2 rows copied") && !out.contains("Msg "),
        "{out}"
    );

    let out = freetds(
        &server,
        dir.path(),
        "tsql",
        &["-S", "stevedore", "-U", "sa", "-P", pw, "-D", "stevedore"],
        "SELECT COUNT(*) AS n FROM dbo.t\ngo\nexit\n",
    );
    assert!(out.lines().any(|l| l.trim() == "2"), "tsql output:\n{out}");

    let rows = client
        .query(
            "SELECT id, name, amount, seen, flag, ratio, big FROM dbo.t ORDER BY id",
            &[],
        )
        .await
        .expect("select")
        .into_first_result()
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<&str, _>("name"), Some("Grüße, 東京 🚢"));
    assert_eq!(
        rows[0].get::<Numeric, _>("amount"),
        Some(Numeric::new_with_scale(1250, 2))
    );
    assert_eq!(
        rows[0].get::<NaiveDateTime, _>("seen"),
        Some(datetime("2024-02-29 13:45:30.123"))
    );
    assert_eq!(rows[0].get::<bool, _>("flag"), Some(true));
    assert_eq!(rows[0].get::<f64, _>("ratio"), Some(0.25));
    assert_eq!(rows[0].get::<i64, _>("big"), Some(i64::MAX));
    assert_eq!(
        rows[1].get::<Numeric, _>("amount"),
        Some(Numeric::new_with_scale(-1, 2))
    );
    assert_eq!(rows[1].get::<i64, _>("big"), Some(-42));
}
