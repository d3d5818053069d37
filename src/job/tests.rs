use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, JobConfig, RedisConfig};
use crate::sink::WriteMode;
use crate::sink::sqlite::SqliteSinkConfig;

fn parse(text: &str) -> Result<JobConfig, ConfigError> {
    let env = |name: &str| (name == "DB_PATH").then(|| "/tmp/x.db".to_string());
    super::parse(text, Path::new("job.toml"), &env)
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("config should be invalid"),
        Err(error) => error.to_string(),
    }
}

const VALID: &str = r#"
[job]
name = "demo"
[redis]
url = "managed"
data_dir = "var/redis"
[workers]
producers = 2
consumers = 3
[queue]
unit_records = 250
visibility_timeout = "45s"
max_receives = 4
[[source]]
name = "orders"
kind = "files"
path = "data/orders-*.jsonl"
format = "jsonl"
[[source]]
name = "synthetic"
kind = "generator"
count = 1000
seed = 7
[[sink]]
name = "local"
kind = "sqlite"
path = "${DB_PATH}"
table = "orders"
mode = "upsert"
key = ["id"]
[sink.map]
id = "id"
amount = { from = "total", type = "real" }
note = { from = "comment", default = "" }
[[sink]]
name = "nowhere"
kind = "blackhole"
"#;

#[test]
fn config_valid_example_loads_with_every_setting() {
    let config = parse(VALID).unwrap();
    assert_eq!(config.job.name, "demo");
    assert_eq!(config.job.data_dir, PathBuf::from("var/demo"));
    assert!(matches!(config.redis, RedisConfig::Managed { .. }));
    assert_eq!((config.workers.producers, config.workers.consumers), (2, 3));
    assert_eq!(config.queue.unit_records, 250);
    assert_eq!(config.queue.visibility_timeout, Duration::from_secs(45));
    assert_eq!(config.sources.len(), 2);
    assert_eq!(config.sinks[0].kind, "sqlite", "first sink is sqlite");
    let sqlite: &SqliteSinkConfig = config.sinks[0].settings();
    assert_eq!(sqlite.path, PathBuf::from("/tmp/x.db"));
    assert_eq!(sqlite.mode, WriteMode::Upsert);
    assert_eq!(config.sinks[0].map.columns().unwrap().len(), 3);
    assert_eq!(config.sinks[1].kind, "blackhole");
    assert!(config.sinks[1].map.is_passthrough());
}

#[test]
fn config_unknown_keys_are_all_reported_with_paths() {
    let text = VALID
        .replace("producers = 2", "producers = 2\nproducer = 3")
        .replace("seed = 7", "seed = 7\ncolour = \"red\"");
    let report = problems(&text);
    assert!(report.contains("workers.producer: unknown key"), "{report}");
    assert!(
        report.contains("source[1] (synthetic).colour: unknown key"),
        "{report}"
    );
    assert!(report.contains("2 problem(s)"), "{report}");
}

#[test]
fn config_missing_sink_table_names_the_sink() {
    let report = problems(&VALID.replace("table = \"orders\"\n", ""));
    assert!(
        report.contains("sink[0] (local)") && report.contains("table"),
        "{report}"
    );
}

#[test]
fn config_bad_duration_names_the_field() {
    let report = problems(&VALID.replace("\"45s\"", "\"45 parsecs\""));
    assert!(
        report.contains("queue.visibility_timeout: invalid duration `45 parsecs`"),
        "{report}"
    );
}

#[test]
fn config_missing_env_var_names_field_and_variable() {
    let report = problems(&VALID.replace("${DB_PATH}", "${NOT_SET_ANYWHERE}"));
    assert!(
        report.contains("sink[0].path: environment variable `NOT_SET_ANYWHERE` is not set"),
        "{report}"
    );
}

#[test]
fn config_semantic_problems_are_reported_together() {
    let text = VALID
        .replace("producers = 2", "producers = 0")
        .replace("key = [\"id\"]", "key = [\"order_no\"]")
        .replace("name = \"nowhere\"", "name = \"local\"")
        .replace(
            "kind = \"blackhole\"",
            "kind = \"blackhole\"\n[[sink]]\nname = \"x\"\nkind = \"oracle\"",
        );
    let report = problems(&text);
    assert!(
        report.contains("workers.producers: must be between 1 and 256"),
        "{report}"
    );
    assert!(
        report.contains("key column `order_no` is not in [sink.map]"),
        "{report}"
    );
    assert!(report.contains("another sink has this name"), "{report}");
    assert!(report.contains("unknown sink kind `oracle`"), "{report}");
}

#[test]
fn config_type_errors_and_syntax_errors_are_located() {
    let report = problems(&VALID.replace("unit_records = 250", "unit_records = \"many\""));
    assert!(report.contains("queue.unit_records"), "{report}");
    let syntax = parse("[job\nname = 1").unwrap_err().to_string();
    assert!(
        syntax.contains("not valid TOML") && syntax.contains("line 1"),
        "{syntax}"
    );
}

#[test]
fn config_two_sqlite_sinks_may_not_share_a_table() {
    let text = VALID.replace(
        "name = \"nowhere\"\nkind = \"blackhole\"",
        "name = \"again\"\nkind = \"sqlite\"\npath = \"${DB_PATH}\"\ntable = \"ORDERS\"",
    );
    let report = problems(&text);
    assert!(
        report
            .contains("sink[1] (again).table: another sqlite sink writes this table of this file"),
        "{report}"
    );
}

#[test]
fn config_two_sqlite_sinks_may_not_share_a_table_however_the_path_is_spelt() {
    let text = VALID
        .replace("path = \"${DB_PATH}\"", "path = \"data/out.db\"")
        .replace(
            "name = \"nowhere\"\nkind = \"blackhole\"",
            "name = \"again\"\nkind = \"sqlite\"\npath = \"data//./out.db\"\ntable = \"orders\"",
        );
    let report = problems(&text);
    assert!(
        report
            .contains("sink[1] (again).table: another sqlite sink writes this table of this file"),
        "{report}"
    );
}

fn cosmos_sink(settings: &str, map: &str) -> String {
    format!(
        r#"
[job]
name = "docs"
[[source]]
name = "gen"
kind = "generator"
count = 10
[[sink]]
name = "documents"
kind = "cosmos"
endpoint = "https://account.documents.azure.com:443/"
key = "a2V5"
database = "shop"
container = "orders"
{settings}
[sink.map]
{map}
"#
    )
}

#[test]
fn config_cosmos_id_and_partition_key_fields_must_be_mapped() {
    let config = parse(&cosmos_sink(
        "partition_key = \"/customerId\"\nid = \"{order_id}\"",
        "order_id = \"id\"\ncustomerId = \"customer\"",
    ))
    .expect("valid");
    assert_eq!(config.sinks[0].kind, "cosmos");
    let text = problems(&cosmos_sink(
        "partition_key = \"/customerId\"\nid = \"{order_id}\"",
        "order_id = \"id\"",
    ));
    assert!(
        text.contains("sink[0] (documents).map")
            && text.contains("`customerId` is used by id or partition_key"),
        "{text}"
    );
}

#[test]
fn config_cosmos_partition_key_on_id_is_the_rendered_id() {
    // `/id` needs no `id` column: every document gets the rendered id.
    parse(&cosmos_sink(
        "partition_key = \"/id\"\nid = \"order-{n}\"",
        "n = \"id\"",
    ))
    .expect("`/id` is always there");
    let text = problems(&cosmos_sink(
        "partition_key = \"/id/x\"\nid = \"{n}\"",
        "n = \"id\"",
    ));
    assert!(
        text.contains("sink[0] (documents).partition_key") && text.contains("reads inside `id`"),
        "{text}"
    );
}

#[test]
fn config_a_sink_map_with_problems_is_not_also_reported_as_missing() {
    let text = r#"
[job]
name = "x"
[[source]]
name = "gen"
kind = "generator"
count = 1
[[sink]]
name = "db"
kind = "mssql"
connection = "server=tcp:db.example.com,1433;user id=u;password=p"
table = "orders"
[sink.map]
amount = { from = "total", type = "money?" }
"#;
    let report = problems(text);
    assert!(
        report.contains("sink[0] (db).map.amount.type: unknown type `money?`"),
        "{report}"
    );
    assert!(!report.contains("needs [sink.map]"), "{report}");
    assert!(report.contains("1 problem(s)"), "{report}");
}

#[test]
fn hardening_config_type_errors_are_all_reported_in_plain_words() {
    let text = VALID
        .replace("producers = 2", "producers = \"two\"")
        .replace("consumers = 3", "consumers = -1")
        .replace("unit_records = 250", "unit_records = 2.5")
        .replace("format = \"jsonl\"", "format = \"xml\"")
        .replace("mode = \"upsert\"", "mode = \"upsert\"\nbusy_timeout = 5");
    let report = problems(&text);
    for expected in [
        "workers.producers: expected a whole number (0 to 4294967295), found string \"two\"",
        "workers.consumers: expected a whole number (0 to 4294967295), got integer `-1`",
        "queue.unit_records: expected a whole number (0 or more), found floating point `2.5`",
        "source[0] (orders).format: unknown variant `xml`, expected `jsonl` or `csv`",
        "sink[0] (local).busy_timeout: expected a string, found integer `5`",
    ] {
        assert!(report.contains(expected), "`{expected}` in:\n{report}");
    }
    assert!(!report.contains("\nin `"), "no parser internals:\n{report}");
    assert!(!report.contains("has no [[sink]]"), "{report}");
}

#[test]
fn hardening_config_numbers_and_durations_are_bounded_by_what_the_system_honours() {
    let text = VALID
        .replace(
            "producers = 2",
            "producers = 100000\nheartbeat_timeout = \"0s\"",
        )
        .replace(
            "visibility_timeout = \"45s\"",
            "visibility_timeout = \"116d\"\nmax_record_bytes = 10",
        )
        .replace("max_receives = 4", "max_receives = 0\nhigh_watermark = 0")
        .replace(
            "mode = \"upsert\"",
            "mode = \"upsert\"\nbusy_timeout = \"2h\"",
        );
    let report = problems(&text);
    for expected in [
        "workers.producers: must be between 1 and 256 (each is a process), not 100000",
        "workers.heartbeat_timeout: must be at least 3s",
        "queue.visibility_timeout: must be at most 9999999s",
        "queue.max_receives: must be between 1 and 1000",
        "queue.high_watermark: must be at least 1",
        "queue.max_record_bytes: must be between 1024 and 134217728",
        "sink[0] (local).busy_timeout: must be between 0s and 1h",
    ] {
        assert!(report.contains(expected), "`{expected}` in:\n{report}");
    }
}

#[test]
fn config_sql_sinks_refuse_map_columns_that_differ_only_in_case() {
    let text = VALID.replace("note = {", "Amount = \"x\"\nnote = {");
    let report = problems(&text);
    assert!(
        report.contains("sink[0] (local).map: `amount` and `Amount` name the same column"),
        "{report}"
    );
}

#[test]
fn config_files_split_bytes_is_0_or_at_least_a_mebibyte_and_part_of_the_plan_basis() {
    let with_split = |value: &str| {
        VALID.replace(
            "format = \"jsonl\"",
            &format!("format = \"jsonl\"\nsplit_bytes = {value}"),
        )
    };
    let report = problems(&with_split("4096"));
    assert!(
        report.contains(
            "source[0] (orders).split_bytes: must be 0 (read every file whole) or at least \
             1048576 (1 MiB), not 4096"
        ),
        "{report}"
    );
    assert!(problems(&with_split("-1")).contains("split_bytes"));
    let default = parse(VALID).unwrap();
    let off = parse(&with_split("0")).unwrap();
    assert!(
        default
            .plan_basis()
            .contains("orders files data/orders-*.jsonl Jsonl split_bytes=67108864 lines=text;"),
        "{}",
        default.plan_basis()
    );
    assert_ne!(off.plan_basis(), default.plan_basis());
    // What a build from before ranges wrote: its plans are resumed, their files read whole.
    assert!(!default.before_split_plan_basis().contains("split_bytes"));
    assert_eq!(
        off.before_split_plan_basis(),
        default.before_split_plan_basis()
    );
}

#[test]
fn config_a_plan_basis_tells_which_build_planned_the_run() {
    use crate::config::PlannedBy;
    let config = parse(VALID).unwrap();
    let planned_by = |basis: String| config.planned_by(&basis);
    assert_eq!(planned_by(config.plan_basis()), Some(PlannedBy::This));
    // Before JSONL lines were text: the basis without `lines=text`.
    let before_text = config.before_text_plan_basis();
    assert!(
        before_text.contains("Jsonl split_bytes=67108864;"),
        "{before_text}"
    );
    assert_eq!(planned_by(before_text), Some(PlannedBy::BeforeText));
    assert!(PlannedBy::BeforeText.reads_lines_as_values());
    assert_eq!(
        planned_by(config.before_split_plan_basis()),
        Some(PlannedBy::BeforeSplit)
    );
    assert!(PlannedBy::BeforeSplit.reads_lines_as_values());
    assert!(!PlannedBy::This.reads_lines_as_values());
    assert_eq!(PlannedBy::CountOnly.unit_byte_budget(2000), usize::MAX);
    assert_eq!(PlannedBy::BeforeText.unit_byte_budget(2000), 2000);
    assert_eq!(
        planned_by(config.plan_basis().replace("=250", "=251")),
        None
    );
    // CSV was always read into values: its basis did not change.
    let csv = parse(&VALID.replace("format = \"jsonl\"", "format = \"csv\"")).unwrap();
    assert_eq!(csv.plan_basis(), csv.before_text_plan_basis());
    assert_eq!(csv.planned_by(&csv.plan_basis()), Some(PlannedBy::This));
}
