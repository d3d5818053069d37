//! `${VAR}` interpolation over the parsed TOML tree, before any typed parsing, so that
//! every string value (connection strings, paths, keys) can come from the environment.

use super::Problems;

/// Replaces every `${VAR}` (or `${VAR:-default}`) in every string of `value`, recording a
/// problem at the value's field path for each variable that is not set. `$$` is a literal `$`.
pub fn interpolate(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    match value {
        toml::Value::String(text) if text.contains('$') => {
            *text = interpolate_str(text, path, env, problems)
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{index}]"), env, problems);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                interpolate(item, &child, env, problems);
            }
        }
        _ => {}
    }
}

fn interpolate_str(
    text: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                problems.push(path, "unterminated `${` in value");
                return out;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    problems.push(path, format!("environment variable `{name}` is not set"))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> (String, Problems) {
        let env = |name: &str| match name {
            "HOST" => Some("db.example".to_string()),
            _ => None,
        };
        let mut problems = Problems::default();
        let out = interpolate_str(text, "sink[0].connection", &env, &mut problems);
        (out, problems)
    }

    #[test]
    fn config_interpolates_set_variables_and_defaults() {
        assert_eq!(run("tcp:${HOST},1433").0, "tcp:db.example,1433");
        assert_eq!(run("${NOPE:-fallback}/x").0, "fallback/x");
        assert_eq!(run("cost $$5").0, "cost $5");
        assert_eq!(run("plain $ sign").0, "plain $ sign");
    }

    #[test]
    fn config_missing_variable_names_field_and_variable() {
        let (_, problems) = run("${MISSING_SECRET}");
        let text = problems.to_string();
        assert!(text.contains("sink[0].connection"), "{text}");
        assert!(text.contains("MISSING_SECRET"), "{text}");
    }
}
