//! What a person or Prometheus sees: `stevedore run --metrics-addr` and a `supervise` daemon's
//! `[supervise] http` address (`/metrics` parsed as Prometheus would, `/status`, `/healthz`,
//! the control endpoints) and the status page, rendered by a real headless Chromium. Every
//! wait is for an event (a series reaching a value, a pass recorded), never a fixed sleep.

#[path = "support/group.rs"]
mod group;

use std::collections::BTreeSet;
use std::path::Path;

use group::Group;
use serde_json::Value;
use testkit::{Job, TestRedis, free_port, kill, wait_until, web, worker_pid};

/// One scrape, parsed by `prometheus-parse`: every sample by name, with its labels.
struct Scrape(Vec<prometheus_parse::Sample>, Vec<String>);

impl Scrape {
    fn of(url: &str) -> Scrape {
        let answer = web::get(url);
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        assert!(
            answer.content_type.contains("openmetrics-text"),
            "{}",
            answer.content_type
        );
        let lines = answer.body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{}", answer.body));
        assert!(
            !scrape.samples.is_empty(),
            "an empty scrape:\n{}",
            answer.body
        );
        Scrape(scrape.samples, scrape.docs.into_keys().collect())
    }

    /// The value of `name` whose labels include `labels`, if there is one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map(|b| b.count).unwrap_or(0.0)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    }

    fn names(&self) -> std::collections::BTreeSet<&str> {
        self.0.iter().map(|s| s.metric.as_str()).collect()
    }

    /// Every metric family served, samples or not, without `_total`/`_bucket`/... suffixes.
    fn families(&self) -> BTreeSet<String> {
        self.0
            .iter()
            .map(|s| s.metric.clone())
            .chain(self.1.iter().cloned())
            .map(|name| family(&name))
            .collect()
    }
}

fn family(name: &str) -> String {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .to_string()
}

/// Every `stevedore_*` metric the Grafana dashboard and the Prometheus rules under `deploy/`
/// use.
fn deploy_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "deploy/grafana/stevedore-dashboard.json",
        "deploy/prometheus/stevedore-rules.yml",
    ] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for (at, _) in text.match_indices("stevedore_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(family(&name));
        }
    }
    names.remove("stevedore_job"); // a label, not a metric
    names
}

#[test]
fn metrics_run_metrics_addr_serves_the_run_s_numbers_while_it_lasts() {
    let redis = TestRedis::start();
    let port = free_port();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "metered"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 1
        consumers = 1
        [queue]
        unit_records = 50
        [[source]]
        name = "synthetic"
        kind = "generator"
        count = 5000
        [[source]]
        name = "files"
        kind = "files"
        path = "{{dir}}/in.jsonl"
        format = "jsonl"
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        max_units_per_second = 10
        "#,
        url = redis.url()
    ));
    job.write("in.jsonl", "{\"id\": 900001}\nnot json\n{\"id\": 900002}\n");
    let mut command = job.command("run");
    command.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let child = command.spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    // Paced at 10 units a second, the run's 101 units take ten seconds whatever the machine.
    let written = [("stevedore_job", "metered"), ("sink", "local")];
    wait_until("the scrape shows records written", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && Scrape::of(&url)
                .value("stevedore_records_written_total", &written)
                .is_some_and(|n| n > 0.0)
    });
    // A consumer killed mid-run is restarted, and the restart is counted.
    let consumer = worker_pid(&redis, "metered", "consumer-1");
    kill(consumer, "KILL");
    let restarts = [("stevedore_job", "metered"), ("role", "consumer")];
    wait_until("the consumer's restart is counted", || {
        Scrape::of(&url).value("stevedore_worker_restarts_total", &restarts) == Some(1.0)
    });
    let scrape = Scrape::of(&url);
    assert_eq!(
        scrape.value("stevedore_run_active", &[("stevedore_job", "metered")]),
        Some(1.0)
    );
    let read = |source| {
        scrape
            .value(
                "stevedore_records_read_total",
                &[("stevedore_job", "metered"), ("source", source)],
            )
            .unwrap_or(0.0)
    };
    assert!(
        read("synthetic") > 0.0 || read("files") > 0.0,
        "{:?}",
        scrape.names()
    );
    // Consumers add their write latencies once a heartbeat.
    wait_until("the scrape shows write latencies", || {
        Scrape::of(&url)
            .value("stevedore_sink_write_seconds_count", &written)
            .is_some_and(|n| n > 0.0)
    });
    for name in [
        "stevedore_queue_depth",
        "stevedore_units_in_flight",
        "stevedore_dead_letters",
        "stevedore_sink_throttled_requests_total",
        "stevedore_fencing_rejections_total",
    ] {
        assert!(
            scrape.value(name, &written).is_some(),
            "{name} in {:?}",
            scrape.names()
        );
    }
    let healthz = web::get(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let result = job.finish(child);
    result.expect_code(3);
    // The run is over: its address is closed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn metrics_run_refuses_an_address_it_cannot_listen_on_before_anything_runs() {
    let redis = TestRedis::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "metered"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [[source]]
        name = "synthetic"
        kind = "generator"
        count = 10
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        "#,
        url = redis.url()
    ));
    let output = job
        .command("run")
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--metrics-addr") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    assert!(keys.is_empty(), "nothing ran: {keys:?}");
}

const EVERY_SECOND: &str = r#"
    [[schedule]]
    name = "orders"
    job = "{job}"
    every = "1s"
"#;

/// A group of one `orders` job every second, serving HTTP on a free port with `settings`.
fn served_group(redis: &TestRedis, settings: &str) -> (Group, String) {
    let port = free_port();
    let settings = format!("http = \"127.0.0.1:{port}\"\n{settings}");
    let group = Group::with_settings(redis, &settings, EVERY_SECOND);
    // Three units paced at two a second: a pass lasts at least a second whatever the machine,
    // so scrapes find a run going on (its own series are there only then).
    group.job(redis, "orders", 300, "max_units_per_second = 2");
    (group, format!("http://127.0.0.1:{port}"))
}

fn wait_for_passes(group: &Group, at_least: usize) {
    wait_until(&format!("{at_least} passes of orders are recorded"), || {
        group.history("orders").len() >= at_least
    });
}

#[test]
fn metrics_supervise_serves_metrics_status_and_healthz() {
    let redis = TestRedis::start();
    let (group, base) = served_group(&redis, "");
    let mut daemon = group.daemon("prod", 1);
    wait_for_passes(&group, 2);
    let scrape = Scrape::of(&format!("{base}/metrics"));
    let orders = [("schedule", "orders"), ("stevedore_job", "orders")];
    let ok = [("schedule", "orders"), ("outcome", "ok")];
    assert!(
        scrape
            .value("stevedore_passes_total", &ok)
            .is_some_and(|n| n >= 1.0)
    );
    assert!(
        scrape
            .value("stevedore_pass_duration_seconds_count", &orders)
            .is_some_and(|n| n >= 1.0)
    );
    let success = scrape
        .value("stevedore_schedule_last_success_timestamp_seconds", &orders)
        .expect("a last success");
    let history = group.history("orders");
    let last = history.last().unwrap()["finished_at"].as_str().unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(last).unwrap();
    assert!(success <= last.timestamp_millis() as f64 / 1000.0 + 0.001);
    assert!(
        scrape
            .value("stevedore_schedule_next_fire_timestamp_seconds", &orders)
            .is_some()
            || scrape.value("stevedore_schedule_running", &orders) == Some(1.0)
    );
    assert_eq!(
        scrape.value("stevedore_schedule_consecutive_failures", &orders),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("stevedore_daemons_alive", &[("group", "loads")]),
        Some(1.0)
    );
    let missed = [("schedule", "orders"), ("reason", "overlap")];
    assert!(
        scrape
            .value("stevedore_schedule_missed_slots_total", &missed)
            .is_some()
    );
    assert_eq!(
        scrape.value("stevedore_dead_letters", &[("sink", "local")]),
        Some(0.0)
    );

    // /status is what `stevedore status --json` prints.
    let served: Value = serde_json::from_str(&web::get(&format!("{base}/status")).body).unwrap();
    let printed = group.status();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&served), keys(&printed));
    assert_eq!(served["schedules"][0]["name"], "orders");
    assert_eq!(
        keys(&served["schedules"][0]),
        keys(&printed["schedules"][0])
    );
    assert_eq!(web::get(&format!("{base}/healthz")).body, "ok\n");
    // What the dashboard and the alert rules ask for is served (passes run back to back, so
    // some scrape comes while one runs and the run's own series are there).
    let wanted = deploy_metric_names();
    assert!(wanted.len() >= 15, "{wanted:?}");
    let mut served = BTreeSet::new();
    let deadline = std::time::Instant::now() + testkit::PATIENCE;
    while !wanted.is_subset(&served) {
        let missing: Vec<_> = wanted.difference(&served).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "never served: {missing:?}"
        );
        served.extend(Scrape::of(&format!("{base}/metrics")).families());
    }
    // Read-only by default: no control.
    let refused = web::post(&format!("{base}/control/pause/orders"), &[], "{}");
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(group.schedule("orders")["paused"].is_null());
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn metrics_supervise_refuses_control_without_a_token_at_start() {
    let redis = TestRedis::start();
    let (group, _) = served_group(&redis, "http_control = true");
    let (code, text) = group.run("supervise", &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("supervise.http_token"), "{text}");
    let (group, _) = served_group(&redis, "http_control = true\nhttp_token = \"short\"");
    let (code, text) = group.run("supervise", &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("at least 16 characters"), "{text}");
}

const TOKEN: &str = "s3cret-token-for-the-buttons";

/// Where the test keeps its screenshot of the page (a test artifact, under `target/`).
fn artifact(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("artifacts")
        .join(name)
}

#[test]
fn status_page_in_headless_chromium_shows_every_schedule_escaped_and_controls_need_the_token() {
    let redis = TestRedis::start();
    let control = format!("http_control = true\nhttp_token = \"{TOKEN}\"");
    let (group, base) = served_group(&redis, &control);
    let mut daemon = group.daemon("prod", 1);
    wait_for_passes(&group, 2);
    // A value that would be markup if the page did not escape it.
    let hostile = "<img src=x id=injected onerror=\"document.title='owned'\">";
    let (code, text) = group.run("pause", &["orders", "--reason", hostile]);
    assert_eq!(code, 0, "{text}");

    let page = web::get(&format!("{base}/"));
    assert_eq!(page.status, 200);
    let dom = web::rendered_dom(&format!("{base}/"));
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the script ran and read /status:\n{dom}"
    );
    assert!(dom.contains("data-schedule=\"orders\""), "{dom}");
    assert!(
        dom.contains("class=\"pass ok\""),
        "the strip of outcomes:\n{dom}"
    );
    assert!(dom.contains("class=\"badge paused\""), "{dom}");
    assert!(
        dom.contains("&lt;img src=x id=injected"),
        "the reason is shown as text:\n{dom}"
    );
    assert!(!dom.contains("<img"), "no value became markup:\n{dom}");
    assert!(dom.contains("<title>stevedore status</title>"), "{dom}");
    assert!(
        dom.contains("data-action=\"trigger\""),
        "control is on: buttons:\n{dom}"
    );
    assert!(dom.contains("dead letters"), "{dom}");
    assert!(!dom.contains(TOKEN), "the token is never on the page");
    web::screenshot(&format!("{base}/"), &artifact("status-page.png"));

    // Without the token nothing happens.
    let resume = format!("{base}/control/resume/orders");
    let wrong = web::post(&resume, &[("authorization", "Bearer nope")], "{}");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(!group.schedule("orders")["paused"].is_null());
    // A person types the token into the page and clicks `resume` (ChromeDriver).
    let browser = web::Browser::start();
    browser.open(&format!("{base}/"));
    browser.type_into("#token", TOKEN);
    browser.click("article[data-schedule='orders'] button[data-action='resume']");
    wait_until("the page says the schedule was resumed", || {
        browser.text("#control-result").contains("resumed orders")
    });
    assert!(group.schedule("orders")["paused"].is_null());
    drop(browser);
    let bearer = format!("Bearer {TOKEN}");
    let unknown = web::post(
        &format!("{base}/control/trigger/nope"),
        &[("authorization", &bearer)],
        "{}",
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn status_page_without_control_has_no_buttons() {
    let redis = TestRedis::start();
    let (group, base) = served_group(&redis, "");
    let mut daemon = group.daemon("prod", 1);
    wait_for_passes(&group, 1);
    let dom = web::rendered_dom(&format!("{base}/"));
    assert!(dom.contains("data-schedule=\"orders\""), "{dom}");
    assert!(!dom.contains("data-action="), "read-only page:\n{dom}");
    assert_eq!(daemon.stop(), 0);
}
