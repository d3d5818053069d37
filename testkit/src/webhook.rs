//! A webhook receiver for the alert tests: a small HTTP/1.1 server on a free loopback port
//! (std only, one request per connection) that keeps every request, checks its
//! `X-Stevedore-Signature` against the secret, and answers 500 to the first few requests
//! when asked to, so tests see the sender retry.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::PATIENCE;

/// One request received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its headers, names in lowercase.
    pub headers: BTreeMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
    /// True when `X-Stevedore-Signature` is `sha256=` the HMAC-SHA256 of the body.
    pub signed: bool,
    /// The status it was answered with.
    pub status: u16,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// The receiver; it stops taking requests when dropped (its thread ends with the process).
pub struct WebhookReceiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    received: Arc<Mutex<Vec<Delivery>>>,
}

impl WebhookReceiver {
    /// Starts a receiver checking signatures with `secret`, answering 500 to the first
    /// `fail_first` requests and 200 to the rest.
    pub fn start(secret: &str, fail_first: usize) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().expect("an address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (store, secret) = (received.clone(), secret.as_bytes().to_vec());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let status = if store.lock().unwrap().len() < fail_first {
                    500
                } else {
                    200
                };
                if let Some(delivery) = serve(stream, &secret, status) {
                    store.lock().unwrap().push(delivery);
                }
            }
        });
        WebhookReceiver { port, received }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/stevedore", self.port)
    }

    /// Every request so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (up to [`PATIENCE`]) until `condition` holds for the requests received.
    pub fn wait_for(
        &self,
        what: &str,
        mut condition: impl FnMut(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let deliveries = self.deliveries();
            if condition(&deliveries) {
                return deliveries;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; received: {deliveries:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Reads one request from `stream` and answers `status`.
fn serve(stream: TcpStream, secret: &[u8], status: u16) -> Option<Delivery> {
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let signed = headers.get("x-stevedore-signature") == Some(&format!("sha256={expected}"));
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(Delivery {
        headers,
        body,
        signed,
        status,
    })
}
