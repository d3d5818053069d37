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

/// Debian's ChromeDriver (`chromedriver`), or the one `STEVEDORE_CHROMEDRIVER` names.
fn chromedriver() -> String {
    std::env::var("STEVEDORE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into())
}

/// The key WebDriver gives an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium driven through ChromeDriver (W3C WebDriver over HTTP), for clicking
/// what a person would click; closed when dropped.
pub struct Browser {
    driver: std::process::Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session.
    pub fn start() -> Browser {
        let port = crate::free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); scripts/ensure-deps.sh installs it",
                    chromedriver()
                )
            });
        let root = format!("http://127.0.0.1:{port}");
        crate::wait_until("chromedriver answers", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let profile = tempfile::tempdir().expect("temp dir");
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which_chromium(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let session = command(&format!("{root}/session"), Some(&capabilities));
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        Browser {
            driver,
            base: format!("{root}/session/{id}"),
            _profile: profile,
        }
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) {
        command(
            &format!("{}/url", self.base),
            Some(&serde_json::json!({"url": url})),
        );
    }

    /// The first element matching `css`, waiting until there is one.
    fn find(&self, css: &str) -> String {
        let mut found = None;
        crate::wait_until(&format!("the page shows `{css}`"), || {
            let answer = command(
                &format!("{}/element", self.base),
                Some(&serde_json::json!({"using": "css selector", "value": css})),
            );
            found = answer[ELEMENT].as_str().map(str::to_string);
            found.is_some()
        });
        found.expect("found")
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let element = self.find(css);
        command(
            &format!("{}/element/{element}/click", self.base),
            Some(&serde_json::json!({})),
        );
    }

    /// Types `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        command(
            &format!("{}/element/{element}/value", self.base),
            Some(&serde_json::json!({"text": text})),
        );
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let element = self.find(css);
        let answer = command(&format!("{}/element/{element}/text", self.base), None);
        answer.as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = crate::block_on(async { reqwest::Client::new().delete(&self.base).send().await });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Chromium's path, for ChromeDriver (which does not search PATH for `chromium`).
fn which_chromium() -> String {
    let name = chromium();
    if name.contains('/') {
        return name;
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(&name))
        .find(|path| path.exists())
        .map(|path| path.display().to_string())
        .unwrap_or(name)
}

/// One WebDriver command: POST `body` (or GET without one); its `value`.
fn command(url: &str, body: Option<&serde_json::Value>) -> serde_json::Value {
    let answer = match body {
        Some(body) => post(
            url,
            &[("content-type", "application/json")],
            &body.to_string(),
        ),
        None => get(url),
    };
    let value: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("WebDriver {url}: {e}: {}", answer.body));
    value["value"].clone()
}
