//! A strict REST API on loopback, for the HTTP source's tests: it behaves like the APIs that
//! ban careless clients. It serves each tenant's records at `/v1/tenants/{tenant}/users` in
//! pages (cursor, page, offset or Link pagination), requires a bearer token from its OAuth2
//! client-credentials endpoint (`POST /oauth/token`) that expires after a few seconds (401
//! after that), **bans** every client for the rest of the test (403) once a calendar second
//! holds more requests than its limit, and answers 429 with `Retry-After` or 503 when a test
//! asks it to. It logs every request, so a test can read what the API saw. Tenant `broken`
//! answers HTML, tenant `mixed` serves every tenth record as a number, and a tenant the
//! server does not know is a 404.
//!
//! HTTP/1.1 with keep-alive, one thread per connection, written here because a test server
//! must be simple enough to trust and must fail in exactly the ways a test asks for.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How the API pages its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pagination {
    /// `?cursor=C`; the body's `meta.next_cursor` names the next page (absent on the last).
    Cursor,
    /// `?page=N&per_page=M` from 1; the last page is a short (or empty) one.
    Page,
    /// `?offset=N&limit=M`; the last page is a short (or empty) one.
    Offset,
    /// A `Link: <url>; rel="next"` header (RFC 8288) on every page but the last.
    Link,
}

/// How a server behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Tenants and how many records each has.
    pub tenants: BTreeMap<String, u64>,
    /// Records per page (when the client does not ask for a size).
    pub page_size: u64,
    /// How pages are linked.
    pub pagination: Pagination,
    /// Requests allowed in one calendar second before every client is banned.
    pub requests_per_second: usize,
    /// Require a bearer token, valid this long after it was issued (`None`: no auth).
    pub token_lifetime: Option<Duration>,
}

impl ApiConfig {
    /// `tenants` with `records` each, 100 per page, cursor pagination, 20 requests a second,
    /// tokens valid 5 s.
    pub fn new(tenants: &[&str], records: u64) -> ApiConfig {
        ApiConfig {
            tenants: tenants.iter().map(|t| (t.to_string(), records)).collect(),
            page_size: 100,
            pagination: Pagination::Cursor,
            requests_per_second: 20,
            token_lifetime: Some(Duration::from_secs(5)),
        }
    }
}

/// One request as the API saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Method and path with query.
    pub target: String,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    log: Vec<Seen>,
    per_second: BTreeMap<u64, usize>,
    banned: bool,
    tokens: BTreeMap<String, Instant>,
    token_calls: usize,
    faults: VecDeque<(u16, Option<u64>)>,
    added_tenants: BTreeMap<String, u64>,
}

/// A running API server; it stops with the test process.
pub struct ApiServer {
    port: u16,
    state: Arc<Mutex<State>>,
}

/// The client id and secret the token endpoint accepts.
pub const CLIENT_ID: &str = "stevedore-test";
/// See [`CLIENT_ID`].
pub const CLIENT_SECRET: &str = "s3cret-for-tests";

impl ApiServer {
    /// Starts a server on a free loopback port.
    pub fn start(config: ApiConfig) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let config = Arc::new(config);
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, config) = (shared.clone(), config.clone());
                std::thread::spawn(move || serve(stream, &state, &config, port));
            }
        });
        ApiServer { port, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers the next `count` requests for records with `status` (429 or 503), with
    /// `Retry-After: retry_after` seconds when given.
    pub fn fail_next(&self, count: usize, status: u16, retry_after: Option<u64>) {
        let mut state = self.state.lock().unwrap();
        state
            .faults
            .extend(std::iter::repeat_n((status, retry_after), count));
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().unwrap().log.clone()
    }

    /// The most requests the API saw in one calendar second.
    pub fn busiest_second(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.per_second.values().copied().max().unwrap_or(0)
    }

    /// True once a client went over the limit.
    pub fn banned(&self) -> bool {
        self.state.lock().unwrap().banned
    }

    /// Starts serving `tenant` with `records` records (a tenant the API did not know).
    pub fn add_tenant(&self, tenant: &str, records: u64) {
        let mut state = self.state.lock().unwrap();
        state.added_tenants.insert(tenant.to_string(), records);
    }

    /// Makes every token issued so far invalid (401 from now on), as a server that rotates
    /// its keys does.
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// How many times the token endpoint was called.
    pub fn token_calls(&self) -> usize {
        self.state.lock().unwrap().token_calls
    }
}

struct Request {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: String,
}

fn serve(stream: TcpStream, state: &Mutex<State>, config: &ApiConfig, port: u16) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(stream.try_clone().expect("a clone of the socket"));
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let (status, headers, body) = answer(&request, state, config, port);
        let mut response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n",
            reason(status),
            body.len()
        );
        for (name, value) in headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        let close = request
            .headers
            .get("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"));
        if close {
            response.push_str("connection: close\r\n");
        }
        response.push_str("\r\n");
        if writer.write_all(response.as_bytes()).is_err()
            || writer.write_all(&body).is_err()
            || close
        {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

fn answer(request: &Request, state: &Mutex<State>, config: &ApiConfig, port: u16) -> Answer {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut state = state.lock().unwrap();
    let second = now_ms / 1000;
    let count = {
        let count = state.per_second.entry(second).or_insert(0);
        *count += 1;
        *count
    };
    if count > config.requests_per_second {
        state.banned = true;
    }
    let answer = if state.banned {
        json_answer(403, json!({"error": "banned: too many requests"}))
    } else {
        route(request, &mut state, config, port)
    };
    state.log.push(Seen {
        at_ms: now_ms,
        target: format!("{} {}", request.method, request.target),
        status: answer.0,
    });
    answer
}

fn route(request: &Request, state: &mut State, config: &ApiConfig, port: u16) -> Answer {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let query: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    if request.method == "POST" && path == "/oauth/token" {
        state.token_calls += 1;
        let form: BTreeMap<&str, &str> = request
            .body
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        if form.get("client_id") != Some(&CLIENT_ID)
            || form.get("client_secret") != Some(&CLIENT_SECRET)
        {
            return json_answer(401, json!({"error": "invalid_client"}));
        }
        let token = format!("token-{}", state.token_calls);
        state.tokens.insert(token.clone(), Instant::now());
        let lifetime = config.token_lifetime.unwrap_or(Duration::from_secs(3600));
        return json_answer(
            200,
            json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime.as_secs()}),
        );
    }
    if let Some(lifetime) = config.token_lifetime {
        let token = request
            .headers
            .get("authorization")
            .and_then(|value| value.strip_prefix("Bearer "));
        let valid = token
            .and_then(|token| state.tokens.get(token))
            .is_some_and(|issued| issued.elapsed() < lifetime);
        if !valid {
            return json_answer(401, json!({"error": "invalid_token"}));
        }
    }
    let Some(tenant) = path
        .strip_prefix("/v1/tenants/")
        .and_then(|rest| rest.strip_suffix("/users"))
    else {
        return json_answer(404, json!({"error": "no such path"}));
    };
    if let Some((status, retry_after)) = state.faults.pop_front() {
        let mut answer = json_answer(status, json!({"error": "try again later"}));
        if let Some(seconds) = retry_after {
            answer.1.push(("retry-after".into(), seconds.to_string()));
        }
        return answer;
    }
    if tenant == "broken" {
        return (200, Vec::new(), b"<html>not json</html>".to_vec());
    }
    let known = config
        .tenants
        .get(tenant)
        .or(state.added_tenants.get(tenant));
    let Some(&records) = known else {
        return json_answer(404, json!({"error": format!("no tenant {tenant}")}));
    };
    let number = |name: &str, default: u64| {
        query
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (start, size) = match config.pagination {
        Pagination::Cursor | Pagination::Link => (number("cursor", 0), config.page_size),
        Pagination::Page => {
            let size = number("per_page", config.page_size);
            ((number("page", 1).max(1) - 1) * size, size)
        }
        Pagination::Offset => (number("offset", 0), number("limit", config.page_size)),
    };
    let end = (start + size).min(records);
    // Tenant `mixed` serves every tenth record as a bare number, not an object.
    let data: Vec<Value> = (start..end)
        .map(|n| match tenant {
            "mixed" if n % 10 == 9 => json!(n + 1),
            _ => json!({"id": n + 1, "tenant": tenant, "name": format!("user {}", n + 1)}),
        })
        .collect();
    let more = end < records;
    let mut body = json!({"data": data});
    let mut headers = Vec::new();
    match config.pagination {
        Pagination::Cursor if more => body["meta"] = json!({"next_cursor": end.to_string()}),
        Pagination::Cursor => body["meta"] = json!({"next_cursor": null}),
        Pagination::Link if more => headers.push((
            "link".to_string(),
            format!("<http://127.0.0.1:{port}{path}?cursor={end}>; rel=\"next\""),
        )),
        _ => {}
    }
    let mut answer = json_answer(200, body);
    answer.1.extend(headers);
    answer
}

fn json_answer(status: u16, body: Value) -> Answer {
    (
        status,
        vec![("content-type".into(), "application/json".into())],
        body.to_string().into_bytes(),
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal client: one request on a fresh connection.
    fn get(server: &ApiServer, target: &str, token: Option<&str>) -> (u16, String, String) {
        request(server, "GET", target, token, "")
    }

    fn request(
        server: &ApiServer,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nhost: x\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn token(server: &ApiServer) -> String {
        let (status, _, body) = request(
            server,
            "POST",
            "/oauth/token",
            None,
            &format!(
                "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
            ),
        );
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    #[test]
    fn http_api_pages_by_cursor_and_requires_a_token() {
        let mut config = ApiConfig::new(&["acme"], 250);
        config.requests_per_second = 1000;
        let server = ApiServer::start(config);
        assert_eq!(get(&server, "/v1/tenants/acme/users", None).0, 401);
        let token = token(&server);
        let mut target = "/v1/tenants/acme/users".to_string();
        let mut ids = Vec::new();
        loop {
            let (status, _, body) = get(&server, &target, Some(&token));
            assert_eq!(status, 200);
            let body: Value = serde_json::from_str(&body).unwrap();
            ids.extend(
                body["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_u64().unwrap()),
            );
            match body["meta"]["next_cursor"].as_str() {
                Some(cursor) => target = format!("/v1/tenants/acme/users?cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(ids, (1..=250).collect::<Vec<_>>());
        assert_eq!(
            get(&server, "/v1/tenants/initech/users", Some(&token)).0,
            404
        );
        assert_eq!(server.token_calls(), 1);
    }

    #[test]
    fn http_api_pages_by_page_offset_and_link() {
        for pagination in [Pagination::Page, Pagination::Offset, Pagination::Link] {
            let mut config = ApiConfig::new(&["acme"], 150);
            config.token_lifetime = None;
            config.requests_per_second = 1000;
            config.pagination = pagination;
            let server = ApiServer::start(config);
            let (first, second) = match pagination {
                Pagination::Page => ("?page=1&per_page=100", "?page=2&per_page=100"),
                Pagination::Offset => ("?offset=0&limit=100", "?offset=100&limit=100"),
                _ => ("", "?cursor=100"),
            };
            let (_, head, body) = get(&server, &format!("/v1/tenants/acme/users{first}"), None);
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                body["data"].as_array().unwrap().len(),
                100,
                "{pagination:?}"
            );
            if pagination == Pagination::Link {
                assert!(head.contains("rel=\"next\""), "{head}");
            }
            let (_, head, body) = get(&server, &format!("/v1/tenants/acme/users{second}"), None);
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                body["data"].as_array().unwrap().len(),
                50,
                "the last page is short"
            );
            assert!(!head.contains("rel=\"next\""), "{head}");
        }
    }

    #[test]
    fn http_api_bans_a_client_over_the_limit_and_fails_on_request() {
        let mut config = ApiConfig::new(&["acme"], 10);
        config.token_lifetime = None;
        config.requests_per_second = 1000;
        let server = ApiServer::start(config);
        server.fail_next(1, 429, Some(2));
        let (status, head, _) = get(&server, "/v1/tenants/acme/users", None);
        assert_eq!(status, 429);
        assert!(head.contains("retry-after: 2"), "{head}");
        assert_eq!(get(&server, "/v1/tenants/broken/users", None).0, 200);
        assert!(!server.banned());

        let mut strict = ApiConfig::new(&["acme"], 10);
        strict.token_lifetime = None;
        strict.requests_per_second = 3;
        let strict = ApiServer::start(strict);
        // Requests as fast as they go, until one calendar second holds more than three.
        while !strict.banned() {
            get(&strict, "/v1/tenants/acme/users", None);
        }
        assert_eq!(
            get(&strict, "/v1/tenants/acme/users", None).0,
            403,
            "banned for good"
        );
        assert!(strict.busiest_second() > 3);
    }
}
