//! `stevedore dlq list | show | export | replay | purge`: look at a job's dead letters, send
//! them through their sink again once the cause is fixed, delete them. Every command reads the
//! queues page by page and counts a letter stored twice once.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use serde_json::{Value, json};

use super::{EXIT_CONFIG, EXIT_FAILED, load_config};
use crate::config::{JobConfig, RedisConfig, SinkConfig};
use crate::dlq::purge::purge;
use crate::dlq::read::{DEFAULT_PAGE, Scan, Tally};
use crate::dlq::replay::{Replay, ReplayReport, replay};
use crate::dlq::{DlqError, Letter};
use crate::queue::{LinkError, Patience, RedisLink, SinkQueues};
use crate::supervisor::ManagedRedis;

/// Exit code: some letters did not land (dead-lettered again, or cannot be replayed).
const EXIT_DEAD_LETTERS: i32 = 3;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts by sink and reason, then the letters, each once.
    List {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this sink's letters (default: every sink's).
        #[arg(long)]
        sink: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Letters read per page.
        #[arg(long, default_value_t = DEFAULT_PAGE, hide = true)]
        page_size: usize,
    },
    /// One letter in full (pretty JSON).
    Show {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only in this sink's queue (default: every sink's).
        #[arg(long)]
        sink: Option<String>,
        /// The letter's `dead_letter.id`.
        id: String,
        /// Letters read per page.
        #[arg(long, default_value_t = DEFAULT_PAGE, hide = true)]
        page_size: usize,
    },
    /// A sink's dead-lettered input as read, one record (or raw line) per line on stdout.
    Export {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The sink.
        #[arg(long)]
        sink: String,
        /// Letters read per page.
        #[arg(long, default_value_t = DEFAULT_PAGE, hide = true)]
        page_size: usize,
    },
    /// Send a sink's letters through it again (after fixing the cause); each lands once.
    Replay {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The sink.
        #[arg(long)]
        sink: String,
        /// Only these letters (repeat the flag); default: all.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Letters read per page.
        #[arg(long, default_value_t = DEFAULT_PAGE, hide = true)]
        page_size: usize,
    },
    /// Delete a sink's letters: all, or those dead-lettered before a time.
    Purge {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The sink.
        #[arg(long)]
        sink: String,
        /// Only letters older than this: RFC 3339 (`2026-11-22T15:30:00Z`) or a duration ago
        /// (`7d`, `12h`).
        #[arg(long, value_parser = parse_before)]
        before: Option<u64>,
        /// Letters read per page.
        #[arg(long, default_value_t = DEFAULT_PAGE, hide = true)]
        page_size: usize,
    },
}

/// Runs a `dlq` subcommand; returns the exit code.
pub async fn dlq(command: &DlqCommand) -> i32 {
    let (config_path, sink) = match command {
        DlqCommand::List { config, sink, .. } | DlqCommand::Show { config, sink, .. } => {
            (config, sink.as_deref())
        }
        DlqCommand::Export { config, sink, .. }
        | DlqCommand::Replay { config, sink, .. }
        | DlqCommand::Purge { config, sink, .. } => (config, Some(sink.as_str())),
    };
    let opened = match Opened::open(config_path, sink).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let code = match command {
        DlqCommand::List {
            json, page_size, ..
        } => list(&opened, *json, *page_size).await,
        DlqCommand::Show { id, page_size, .. } => show(&opened, id, *page_size).await,
        DlqCommand::Export { page_size, .. } => export(&opened, *page_size).await,
        DlqCommand::Replay { ids, page_size, .. } => replay_sink(&opened, ids, *page_size).await,
        DlqCommand::Purge {
            before, page_size, ..
        } => purge_sink(&opened, *before, *page_size).await,
    };
    opened.close().await;
    code
}

/// The job, the sinks a command works on, and a link to the job's Redis (started, if it is a
/// managed one, for as long as the command runs).
struct Opened {
    config: JobConfig,
    sinks: Vec<SinkConfig>,
    link: Arc<RedisLink>,
    managed: Option<ManagedRedis>,
}

impl Opened {
    async fn open(config_path: &Path, sink: Option<&str>) -> Result<Opened, i32> {
        let config = load_config(config_path).ok_or(EXIT_CONFIG)?;
        let sinks: Vec<SinkConfig> = config
            .sinks
            .iter()
            .filter(|s| sink.is_none_or(|name| s.name == name))
            .cloned()
            .collect();
        if sinks.is_empty() {
            let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
            eprintln!(
                "stevedore: job {} has no sink `{}` (there are: {})",
                config.job.name,
                sink.unwrap_or_default(),
                names.join(", ")
            );
            return Err(EXIT_CONFIG);
        }
        let (url, managed) = match &config.redis {
            RedisConfig::External { url } => (url.clone(), None),
            RedisConfig::Managed {
                server_bin,
                data_dir,
            } => match ManagedRedis::start(server_bin, data_dir).await {
                Ok(managed) => (managed.url(), Some(managed)),
                Err(error) => {
                    eprintln!("stevedore: managed redis: {error}");
                    return Err(EXIT_FAILED);
                }
            },
        };
        let opened = RedisLink::new(&url).map(|link| Opened {
            config,
            sinks,
            link: Arc::new(link),
            managed,
        });
        let reached = match &opened {
            Ok(opened) => reach(&opened.link).await,
            Err(error) => Err(error.to_string()),
        };
        match (opened, reached) {
            (Ok(opened), Ok(())) => Ok(opened),
            (opened, Err(why)) => {
                eprintln!("stevedore: cannot reach {why}");
                if let Ok(opened) = opened {
                    opened.close().await;
                }
                Err(EXIT_FAILED)
            }
            (Err(_), Ok(())) => unreachable!("no link was reached"),
        }
    }

    async fn close(self) {
        if let Some(managed) = self.managed {
            managed.stop().await;
        }
    }

    /// The one sink of a command that names one.
    fn sink(&self) -> &SinkConfig {
        &self.sinks[0]
    }

    fn queue(&self, sink: &SinkConfig) -> String {
        SinkQueues::new(&self.config.job.name, &sink.name).dead
    }
}

/// One quick probe: an unreachable Redis is reported at once, not after a minute of retries.
async fn reach(link: &RedisLink) -> Result<(), String> {
    link.with_patience(Patience::Impatient)
        .query::<String>("reaching redis", &redis::cmd("PING"))
        .await
        .map(drop)
        .map_err(|error| error.to_string())
}

fn failed(error: impl std::fmt::Display) -> i32 {
    eprintln!("stevedore: {error}");
    EXIT_FAILED
}

/// `dlq list`: a first pass counts, a second prints the letters; both page through the queues.
async fn list(opened: &Opened, json: bool, page: usize) -> i32 {
    let mut tally = Tally::default();
    for sink in &opened.sinks {
        let mut seen = HashSet::new();
        let counted = each_letter(opened, sink, page, |letter| {
            tally.add(&mut seen, &sink.name, letter);
        })
        .await;
        if let Err(error) = counted {
            return failed(error);
        }
    }
    let mut out = std::io::stdout().lock();
    let head = if json {
        list_json_head(opened, &tally)
    } else {
        list_text_head(opened, &tally)
    };
    let _ = out.write_all(head.as_bytes());
    let mut first = true;
    for sink in &opened.sinks {
        let mut seen = HashSet::new();
        let printed = each_letter(opened, sink, page, |letter| {
            if !seen.insert(letter.id.clone()) {
                return;
            }
            let line = if json {
                let comma = if first { "" } else { "," };
                format!("{comma}\n{}", letter.summary())
            } else {
                letter_line(&sink.name, letter)
            };
            first = false;
            let _ = out.write_all(line.as_bytes());
        })
        .await;
        if let Err(error) = printed {
            return failed(error);
        }
    }
    if json {
        let _ = out.write_all(b"\n]}\n");
    }
    let _ = out.flush();
    0
}

/// Calls `each` with every letter of `sink`'s queue, a page at a time.
async fn each_letter(
    opened: &Opened,
    sink: &SinkConfig,
    page: usize,
    mut each: impl FnMut(&Letter),
) -> Result<(), LinkError> {
    let mut scan = Scan::start(&opened.link, &opened.queue(sink), page).await?;
    while let Some(letters) = scan.next_page().await? {
        letters.iter().for_each(&mut each);
    }
    Ok(())
}

/// The JSON object up to its `letters` array, which the letters then fill one by one.
fn list_json_head(opened: &Opened, tally: &Tally) -> String {
    let by_reason: Vec<Value> = tally
        .reasons()
        .into_iter()
        .map(|(sink, reason, letters)| json!({"sink": sink, "reason": reason, "letters": letters}))
        .collect();
    let queues: serde_json::Map<String, Value> = opened
        .sinks
        .iter()
        .map(|sink| (sink.name.clone(), Value::from(opened.queue(sink))))
        .collect();
    let head = json!({
        "job": opened.config.job.name,
        "letters_total": tally.letters,
        "duplicates": tally.duplicates,
        "queues": queues,
        "by_sink": tally.by_sink,
        "by_reason": by_reason,
    });
    let text = head.to_string();
    format!("{},\"letters\":[", &text[..text.len() - 1])
}

fn list_text_head(opened: &Opened, tally: &Tally) -> String {
    let mut text = format!(
        "job {}: {} dead letter(s)",
        opened.config.job.name, tally.letters
    );
    if tally.duplicates > 0 {
        text.push_str(&format!(
            " ({} duplicate cop(ies) counted once)",
            tally.duplicates
        ));
    }
    text.push_str("\nby sink:\n");
    for sink in &opened.sinks {
        let count = tally.by_sink.get(&sink.name).copied().unwrap_or(0);
        text.push_str(&format!(
            "  {:>8}  {}  ({})\n",
            count,
            sink.name,
            opened.queue(sink)
        ));
    }
    if !tally.by_reason.is_empty() {
        text.push_str("by reason:\n");
        for (sink, reason, count) in tally.reasons() {
            text.push_str(&format!("  {count:>8}  {sink}  {reason}\n"));
        }
        text.push_str("letters:\n");
    }
    text
}

/// One letter of `dlq list` as text: id, sink, kind, where from, when, why.
fn letter_line(sink: &str, letter: &Letter) -> String {
    let context = &letter.context;
    let from = match (context.get("origin"), context.get("line")) {
        (Some(Value::String(origin)), Some(line)) => format!("{origin}:{line}"),
        _ => "-".to_string(),
    };
    let at = chrono::DateTime::from_timestamp_millis(letter.at_ms() as i64)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    format!(
        "  {}  {sink}  {}  {from}  {at}  {}\n",
        letter.id,
        letter.kind.as_str(),
        letter.reason()
    )
}

/// `dlq show ID`: the letter in full, from every queue that holds it.
async fn show(opened: &Opened, id: &str, page: usize) -> i32 {
    let mut found = Vec::new();
    for sink in &opened.sinks {
        let mut letter = None;
        let searched = each_letter(opened, sink, page, |candidate| {
            if letter.is_none() && candidate.id == id {
                letter = Some(candidate.full());
            }
        })
        .await;
        if let Err(error) = searched {
            return failed(error);
        }
        found.extend(letter.map(|letter| (sink.name.clone(), letter)));
    }
    if found.is_empty() {
        eprintln!(
            "stevedore: no letter `{id}` in the dead-letter queue(s) of job {}",
            opened.config.job.name
        );
        return EXIT_CONFIG;
    }
    if found.len() > 1 {
        let sinks: Vec<&str> = found.iter().map(|(sink, _)| sink.as_str()).collect();
        eprintln!(
            "stevedore: letter `{id}` is in the queues of sinks {}; showing each (pick one with --sink)",
            sinks.join(", ")
        );
    }
    for (_, letter) in found {
        println!(
            "{}",
            serde_json::to_string_pretty(&letter).expect("JSON values serialize")
        );
    }
    0
}

/// `dlq export`: the input as read, one entry per line, each letter once.
async fn export(opened: &Opened, page: usize) -> i32 {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seen = HashSet::new();
    let mut written: std::io::Result<()> = Ok(());
    let exported = each_letter(opened, opened.sink(), page, |letter| {
        if written.is_err() || !seen.insert(letter.id.clone()) {
            return;
        }
        for line in letter.input_lines() {
            if let Err(error) = writeln!(out, "{line}") {
                written = Err(error);
                return;
            }
        }
    })
    .await;
    let written = written.and_then(|()| out.flush());
    match (exported, written) {
        (Err(error), _) => failed(error),
        (_, Err(error)) => failed(format!("cannot write the letters: {error}")),
        (Ok(()), Ok(())) => 0,
    }
}

/// `dlq replay`: prints what it did (also when it stopped half way), exits like `run`.
async fn replay_sink(opened: &Opened, ids: &[String], page: usize) -> i32 {
    let request = Replay {
        config: &opened.config,
        sink: opened.sink(),
        link: opened.link.clone(),
        ids,
        page,
    };
    let mut report = ReplayReport::default();
    let result = replay(&request, &mut report).await;
    if let Err(DlqError::Lock(_)) = &result {
        return failed(result.expect_err("a lock error"));
    }
    println!(
        "{}",
        render_replay(&opened.queue(opened.sink()), &opened.sink().name, &report)
    );
    for id in &report.missing {
        eprintln!(
            "stevedore: no letter `{id}` in {} (replayed or purged already?)",
            opened.queue(opened.sink())
        );
    }
    match result {
        Err(error) if error.is_config_error() => {
            eprintln!("stevedore: {error}");
            EXIT_CONFIG
        }
        Err(error) => failed(error),
        Ok(()) if report.dead_again > 0 || !report.skipped.is_empty() => EXIT_DEAD_LETTERS,
        Ok(()) => 0,
    }
}

fn render_replay(queue: &str, sink: &str, report: &ReplayReport) -> String {
    let mut text = format!(
        "replayed {} letter(s) of {queue} ({} record(s)) into {sink}: {} landed, {} dead-lettered again",
        report.letters, report.records, report.landed, report.dead_again
    );
    if report.landed_before > 0 {
        text.push_str(&format!(
            " ({} of the landed had landed in an earlier, interrupted replay and were not written again)",
            report.landed_before
        ));
    }
    if !report.skipped.is_empty() {
        text.push_str(&format!(
            "\n{} letter(s) cannot be replayed and stay in the queue:",
            report.skipped.len()
        ));
        for (id, why) in &report.skipped {
            text.push_str(&format!("\n  {id}: {why}"));
        }
    }
    text
}

/// `dlq purge`: prints how many letters it deleted.
async fn purge_sink(opened: &Opened, before: Option<u64>, page: usize) -> i32 {
    let queue = opened.queue(opened.sink());
    match purge(&opened.link, &queue, before, page).await {
        Ok(purged) => {
            println!(
                "purged {} letter(s) ({} message(s)) from {queue}",
                purged.letters, purged.messages
            );
            0
        }
        Err(error) => failed(error),
    }
}

/// `--before`: an RFC 3339 time, or a duration ago (`7d`); in ms since the epoch.
fn parse_before(text: &str) -> Result<u64, String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return u64::try_from(time.timestamp_millis())
            .map_err(|_| format!("`{text}` is before 1970"));
    }
    let ago = humantime::parse_duration(text).map_err(|error| {
        format!("`{text}` is neither an RFC 3339 time (2026-11-22T15:30:00Z) nor a duration ago (7d, 12h): {error}")
    })?;
    Ok(crate::clock::now_ms().saturating_sub(ago.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_before_takes_rfc3339_or_a_duration_ago() {
        assert_eq!(parse_before("2026-11-22T15:30:00Z"), Ok(1_795_361_400_000));
        assert_eq!(
            parse_before("2026-11-22T16:30:00+01:00"),
            Ok(1_795_361_400_000)
        );
        // "7d" is a week before the moment it is read: between these two clock readings.
        let before = crate::clock::now_ms();
        let week_ago = parse_before("7d").unwrap();
        let after = crate::clock::now_ms();
        let week = 7 * 86_400_000;
        assert!((before - week..=after - week).contains(&week_ago));
        assert!(parse_before("last tuesday").is_err());
    }
}
