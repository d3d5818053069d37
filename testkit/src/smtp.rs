//! An SMTP server for the alert tests: the npm package `maildev` (pinned in
//! `testkit/maildev/package-lock.json`; the first test that needs it runs `npm ci` there,
//! once), on free loopback ports, with a login so tests prove the client authenticates. What
//! it received is read back through its REST API (`GET /email`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Instant;

use serde_json::Value;

use crate::{PATIENCE, free_port};

/// A throwaway maildev, killed when dropped.
pub struct MailServer {
    child: Child,
    /// Its SMTP port on 127.0.0.1 (plain SMTP, no STARTTLS).
    pub smtp_port: u16,
    web_port: u16,
    _mails: tempfile::TempDir,
}

/// One mail the server received.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Its subject.
    pub subject: String,
    /// Its plain-text body.
    pub text: String,
    /// The recipients' addresses.
    pub to: Vec<String>,
    /// The sender's address.
    pub from: String,
}

impl MailServer {
    /// Starts maildev accepting mail only after `AUTH` as `user` with `password`.
    pub fn start(user: &str, password: &str) -> MailServer {
        ensure_npm_installed();
        let mut tries = 0;
        loop {
            let mails = tempfile::tempdir().expect("temp dir");
            let (smtp_port, web_port) = (free_port(), free_port());
            let mut child = Command::new("node")
                .arg(maildev_dir().join("node_modules/maildev/bin/maildev"))
                .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1"])
                .args([
                    "--smtp",
                    &smtp_port.to_string(),
                    "--web",
                    &web_port.to_string(),
                ])
                .args(["--incoming-user", user, "--incoming-pass", password])
                .arg("--mail-directory")
                .arg(mails.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node must be installed (scripts/ensure-deps.sh)");
            let stdout = child.stdout.take().expect("piped stdout");
            let (lines, ready) = mpsc::channel();
            std::thread::spawn(move || {
                // Reads on after the ready lines so the server never blocks on a full pipe.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = lines.send(line);
                }
            });
            let deadline = Instant::now() + PATIENCE;
            let (mut smtp, mut web) = (false, false);
            while !(smtp && web) {
                let left = deadline.saturating_duration_since(Instant::now());
                match ready.recv_timeout(left) {
                    Ok(line) => {
                        smtp |= line.contains("SMTP Server running");
                        web |= line.contains("webapp running");
                    }
                    Err(_) => break,
                }
            }
            if smtp && web {
                return MailServer {
                    child,
                    smtp_port,
                    web_port,
                    _mails: mails,
                };
            }
            // Another test may have taken a port first: try others.
            let _ = child.kill();
            let status = child.wait();
            tries += 1;
            assert!(tries < 5, "maildev did not start (exit {status:?})");
        }
    }

    /// Every mail received so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        let body = http_get(self.web_port, "/email");
        let mails: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("maildev's /email is not JSON ({e}): {body}"));
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        mails
            .as_array()
            .expect("an array of mails")
            .iter()
            .map(|mail| Mail {
                subject: text(&mail["subject"]),
                text: text(&mail["text"]),
                to: mail["to"]
                    .as_array()
                    .map(|to| to.iter().map(|a| text(&a["address"])).collect())
                    .unwrap_or_default(),
                from: mail["from"][0]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect()
    }

    /// Waits (up to [`PATIENCE`]) until `condition` holds for the mails received; returns them.
    pub fn wait_for(&self, what: &str, mut condition: impl FnMut(&[Mail]) -> bool) -> Vec<Mail> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mails = self.mails();
            if condition(&mails) {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; the mails: {mails:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET on loopback; the body of a 200.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to maildev on {port}: {e}"));
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

/// `testkit/maildev`: its npm package.
fn maildev_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("maildev")
}

fn ensure_npm_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| crate::npm_ci(&maildev_dir(), "maildev"));
}
