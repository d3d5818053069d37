//! HTTP requests to a stevedore daemon (`/metrics`, `/status`, control) and a real headless
//! Chromium to look at its status page, as a person would.

use std::path::Path;
use std::process::Command;

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
    /// The `Content-Type` header.
    pub content_type: String,
}

/// `GET url`.
pub fn get(url: &str) -> Answer {
    request(reqwest::Method::GET, url, &[], "")
}

/// `POST url` with `headers` and `body`.
pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    request(reqwest::Method::POST, url, headers, body)
}

fn request(method: reqwest::Method, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    crate::block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(method, url).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.text().await.unwrap_or_default();
        Answer {
            status,
            body,
            content_type,
        }
    })
}

/// Debian's Chromium (`chromium`), or the one `STEVEDORE_CHROMIUM` names.
fn chromium() -> String {
    std::env::var("STEVEDORE_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Runs headless Chromium on `url` with `action` (e.g. `--dump-dom`), letting the page's
/// scripts run for a few seconds of its (virtual) time first. Flags as this machine needs them:
/// no sandbox as root, and no background connections (there is no internet here).
fn headless(url: &str, action: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().expect("temp dir");
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(action)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); scripts/ensure-deps.sh installs it",
                chromium()
            )
        })
}

/// The page at `url` as the browser's DOM after its scripts ran.
pub fn rendered_dom(url: &str) -> String {
    let output = headless(url, &["--dump-dom"]);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A PNG screenshot of the page at `url`, written to `file`.
pub fn screenshot(url: &str, file: &Path) {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).expect("screenshot directory");
    }
    let output = headless(url, &[&format!("--screenshot={}", file.display())]);
    assert!(
        output.status.success() && file.exists(),
        "chromium took no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
