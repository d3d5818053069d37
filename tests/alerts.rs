//! Alerts of `stevedore supervise`: real daemons on one real Redis run real failing passes,
//! and the alerts are read back from a real SMTP server (maildev) and a webhook receiver.
//! Every wait is for an event (a mail, a request, a recorded pass); none depends on how fast
//! the machine is.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use testkit::smtp::{Mail, MailServer};
use testkit::webhook::WebhookReceiver;
use testkit::{Job, TestRedis, stevedore_bin, wait_until};

const SMTP_USER: &str = "alerts";
const SMTP_PASSWORD: &str = "smtp-pw-Zq81";
const WEBHOOK_SECRET: &str = "hook-key-Xr55";

/// A group of daemons in a temporary directory, with one job `orders` (generated records
/// into SQLite) run `every = "1s"`, and the `[alerts]` given.
struct Group {
    files: Job,
    file: PathBuf,
}

/// A `stevedore supervise` process, killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Group {
    fn new(redis: &TestRedis, alerts: &str) -> Group {
        let files = Job::new("");
        let dir = files.dir.path().display().to_string();
        files.write(
            "supervise.toml",
            &format!(
                r#"
                [supervise]
                name = "loads"
                environment = "prod"
                data_dir = "{dir}/supervise"
                [redis]
                url = "{url}"
                [[schedule]]
                name = "orders"
                job = "{dir}/orders.toml"
                every = "1s"
                {alerts}
                "#,
                url = redis.url()
            ),
        );
        let group = Group {
            file: files.path("supervise.toml"),
            files,
        };
        group.write_job(redis, "10");
        group
    }

    /// Writes the job with `count` as its generator's count (a bad value breaks the file).
    fn write_job(&self, redis: &TestRedis, count: &str) {
        let dir = self.files.dir.path().display().to_string();
        self.files.write(
            "orders.toml",
            &format!(
                r#"
                [job]
                name = "orders"
                data_dir = "{dir}/var"
                [redis]
                url = "{url}"
                [workers]
                producers = 1
                consumers = 1
                [[source]]
                name = "synthetic"
                kind = "generator"
                count = {count}
                [[sink]]
                name = "local"
                kind = "sqlite"
                path = "{dir}/out.db"
                table = "orders"
                "#,
                url = redis.url()
            ),
        );
    }

    /// Makes every pass fail (exit 1): a file where the run keeps its logs' directory.
    fn break_log_dir(&self) {
        std::fs::create_dir_all(self.files.path("var")).unwrap();
        std::fs::write(self.files.path("var/logs"), "in the way").unwrap();
    }

    fn fix_log_dir(&self) {
        std::fs::remove_file(self.files.path("var/logs")).unwrap();
    }

    fn daemon(&self, n: u32) -> Daemon {
        let log = self.files.path(&format!("daemon-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(stevedore_bin())
            .args(["supervise", "--config"])
            .arg(&self.file)
            .env("STEVEDORE_LOG", "info")
            .env("SMTP_PASSWORD", SMTP_PASSWORD)
            .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
            .current_dir(self.files.dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("stevedore supervise starts");
        Daemon { child, log }
    }

    /// The schedule's history from `status --json`, oldest first.
    fn history(&self) -> Vec<Value> {
        let output = Command::new(stevedore_bin())
            .args(["status", "--json", "--config"])
            .arg(&self.file)
            .env("SMTP_PASSWORD", SMTP_PASSWORD)
            .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
            .current_dir(self.files.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let status: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON ({e}): {text}"));
        let mut recent = status["schedules"][0]["recent"].as_array().unwrap().clone();
        recent.reverse();
        recent
    }

    fn passes_with(&self, outcome: &str) -> usize {
        self.history()
            .iter()
            .filter(|e| e["outcome"] == outcome)
            .count()
    }

    fn pass_dirs(&self) -> String {
        format!("{}/supervise/orders/", self.files.dir.path().display())
    }

    fn logs(&self, daemons: &[&Daemon]) -> String {
        daemons
            .iter()
            .map(|d| std::fs::read_to_string(&d.log).unwrap_or_default())
            .collect()
    }
}

fn email_alerts(mail: &MailServer, after_failures: u32, repeat_every: &str) -> String {
    format!(
        r#"
        [alerts]
        after_failures = {after_failures}
        repeat_every = "{repeat_every}"
        [alerts.email]
        smtp = "smtp://{SMTP_USER}:${{SMTP_PASSWORD}}@127.0.0.1:{port}?tls=none"
        from = "stevedore@example.com"
        to = ["oncall@example.com"]
        "#,
        port = mail.smtp_port
    )
}

fn with<'a>(mails: &'a [Mail], words: &str) -> Vec<&'a Mail> {
    mails.iter().filter(|m| m.subject.contains(words)).collect()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn alerts_two_daemons_send_one_mail_per_event_and_one_when_resolved() {
    let redis = TestRedis::start();
    let mail = MailServer::start(SMTP_USER, SMTP_PASSWORD);
    let group = Group::new(&redis, &email_alerts(&mail, 2, "1h"));
    group.break_log_dir();
    let (one, two) = (group.daemon(1), group.daemon(2));

    let mails = mail.wait_for("the alert", |mails| !with(mails, "is failing").is_empty());
    let alert = with(&mails, "is failing")[0].clone();
    assert_eq!(
        alert.subject,
        "[stevedore] loads/orders is failing: 2 passes in a row failed"
    );
    assert_eq!(
        (alert.from.as_str(), alert.to.as_slice()),
        (
            "stevedore@example.com",
            &["oncall@example.com".to_string()][..]
        )
    );
    for expected in [
        "Schedule:       orders (group loads)",
        "Failing since:  ",
        &format!("Sent by:        host {} (environment prod)", host()),
        &format!("failed (exit 1) on host {}", host()),
        "reason: cannot write",
        &format!("logs:   {}", group.pass_dirs()),
    ] {
        assert!(
            alert.text.contains(expected),
            "`{expected}` in:\n{}",
            alert.text
        );
    }
    // The streak goes on for two more passes: still one alert.
    let failed = group.passes_with("failed");
    wait_until("two more failed passes", || {
        group.passes_with("failed") >= failed + 2
    });
    group.fix_log_dir();
    mail.wait_for("the resolved mail", |mails| {
        !with(mails, "resolved").is_empty()
    });
    wait_until("three passes after the fix", || {
        group.passes_with("ok") >= 3
    });

    let mails = mail.mails();
    assert_eq!(with(&mails, "is failing").len(), 1, "{mails:#?}");
    assert_eq!(with(&mails, "resolved").len(), 1, "{mails:#?}");
    assert_eq!(mails.len(), 2, "no reminder within 1h: {mails:#?}");
    let resolved = with(&mails, "resolved")[0];
    assert!(
        resolved
            .subject
            .starts_with("[stevedore] loads/orders is resolved")
    );
    assert!(resolved.text.contains("ok (exit 0)"), "{}", resolved.text);
    for mail in &mails {
        assert!(
            !mail.text.contains(SMTP_PASSWORD) && !mail.subject.contains(SMTP_PASSWORD),
            "{mail:#?}"
        );
    }
    let logs = group.logs(&[&one, &two]);
    assert!(
        !logs.contains(SMTP_PASSWORD),
        "a daemon logged the password"
    );
    assert_eq!(logs.matches("alert sent").count(), 2, "{logs}");
}

#[test]
fn alerts_a_job_file_error_alerts_at_once_and_reminds_once_per_period() {
    let redis = TestRedis::start();
    let mail = MailServer::start(SMTP_USER, SMTP_PASSWORD);
    let group = Group::new(&redis, &email_alerts(&mail, 3, "2s"));
    let started = Instant::now();
    let (one, two) = (group.daemon(1), group.daemon(2));
    wait_until("both daemons checked the job", || {
        group.logs(&[&one, &two]).matches("supervising").count() == 2
    });
    // Now the job file breaks: every pass exits 2.
    group.write_job(&redis, "\"many\"");

    let mails = mail.wait_for("three reminders", |mails| {
        with(mails, "still failing (reminder ").len() >= 3
    });
    let seen_at = started.elapsed();
    let alerts = with(&mails, "is failing: its job file has an error (exit 2)");
    assert_eq!(alerts.len(), 1, "{mails:#?}");
    assert!(
        alerts[0].text.contains("Failures:       1 in a row"),
        "{}",
        alerts[0].text
    );
    assert!(
        alerts[0].text.contains("failed (exit 2)"),
        "{}",
        alerts[0].text
    );
    assert!(
        alerts[0].text.contains("reason: config"),
        "{}",
        alerts[0].text
    );
    let reminders: Vec<u32> = with(&mails, "still failing (reminder ")
        .iter()
        .map(|m| {
            let n = m.subject.split("(reminder ").nth(1).unwrap();
            n.split(')').next().unwrap().parse().unwrap()
        })
        .collect();
    // Each reminder once, not once per daemon. A reminder is numbered by the periods since the
    // alert when a daemon looks (every 2 s, like the period), so on a busy machine a number
    // may be skipped: never sent twice.
    let mut unique = reminders.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        reminders.len(),
        "each reminder once: {mails:#?}"
    );
    // Reminder n comes `repeat_every` n after the alert, which came after the test started.
    let most = seen_at.as_secs() / 2 + 1;
    assert!(
        reminders.len() as u64 <= most,
        "{} reminders within {seen_at:?}",
        reminders.len()
    );
}

#[test]
fn alerts_webhook_is_signed_and_retried_while_the_schedule_runs_on() {
    let redis = TestRedis::start();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET, 2);
    let group = Group::new(
        &redis,
        &format!(
            r#"
            [alerts]
            after_failures = 1
            [alerts.webhook]
            url = "{url}"
            secret = "${{WEBHOOK_SECRET}}"
            "#,
            url = receiver.url()
        ),
    );
    group.break_log_dir();
    let daemon = group.daemon(1);

    let first = receiver.wait_for("the first attempt", |d| !d.is_empty());
    let failed = group.passes_with("failed");
    let deliveries = receiver.wait_for("the alert taken", |d| d.iter().any(|d| d.status == 200));
    // Passes went on while the alert was retried.
    wait_until("two more passes", || {
        group.passes_with("failed") >= failed + 2
    });
    let statuses: Vec<u16> = deliveries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [500, 500, 200], "retried after each 500");
    let event = &first[0].headers["x-stevedore-event"];
    for delivery in &deliveries {
        assert!(delivery.signed, "a bad signature: {delivery:#?}");
        assert_eq!(
            &delivery.headers["x-stevedore-event"], event,
            "the same event"
        );
        let body = delivery.json();
        assert_eq!(
            delivery.headers["x-stevedore-timestamp"],
            body["sent_at"].to_string(),
            "the timestamp is in the signed body too"
        );
        assert_eq!(body["event"], "firing");
        assert_eq!(body["schedule"], "orders");
        assert_eq!(body["group"], "loads");
        assert_eq!(body["failures_in_a_row"], 1);
        assert_eq!(body["passes"][0]["outcome"], "failed");
        assert!(
            body["passes"][0]["dir"]
                .as_str()
                .unwrap()
                .starts_with(&group.pass_dirs()),
            "{body}"
        );
        assert!(!String::from_utf8_lossy(&delivery.body).contains(WEBHOOK_SECRET));
    }
    let logs = group.logs(&[&daemon]);
    assert_eq!(
        logs.matches("alert not sent yet; retrying").count(),
        2,
        "{logs}"
    );
    assert!(!logs.contains(WEBHOOK_SECRET));
}

/// The SMTP server only takes mail after a login: a wrong password is refused, logged without
/// the password, and not retried (the relay's 535 is permanent).
#[test]
fn alerts_a_refused_login_is_logged_without_the_password() {
    let redis = TestRedis::start();
    let mail = MailServer::start(SMTP_USER, "another-password");
    let group = Group::new(&redis, &email_alerts(&mail, 1, "1h"));
    group.break_log_dir();
    let daemon = group.daemon(1);
    wait_until("the refusal is logged", || {
        group.logs(&[&daemon]).contains("alert not sent; giving up")
    });
    let logs = group.logs(&[&daemon]);
    assert!(!logs.contains(SMTP_PASSWORD), "{logs}");
    assert!(logs.contains("smtp://alerts:***@127.0.0.1"), "{logs}");
    assert!(mail.mails().is_empty());
}
