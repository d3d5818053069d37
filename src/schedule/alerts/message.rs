//! What an alert says, the same on every channel: which schedule, since when, the last passes
//! with their outcomes and reasons, their hosts and log directories, and who sent it. Free
//! text from passes (reasons) is scrubbed of the group's secrets and of passwords in URLs.

use serde_json::{Value, json};

use super::claim::{Event, EventKind};
use crate::schedule::state::RecentEntry;
use crate::settings::Secret;

/// Who sends, and what must never appear.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The group (`[supervise] name`).
    pub group: String,
    /// This daemon's host.
    pub host: String,
    /// This daemon's environment.
    pub environment: String,
    /// Secrets of the supervise file (SMTP password, webhook secret, Redis password).
    pub secrets: Vec<Secret>,
}

/// One event, written out.
#[derive(Debug, Clone)]
pub struct Message {
    /// The mail's subject; the first line of the text.
    pub subject: String,
    /// The whole text.
    pub text: String,
    /// The webhook's payload.
    pub payload: Value,
}

/// Writes `event` as sent by `sender`.
pub fn compose(event: &Event, sender: &Sender) -> Message {
    let scrub = |text: &str| scrub(text, &sender.secrets);
    let name = format!("{}/{}", sender.group, event.schedule);
    let since = time(event.since);
    let subject = match event.kind {
        EventKind::Firing if event.urgent => {
            format!("[stevedore] {name} is failing: its job file has an error (exit 2)")
        }
        EventKind::Firing => format!(
            "[stevedore] {name} is failing: {} passes in a row failed",
            event.streak
        ),
        EventKind::Reminder => format!(
            "[stevedore] {name} is still failing (reminder {}): {} passes in a row",
            event.reminder, event.streak
        ),
        EventKind::Resolved => format!(
            "[stevedore] {name} is resolved: a pass succeeded after {} failed",
            event.streak
        ),
    };
    let mut text = format!("{subject}\n\n");
    text += &format!(
        "Schedule:       {} (group {})\n",
        event.schedule, sender.group
    );
    text += &format!("Failing since:  {since} (the end of its first failed pass)\n");
    text += &format!("Failures:       {} in a row\n", event.streak);
    if event.urgent && event.kind != EventKind::Resolved {
        text += "Why at once:    a pass exited 2 (an error in the job file), which does not heal by itself\n";
    }
    text += &format!(
        "Sent by:        host {} (environment {}) at {}\n",
        sender.host,
        sender.environment,
        time(event.at)
    );
    text += &format!("Event:          {}\n\n", public_id(&sender.group, event));
    text +=
        "Last passes, newest first (each pass's log is pass.log in its directory, on its host):\n";
    for pass in &event.passes {
        text += &format!(
            "- {} {}{} on host {}, pass {}, attempt {}, slot {}\n",
            pass.finished_at.map(time).unwrap_or_else(|| "?".into()),
            pass.outcome,
            pass.exit_code
                .map(|code| format!(" (exit {code})"))
                .unwrap_or_default(),
            pass.host.as_deref().unwrap_or("?"),
            pass.pass
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            pass.attempt,
            time(pass.slot),
        );
        if let Some(reason) = &pass.reason {
            text += &format!("    reason: {}\n", scrub(reason));
        }
        if let Some(dir) = &pass.dir {
            text += &format!("    logs:   {}/\n", dir.trim_end_matches('/'));
        }
    }
    text += "\n`stevedore status --config <supervise file>` shows the schedule.\n";
    let payload = json!({
        "id": public_id(&sender.group, event),
        "event": event.kind.name(),
        "group": sender.group,
        "schedule": event.schedule,
        "since": since,
        "failures_in_a_row": event.streak,
        "reminder": (event.kind == EventKind::Reminder).then_some(event.reminder),
        "urgent": event.urgent,
        "decided_at": time(event.at),
        "sent_by": {"host": sender.host, "environment": sender.environment},
        "passes": event.passes.iter().map(|pass| pass_json(pass, &scrub)).collect::<Vec<_>>(),
        "subject": subject,
        "text": text,
    });
    Message {
        subject,
        text,
        payload,
    }
}

fn pass_json(pass: &RecentEntry, scrub: &dyn Fn(&str) -> String) -> Value {
    json!({
        "pass": pass.pass,
        "slot": time(pass.slot),
        "attempt": pass.attempt,
        "host": pass.host,
        "started_at": pass.started_at.map(time),
        "finished_at": pass.finished_at.map(time),
        "outcome": pass.outcome,
        "exit_code": pass.exit_code,
        "reason": pass.reason.as_deref().map(scrub),
        "dir": pass.dir,
        "run": pass.run,
    })
}

/// Milliseconds as an RFC 3339 UTC time.
fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// `text` without `secrets` and without the password of any `scheme://user:password@` in it.
pub fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut text = secrets
        .iter()
        .fold(text.to_string(), |text, secret| secret.hide_in(&text));
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .map_or(text.len(), |end| start + end);
        if let Some(at) = text[start..end].rfind('@')
            && let Some(colon) = text[start..start + at].find(':')
        {
            text.replace_range(start + colon + 1..start + at, "***");
        }
        from = start.min(text.len());
    }
    text
}

/// The event's id as receivers see it, `<group>/<schedule>/<event id>`: unique across
/// schedules and groups (two schedules can start failing in the same millisecond), so a
/// receiver may drop an id it has seen.
pub(super) fn public_id(group: &str, event: &super::claim::Event) -> String {
    format!("{group}/{}/{}", event.schedule, event.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(n: u64, outcome: &str, exit: Option<i32>, reason: &str) -> RecentEntry {
        RecentEntry {
            run: None,
            host: Some("db-host-1".into()),
            pid: Some(7),
            started_at: Some(1_764_000_000_000),
            finished_at: Some(1_764_000_001_000),
            exit_code: exit,
            attempt: 1,
            pass: Some(n),
            dir: Some(format!(
                "/var/supervise/loads/orders/20251124T160000.000Z-pass{n}"
            )),
            reason: Some(reason.into()),
            ..RecentEntry::not_run(1_764_000_000_000, outcome)
        }
    }

    fn sender() -> Sender {
        Sender {
            group: "loads".into(),
            host: "daemon-host".into(),
            environment: "prod".into(),
            secrets: vec![Secret::new("hunter2"), Secret::new("hook-key")],
        }
    }

    #[test]
    fn alerts_message_names_schedule_since_hosts_reasons_and_logs() {
        let event = Event {
            id: "firing:1764000001000".into(),
            kind: EventKind::Firing,
            schedule: "orders".into(),
            since: 1_764_000_001_000,
            streak: 3,
            reminder: 0,
            at: 1_764_000_002_000,
            urgent: false,
            passes: vec![
                pass(
                    9,
                    "failed",
                    Some(1),
                    "sink local: unable to open database file",
                ),
                pass(8, "timed_out", None, "stopped"),
            ],
        };
        let message = compose(&event, &sender());
        assert_eq!(
            message.subject,
            "[stevedore] loads/orders is failing: 3 passes in a row failed"
        );
        for expected in [
            "Failing since:  2025-11-24T16:00:01Z",
            "host daemon-host (environment prod)",
            "failed (exit 1) on host db-host-1, pass 9",
            "reason: sink local: unable to open database file",
            "logs:   /var/supervise/loads/orders/20251124T160000.000Z-pass9/",
            "timed_out on host db-host-1, pass 8",
        ] {
            assert!(
                message.text.contains(expected),
                "`{expected}` in:\n{}",
                message.text
            );
        }
        assert_eq!(message.payload["event"], "firing");
        assert_eq!(message.payload["passes"][0]["pass"], 9);
    }

    #[test]
    fn alerts_message_never_carries_a_secret() {
        let event = Event {
            id: "firing:1".into(),
            kind: EventKind::Firing,
            schedule: "orders".into(),
            since: 1,
            streak: 1,
            reminder: 0,
            at: 2,
            urgent: true,
            passes: vec![pass(
                1,
                "failed",
                Some(2),
                "cannot reach redis://:r3dis-pw@cache:6379/0 nor smtp://u:hunter2@mail with hook-key",
            )],
        };
        let message = compose(&event, &sender());
        let everything = format!("{}{}", message.text, message.payload);
        for secret in ["r3dis-pw", "hunter2", "hook-key"] {
            assert!(!everything.contains(secret), "{secret} in {everything}");
        }
        assert!(message.text.contains("redis://:***@cache:6379/0"));
        assert!(message.subject.contains("exit 2"));
    }
}
