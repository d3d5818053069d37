//! The HTTP API source end to end: `stevedore run` against the strict REST server of the test
//! support crate (`testkit::http_api`), which bans a client for good once a calendar second
//! holds more requests than its limit, issues tokens that expire after a few seconds, pages
//! by cursor, page, offset or Link header, and fails on request. Records land in SQLite and
//! are counted there; the API's own log says what it saw.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use testkit::http_api::{ApiConfig, ApiServer, CLIENT_ID, CLIENT_SECRET, Pagination, Seen};
use testkit::{
    Job, RunResult, TestRedis, kill, stevedore_bin, summary_worker, wait_until, worker_pid,
};

/// A job reading `sources` (the `[[source]]` tables) with `producers` producers into SQLite
/// table `users` (appended: a record that landed twice would be two rows).
fn api_job(redis: &TestRedis, name: &str, producers: u32, sources: &str) -> Job {
    Job::new(&format!(
        r#"
        [job]
        name = "{name}"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = {producers}
        consumers = 2
        [queue]
        visibility_timeout = "5s"
        {sources}
        [[sink]]
        name = "db"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "users"
        "#,
        url = redis.url()
    ))
    .with_env("API_CLIENT_ID", CLIENT_ID)
    .with_env("API_CLIENT_SECRET", CLIENT_SECRET)
}

/// One `[[source]]` table for `server`, with OAuth2 client credentials from the environment.
fn api_source(
    server: &ApiServer,
    name: &str,
    tenants: &str,
    pagination: &str,
    rate: u32,
) -> String {
    let url = server.url();
    format!(
        r#"
        [[source]]
        name = "{name}"
        kind = "http"
        url = "{url}/v1/tenants/{{tenant}}/users"
        records = "/data"
        headers = {{ "Accept" = "application/json" }}
        {tenants}
        timeout = "10s"
        [source.pagination]
        {pagination}
        [source.auth]
        kind = "oauth2_client_credentials"
        token_url = "{url}/oauth/token"
        client_id = "${{API_CLIENT_ID}}"
        client_secret = "${{API_CLIENT_SECRET}}"
        scope = "users.read"
        [source.limits]
        requests_per_second = {rate}
        max_concurrency = 1
        retries = 5
        "#
    )
}

const CURSOR: &str = r#"kind = "cursor"
        param = "cursor"
        next = "/meta/next_cursor""#;

/// (tenant, id) of every row, and how many rows there are.
fn landed(job: &Job) -> (BTreeSet<(String, i64)>, usize) {
    let rows = job.sqlite_rows("out.db", "users");
    let keys = rows
        .iter()
        .map(|row| {
            (
                row["tenant"].as_str().unwrap().to_string(),
                row["id"].as_i64().unwrap(),
            )
        })
        .collect();
    (keys, rows.len())
}

fn expected(tenants: &[&str], records: i64) -> BTreeSet<(String, i64)> {
    tenants
        .iter()
        .flat_map(|tenant| (1..=records).map(move |id| (tenant.to_string(), id)))
        .collect()
}

/// Requests for records (not tokens) of `tenant`.
fn page_requests<'a>(log: &'a [Seen], tenant: &str) -> Vec<&'a Seen> {
    let path = format!("GET /v1/tenants/{tenant}/users");
    log.iter()
        .filter(|seen| seen.target.starts_with(&path))
        .collect()
}

#[test]
fn http_four_producers_three_tenants_at_20_per_second_are_never_banned_and_land_once() {
    let redis = TestRedis::start();
    let tenants = ["acme", "globex", "initech"];
    let server = ApiServer::start(ApiConfig::new(&tenants, 2000));
    let job = api_job(
        &redis,
        "apisync",
        4,
        &api_source(
            &server,
            "users",
            r#"tenants = ["acme", "globex", "initech"]"#,
            CURSOR,
            20,
        ),
    );
    let result = job.run();
    result.expect_code(0);
    assert!(!server.banned(), "the API banned the job");
    assert!(
        server.busiest_second() <= 20,
        "the API saw {} requests in one second",
        server.busiest_second()
    );
    let (keys, rows) = landed(&job);
    assert_eq!(keys, expected(&tenants, 2000));
    assert_eq!(rows, 6000, "every record exactly once");
    assert_eq!(result.summary["records_read"], 6000);
    // 20 pages per tenant and the tokens, nothing read twice.
    for tenant in tenants {
        assert_eq!(page_requests(&server.log(), tenant).len(), 20, "{tenant}");
    }
}

#[test]
fn http_tokens_expiring_and_revoked_mid_run_are_refreshed_a_bounded_number_of_times() {
    let redis = TestRedis::start();
    let tenants = ["acme", "globex"];
    let mut config = ApiConfig::new(&tenants, 2000);
    config.token_lifetime = Some(Duration::from_secs(3));
    let server = ApiServer::start(config);
    let job = api_job(
        &redis,
        "tokens",
        3,
        &api_source(
            &server,
            "users",
            r#"tenants = ["acme", "globex"]"#,
            CURSOR,
            10,
        ),
    );
    let run = job.spawn_run();
    // Revoke every token once a quarter of the pages are read: the next requests get 401s.
    wait_until("a quarter of the pages are read", || {
        server.log().iter().filter(|s| s.status == 200).count() > 10
    });
    server.revoke_tokens();
    let result = job.finish(run);
    result.expect_code(0);
    let (keys, rows) = landed(&job);
    assert_eq!(keys, expected(&tenants, 2000));
    assert_eq!(rows, 4000);
    let log = server.log();
    let refused = log.iter().filter(|s| s.status == 401).count();
    assert!(refused >= 1, "revoking tokens must have caused a 401");
    // Tokens are used for 80% of their 3 s: one per 2.4 s of the run, plus the first, plus
    // one for the revocation. Three producers refreshing each on their own would be more.
    let span_ms = log.last().unwrap().at_ms - log.first().unwrap().at_ms;
    let bound = span_ms / 2400 + 3;
    let calls = server.token_calls();
    assert!(calls >= 2, "the token was never refreshed ({calls} calls)");
    assert!(
        calls as u64 <= bound,
        "{calls} token calls in {span_ms} ms (at most {bound})"
    );
    assert!(!server.banned());
}

#[test]
fn http_producer_killed_mid_tenant_resumes_at_its_page_exactly_once() {
    let redis = TestRedis::start();
    let server = ApiServer::start(ApiConfig::new(&["acme"], 4000));
    let job = api_job(
        &redis,
        "apikill",
        1,
        &api_source(&server, "users", r#"tenants = ["acme"]"#, CURSOR, 10),
    );
    let run = job.spawn_run();
    let pid = worker_pid(&redis, "apikill", "producer-1");
    wait_until("ten pages are read", || {
        page_requests(&server.log(), "acme")
            .iter()
            .filter(|s| s.status == 200)
            .count()
            >= 10
    });
    kill(pid, "KILL");
    let served_before_kill = page_requests(&server.log(), "acme").len();
    let result = job.finish(run);
    result.expect_code(0);
    let (keys, rows) = landed(&job);
    assert_eq!(keys, expected(&["acme"], 4000));
    assert_eq!(rows, 4000, "every record exactly once");
    let log = server.log();
    let pages = page_requests(&log, "acme");
    let first_pages = pages
        .iter()
        .filter(|seen| !seen.target.contains("cursor="))
        .count();
    assert_eq!(first_pages, 1, "the restarted producer started over");
    // 40 pages. Pages read but not yet sent and checkpointed when it died are read again;
    // how many depends on the machine's speed, but never all of them: it did not start over.
    assert!(
        pages.len() >= 40 && pages.len() < 40 + served_before_kill,
        "{} page requests, {served_before_kill} before the kill: {pages:?}",
        pages.len()
    );
    assert_eq!(
        summary_worker(&result.summary, "producer", 1)["restarts"],
        1,
        "{}",
        result.summary
    );
}

#[test]
fn http_every_pagination_kind_reads_every_record_once() {
    let redis = TestRedis::start();
    let tenants = ["acme", "globex"];
    let server_for = |pagination: Pagination| {
        let mut config = ApiConfig::new(&tenants, 250);
        config.pagination = pagination;
        config.requests_per_second = 10;
        ApiServer::start(config)
    };
    let (page, offset, link, cursor) = (
        server_for(Pagination::Page),
        server_for(Pagination::Offset),
        server_for(Pagination::Link),
        server_for(Pagination::Cursor),
    );
    let listed = r#"tenants = ["acme", "globex"]"#;
    let from_file = r#"tenants_file = "tenants.jsonl""#;
    let sources = [
        api_source(
            &page,
            "paged",
            listed,
            "kind = \"page\"\nparam = \"page\"\nsize_param = \"per_page\"\nsize = 100\nstart = 1",
            8,
        ),
        api_source(
            &offset,
            "offset",
            from_file,
            "kind = \"offset\"\nparam = \"offset\"\nsize_param = \"limit\"\nsize = 100",
            8,
        ),
        api_source(&link, "linked", listed, "kind = \"link\"", 8),
        api_source(&cursor, "cursor", listed, CURSOR, 8),
    ];
    let job = api_job(&redis, "pagination", 2, &sources.concat());
    job.write(
        "tenants.jsonl",
        "{\"tenant\": \"acme\"}\n\n{\"tenant\": \"globex\"}\n",
    );
    job.run().expect_code(0);
    let rows = job.sqlite_rows("out.db", "users");
    assert_eq!(rows.len(), 4 * 500, "four sources, 500 records each");
    let keys: BTreeSet<(String, i64)> = rows
        .iter()
        .map(|row| {
            (
                row["tenant"].as_str().unwrap().to_string(),
                row["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, expected(&tenants, 250));
    for (server, kind) in [
        (&page, "page"),
        (&offset, "offset"),
        (&link, "link"),
        (&cursor, "cursor"),
    ] {
        // Three pages per tenant: 100, 100, then a short 50 that ends the tenant.
        assert_eq!(
            page_requests(&server.log(), "acme").len(),
            3,
            "{kind}: {:?}",
            server.log()
        );
        assert!(!server.banned(), "{kind}");
    }
}

#[test]
fn http_a_failing_tenant_fails_alone_and_the_run_names_it() {
    let redis = TestRedis::start();
    let server = ApiServer::start(ApiConfig::new(&["acme", "mixed", "globex"], 300));
    let job = api_job(
        &redis,
        "apifail",
        2,
        &api_source(
            &server,
            "users",
            r#"tenants = ["acme", "initech", "broken", "mixed", "globex"]"#,
            CURSOR,
            10,
        ),
    );
    let result = job.run();
    result.expect_code(1);
    let reason = result.summary["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("2 work item(s) failed")
            && reason.contains("tenant `initech` failed at page 1")
            && reason.contains("404")
            && reason.contains("no tenant initech")
            && reason.contains("tenant `broken` failed at page 1")
            && reason.contains("not JSON"),
        "{reason}"
    );
    assert!(
        !reason.contains(CLIENT_SECRET) && !reason.contains("token-"),
        "{reason}"
    );
    // The 404 was not retried: an invalid lookup retried is how clients get banned.
    assert_eq!(page_requests(&server.log(), "initech").len(), 1);
    // Every other tenant landed whole; `mixed`'s numbers went to the dead-letter queue.
    let (keys, rows) = landed(&job);
    let mut want = expected(&["acme", "globex"], 300);
    want.extend(
        (1..=300)
            .filter(|id| id % 10 != 0)
            .map(|id| ("mixed".to_string(), id)),
    );
    assert_eq!(keys, want);
    assert_eq!(rows, want.len());
    assert_eq!(result.summary["sinks"]["db"]["dead_lettered"], 30);
    let letters = std::process::Command::new(stevedore_bin())
        .args(["dlq", "list", "--sink", "db", "--config"])
        .arg(&job.config)
        .env("API_CLIENT_ID", CLIENT_ID)
        .env("API_CLIENT_SECRET", CLIENT_SECRET)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&letters.stdout),
        String::from_utf8_lossy(&letters.stderr),
    );
    assert!(stdout.contains("not a JSON object"), "{stdout}\n{stderr}");

    // The API learns `initech`: the next run resumes the run and reads the failed tenants
    // again; `initech` lands, `broken` fails again, nothing lands twice.
    server.add_tenant("initech", 300);
    let rerun = job.run();
    rerun.expect_code(1);
    assert_eq!(rerun.summary["resumed"], true);
    let reason = rerun.summary["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("1 work item(s) failed") && reason.contains("tenant `broken`"),
        "{reason}"
    );
    let (keys, rows) = landed(&job);
    want.extend(expected(&["initech"], 300));
    assert!(
        keys == want,
        "missing: {:?}; initech requests: {:?}\n{}",
        want.difference(&keys).take(5).collect::<Vec<_>>(),
        page_requests(&server.log(), "initech"),
        rerun.worker_log_tail
    );
    assert_eq!(rows, want.len());
    assert_eq!(
        page_requests(&server.log(), "acme").len(),
        3,
        "acme was done"
    );
}

#[test]
fn http_429_and_503_hold_the_whole_job_off_and_lose_nothing() {
    let redis = TestRedis::start();
    let tenants = ["acme", "globex"];
    let mut config = ApiConfig::new(&tenants, 1000);
    config.token_lifetime = None;
    let server = ApiServer::start(config);
    let source = api_source(
        &server,
        "users",
        r#"tenants = ["acme", "globex"]"#,
        CURSOR,
        20,
    )
    .replace(
        "[source.auth]\n        kind = \"oauth2_client_credentials\"",
        "[source.auth]\n        kind = \"none\"",
    );
    let source: String = source
        .lines()
        .filter(|line| {
            !["token_url", "client_id", "client_secret", "scope"]
                .iter()
                .any(|name| line.trim_start().starts_with(name))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let job = api_job(&redis, "apislow", 2, &source);
    server.fail_next(1, 429, Some(2));
    server.fail_next(2, 503, None);
    job.run().expect_code(0);
    let (keys, rows) = landed(&job);
    assert_eq!(keys, expected(&tenants, 1000));
    assert_eq!(rows, 2000);
    let log = server.log();
    let throttled = log.iter().position(|s| s.status == 429).unwrap();
    // After the 429's `Retry-After: 2`, neither producer sent anything for two seconds.
    // (`max_concurrency = 1`: the 429's permit is held until the hold-off is in Redis.)
    let gap = log[throttled + 1].at_ms - log[throttled].at_ms;
    assert!(gap >= 1900, "the next request came {gap} ms after the 429");
    assert_eq!(log.iter().filter(|s| s.status == 503).count(), 2);
    assert!(!server.banned());
}

#[test]
fn http_check_reads_the_first_page_of_the_first_tenant() {
    let redis = TestRedis::start();
    let server = ApiServer::start(ApiConfig::new(&["acme", "globex"], 250));
    let job = api_job(
        &redis,
        "apicheck",
        1,
        &api_source(
            &server,
            "users",
            r#"tenants = ["acme", "globex"]"#,
            CURSOR,
            10,
        ),
    );
    let output = job.command("check").output().unwrap();
    let result = RunResult::from_output(output);
    result.expect_code(0);
    assert!(
        result
            .stdout
            .contains("source users: the first page of tenant `acme` holds 100 record(s)"),
        "{}",
        result.stdout
    );
    let pages: Vec<Value> = page_requests(&server.log(), "acme")
        .iter()
        .map(|s| Value::from(s.target.clone()))
        .collect();
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert!(page_requests(&server.log(), "globex").is_empty());
}

#[test]
fn http_config_problems_stop_the_run_before_anything_starts() {
    let redis = TestRedis::start();
    let job = api_job(
        &redis,
        "apibad",
        1,
        r#"
        [[source]]
        name = "users"
        kind = "http"
        url = "ftp://api.example.com/v1/tenants/{tenant}/users"
        records = "data"
        [source.pagination]
        kind = "cursor"
        param = "cursor"
        next = "meta.next"
        [source.limits]
        requests_per_second = 0
        "#,
    );
    let result = job.run();
    result.expect_code(2);
    for expected in [
        "source[0] (users).url: has `{tenant}` but no `tenants`",
        "source[0] (users).url: scheme `ftp` is not http or https",
        "source[0] (users).records: `data` is not a JSON pointer",
        "source[0] (users).pagination.next: `meta.next` is not a JSON pointer",
        "source[0] (users).limits.requests_per_second: must be above 0",
    ] {
        assert!(
            result.stderr.contains(expected),
            "{expected}\n{}",
            result.stderr
        );
    }
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    assert!(keys.is_empty(), "{keys:?}");
}
