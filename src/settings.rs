//! What every part of a job file is read with: problems at field paths, the reader that turns
//! one table into a typed struct, the shared checks, and secrets.
//!
//! This module sits below `config`, `mapping` and every source and sink kind, and imports none
//! of them: `config` reads the job's own sections and hands each `[[source]]` and `[[sink]]`
//! table to its kind as a [`Section`]; the kind reads and checks its own settings and returns
//! them as [`KindSettings`]. So `config` never names a kind, and a kind never names `config`.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// One second, for bounds of durations.
pub const SECOND: Duration = Duration::from_secs(1);
/// One hour: the longest a sink waits for anything its settings name.
pub const HOUR: Duration = Duration::from_secs(3600);

/// One problem found in a config, at a field path like `sink[1].map.amount.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: the field path inside the config.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// Every problem found so far; loading continues past each one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            if problem.path.is_empty() {
                write!(f, "  - {}", problem.message)?;
            } else {
                write!(f, "  - {}: {}", problem.path, problem.message)?;
            }
        }
        Ok(())
    }
}

/// One table of settings with its place in the file: `[[sink]]` number 1 named `orders` is
/// `sink[1] (orders)`. A kind reads its own fields from it and reports problems under it.
pub struct Section<'a> {
    table: toml::Table,
    path: &'a str,
    problems: &'a mut Problems,
}

impl<'a> Section<'a> {
    /// The table at `path`, reporting into `problems`.
    pub fn new(table: toml::Table, path: &'a str, problems: &'a mut Problems) -> Section<'a> {
        Section {
            table,
            path,
            problems,
        }
    }

    /// The path of one of the section's fields, e.g. `sink[0] (orders).table`.
    pub fn field(&self, name: &str) -> String {
        join(self.path, name)
    }

    /// Records a problem with field `name` (the section itself when empty).
    pub fn problem(&mut self, name: &str, message: impl Into<String>) {
        let path = if name.is_empty() {
            self.path.to_string()
        } else {
            self.field(name)
        };
        self.problems.push(path, message);
    }

    /// Checks that `value`, written in field `name`, is a plain identifier (it is spliced into
    /// SQL); see [`check_identifier`].
    pub fn check_identifier(&mut self, name: &str, value: &str) {
        let path = self.field(name);
        check_identifier(value, &path, self.problems);
    }

    /// Reads the remaining fields into `T`: every unknown key and the first type error are
    /// recorded with their full paths; `None` when the fields do not make a `T`.
    pub fn read<T: DeserializeOwned>(&mut self) -> Option<T> {
        let table = std::mem::take(&mut self.table);
        read_value(toml::Value::Table(table), self.path, self.problems)
    }

    /// A duration written as `"30s"`, `"5m"`, `"1h 30m"`; `default` when absent. One outside
    /// `within` is a problem: every wait must be one the system can honour.
    pub fn duration(
        &mut self,
        value: Option<&str>,
        default: &str,
        name: &str,
        within: std::ops::RangeInclusive<Duration>,
    ) -> Duration {
        let path = self.field(name);
        let known = self.problems.len();
        let duration = parse_duration(value, default, &path, self.problems);
        if self.problems.len() == known && !within.contains(&duration) {
            self.problems.push(
                path,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(*within.start()),
                    humantime::format_duration(*within.end())
                ),
            );
        }
        duration
    }
}

/// Deserializes `value` (at `path`) into `T`, recording unknown keys and every type error,
/// each at its full field path and in plain words (no parser internals).
///
/// serde stops at the first type error, so a field that has one is taken out and the rest is
/// read again, until the rest reads or an error has no field to take out. A required field
/// taken out that way is then reported missing; that echo is not reported again.
pub fn read_value<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut value = value;
    let mut taken_out: Vec<String> = Vec::new();
    let mut unknown_keys: Vec<String> = Vec::new();
    loop {
        let mut unknown = Vec::new();
        let result = {
            let mut record_unknown = |field: serde_ignored::Path| unknown.push(field.to_string());
            let ignored = serde_ignored::Deserializer::new(value.clone(), &mut record_unknown);
            serde_path_to_error::deserialize::<_, T>(ignored)
        };
        // serde stops at a type error, so later attempts find unknown keys further on.
        for field in unknown {
            if !unknown_keys.contains(&field) {
                problems.push(join(path, &field), "unknown key");
                unknown_keys.push(field);
            }
        }
        let error = match result {
            Ok(read) => return (taken_out.is_empty()).then_some(read),
            Err(error) => error,
        };
        let inner = error.path().to_string();
        // A required field taken out above is now reported missing: that echo is not a
        // problem of its own, but the table holding the field cannot be read; take it out too.
        if let Some(field) = missing_field(error.inner().message()) {
            let full = if inner == "." {
                field.to_string()
            } else {
                format!("{inner}.{field}")
            };
            if taken_out.contains(&full) {
                let holder = removal_target(inner);
                if holder == "." || !take_out(&mut value, &holder) {
                    return None;
                }
                taken_out.push(holder);
                continue;
            }
        }
        let message = plain_error(error.inner().message());
        let at = if inner == "." {
            path.to_string()
        } else {
            join(path, &inner)
        };
        problems.push(at, message);
        let field = removal_target(inner);
        if field.is_empty() || taken_out.len() >= 32 || !take_out(&mut value, &field) {
            return None;
        }
        taken_out.push(field);
    }
}

/// What to take out for a problem at `path`: the field, or for an element of an array the
/// whole array (removing the element alone would shift the ones after it, and their problems
/// would be reported at the wrong index).
fn removal_target(path: String) -> String {
    match path.rfind('[') {
        Some(open) if path.ends_with(']') => path[..open].to_string(),
        _ => path,
    }
}

/// The field a "missing field `x`" message names.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// Removes the field at `path` (as serde_path_to_error writes it: `a.b[2].c`); false if absent.
fn take_out(value: &mut toml::Value, path: &str) -> bool {
    let mut segments: Vec<&str> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segments.push(&rest[..open]);
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                segments.push(&rest[..=close]);
                rest = &rest[close + 1..];
            }
        } else {
            segments.push(rest);
        }
    }
    let segments: Vec<&str> = segments.into_iter().filter(|s| !s.is_empty()).collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut here = value;
    for segment in parents {
        let next = match (segment.strip_prefix('['), here) {
            (Some(index), toml::Value::Array(items)) => index
                .trim_end_matches(']')
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get_mut(index)),
            (None, toml::Value::Table(table)) => table.get_mut(*segment),
            _ => None,
        };
        match next {
            Some(next) => here = next,
            None => return false,
        }
    }
    match (last.strip_prefix('['), here) {
        (Some(index), toml::Value::Array(items)) => {
            match index.trim_end_matches(']').parse::<usize>() {
                Ok(index) if index < items.len() => {
                    items.remove(index);
                    true
                }
                _ => false,
            }
        }
        (None, toml::Value::Table(table)) => table.remove(*last).is_some(),
        _ => false,
    }
}

/// A deserializer's message in a user's words: `invalid type: string "two", expected u32`
/// becomes `expected a whole number (0 to 4294967295), found string "two"`.
fn plain_error(message: &str) -> String {
    let message = message.lines().next().unwrap_or(message).trim();
    let expected_words = |expected: &str| -> String {
        match expected.trim() {
            "u8" => "a whole number (0 to 255)".into(),
            "u16" => "a whole number (0 to 65535)".into(),
            "u32" => "a whole number (0 to 4294967295)".into(),
            "u64" | "usize" => "a whole number (0 or more)".into(),
            "i32" | "i64" | "isize" => "a whole number".into(),
            "f32" | "f64" => "a number".into(),
            "path string" | "a string" | "a borrowed string" => "a string".into(),
            "a boolean" | "bool" => "true or false".into(),
            other => other.to_string(),
        }
    };
    for (prefix, verb) in [("invalid type: ", "found"), ("invalid value: ", "got")] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, {verb} {found}", expected_words(expected));
        }
    }
    message.to_string()
}

/// Parses a human duration at `path`, `default` when `value` is absent; a bad one is a problem
/// (and zero, so reading goes on).
pub fn parse_duration(
    value: Option<&str>,
    default: &str,
    path: &str,
    problems: &mut Problems,
) -> Duration {
    let text = value.unwrap_or(default);
    match humantime::parse_duration(text) {
        Ok(duration) => duration,
        Err(error) => {
            problems.push(
                path,
                format!(
                    "invalid duration `{text}` ({error}); write e.g. \"30s\", \"5m\", \"1h 30m\""
                ),
            );
            Duration::ZERO
        }
    }
}

/// `path.field`, or `path[3]` for an index.
pub fn join(path: &str, field: &str) -> String {
    match (path.is_empty(), field.starts_with('[')) {
        (true, _) => field.to_string(),
        (false, true) => format!("{path}{field}"),
        (false, false) => format!("{path}.{field}"),
    }
}

/// Job, source and sink names appear in queue names and unit ids.
pub fn check_name(name: &str, path: &str, problems: &mut Problems) {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        problems.push(
            path,
            format!("`{name}` is not a valid name (1-64 letters, digits, `-` or `_`)"),
        );
    }
}

/// Table and column names are spliced into SQL, so they must be plain identifiers.
pub fn check_identifier(name: &str, path: &str, problems: &mut Problems) {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        problems.push(path, format!("`{name}` is not a valid identifier (letters, digits and `_`, not starting with a digit)"));
    }
}

/// A source or sink kind's own settings, read and checked once when the job is loaded. The
/// job keeps them behind this trait; the kind that read them gets its own type back with
/// [`settings_of`] when it builds its reader or writer.
pub trait KindSettings: Any + fmt::Debug + Send + Sync {
    /// For sources: what the source's unit ids depend on (a run resumes only under the same
    /// basis), e.g. `files data/*.jsonl Jsonl`.
    fn basis(&self) -> String {
        String::new()
    }

    /// For sources: the basis a build from before big files were cut into ranges wrote for
    /// these settings. Its plans hold whole files only, which this build reads as planned, so
    /// such a run resumes. The basis itself for kinds that did not change.
    fn basis_before_split(&self) -> String {
        self.basis()
    }

    /// For sources: the basis a build from before JSONL lines were carried as their text
    /// wrote (its plans are resumed reading lines into values, as it did). The basis itself
    /// for kinds that did not change.
    fn basis_before_text(&self) -> String {
        self.basis()
    }

    /// For sinks that must not share a target: what only one sink of the job may write.
    fn exclusive_target(&self) -> Option<ExclusiveTarget> {
        None
    }
}

/// What only one sink may write (a table of a database file), and what to say when two do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExclusiveTarget {
    /// The settings field that names the target, e.g. `table`.
    pub field: &'static str,
    /// The target's identity; two sinks with the same identity clash.
    pub identity: String,
    /// The problem reported on the second sink.
    pub clash: &'static str,
}

/// The settings a kind read, as its own type. Only the kind that read them asks, so a
/// mismatch is a registration bug, not bad input.
pub fn settings_of<T: KindSettings>(settings: &dyn KindSettings) -> &T {
    let any: &dyn Any = settings;
    any.downcast_ref::<T>()
        .expect("a kind builds only from the settings it read itself")
}

/// A value that must never be printed: `Debug` shows `***`, and [`Secret::hide_in`] removes
/// it from any message before the message is logged or returned.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced by `***`.
    pub fn hide_in(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.0, "***")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_secret_is_hidden_in_debug_and_messages() {
        let secret = Secret::new("p@ss");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.hide_in("login p@ss failed"), "login *** failed");
        assert_eq!(Secret::new("").hide_in("as is"), "as is");
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        count: Option<u32>,
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        ratio: f64,
        tags: Vec<String>,
    }

    #[test]
    fn settings_every_type_error_is_reported_once_without_echoes() {
        let value: toml::Value =
            // `nested` first: its required `ratio`, once taken out, must not hide what follows.
            toml::from_str("nested = { ratio = \"high\", tags = [\"a\", 2] }\nname = 5\ncount = \"x\"")
                .unwrap();
        let mut problems = Problems::default();
        assert!(read_value::<Sample>(value, "s", &mut problems).is_none());
        let report = problems.to_string();
        assert_eq!(problems.len(), 4, "{report}");
        for expected in [
            "s.name: expected a string, found integer `5`",
            "s.count: expected a whole number (0 to 4294967295), found string \"x\"",
            "s.nested.ratio: expected a number, found string \"high\"",
            "s.nested.tags[1]: expected a string, found integer `2`",
        ] {
            assert!(report.contains(expected), "`{expected}` in:\n{report}");
        }
        assert!(!report.contains("missing field"), "{report}");
    }

    #[test]
    fn settings_unknown_keys_after_a_type_error_and_array_problems_are_reported_once() {
        let value: toml::Value = toml::from_str(
            "count = \"5\"\nname = \"n\"\ntypo = 1\nnested = { ratio = 1.0, tags = [\"a\", 2, 3] }",
        )
        .unwrap();
        let mut problems = Problems::default();
        assert!(read_value::<Sample>(value, "s", &mut problems).is_none());
        let report = problems.to_string();
        assert!(report.contains("s.typo: unknown key"), "{report}");
        assert_eq!(report.matches("s.nested.tags[1]").count(), 1, "{report}");
        assert_eq!(problems.len(), 3, "{report}");
    }
}
