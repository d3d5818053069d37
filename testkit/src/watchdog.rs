//! Database servers that live as long as the test binary that started them, however it ends.
//!
//! A server started once per test binary sits in a `static`, which Rust never drops; so the
//! server is started under a small shell wrapper that reads its standard input, a pipe from
//! the test process. When the test process ends (passed, failed, or killed with SIGKILL) the
//! pipe closes, the wrapper stops the server with `stop_signal` and removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A server process under the wrapper.
pub(crate) struct Watched {
    wrapper: Child,
    /// Held open: the wrapper stops the server when it closes.
    _lifeline: ChildStdin,
}

impl Watched {
    /// Starts `program args` (as `user` when given: servers that refuse to run as root),
    /// its output appended to `log`; stopped with `stop_signal` (`INT`, `TERM`) and `dir`
    /// removed when this test process ends.
    pub(crate) fn start(
        program: &Path,
        args: &[String],
        user: Option<&str>,
        log: &Path,
        dir: &Path,
        stop_signal: &str,
    ) -> Watched {
        // $1 log, $2 dir, $3 signal, then the server's command line.
        // A background command of a non-interactive shell reads /dev/null, so the lifeline is
        // kept as fd 3 and handed to the `cat` that waits for it to close.
        let script = r#"log=$1; dir=$2; signal=$3; shift 3
exec 3<&0
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
( cat <&3 >/dev/null; kill -"$signal" "$pid" 2>/dev/null ) &
exec 3<&-
wait "$pid"
status=$?
rm -rf "$dir"
exit $status"#;
        let mut command = match user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", "sh", "-c", script, "sh"]);
                command
            }
            None => {
                let mut command = Command::new("sh");
                command.args(["-c", script, "sh"]);
                command
            }
        };
        let mut wrapper = command
            .arg(log)
            .arg(dir)
            .arg(stop_signal)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let lifeline = wrapper.stdin.take().expect("a piped stdin");
        Watched {
            wrapper,
            _lifeline: lifeline,
        }
    }

    /// `Some(reason)` once the server has exited (it could not start).
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.wrapper.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(error.to_string()),
        }
    }
}

/// The user a server that refuses root runs as when the tests run as root (CI does), with
/// `dir` handed to it; `None` when the tests do not run as root.
pub(crate) fn server_user(user: &'static str, dir: &Path) -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !root {
        return None;
    }
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(dir)
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown -R {user} {}", dir.display());
    Some(user)
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The newest installed `/usr/lib/<package>/<version>/bin/<program>`, or `program` from PATH.
pub(crate) fn versioned_binary(package_dir: &str, program: &str) -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(package_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let path = entry.path().join("bin").join(program);
            path.exists().then_some((version, path))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map_or_else(|| PathBuf::from(program), |(_, path)| path)
}

/// The log a server wrote so far, for a failure message.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
