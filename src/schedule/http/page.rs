//! The status page: one HTML file, a script and a style sheet, compiled into the binary (no
//! build step, no CDN: hosts that run daemons often reach no internet). The script fetches
//! `/status` every few seconds and builds the page with `textContent` only, so every value
//! shown is escaped by construction; a content security policy allows nothing but this origin.

use crate::metrics::http::Response;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/page.js");
const STYLE: &str = include_str!("page/page.css");

/// Only this origin's script, style and `/status`; no inline code, no frames, no forms.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page's files; `control` turns the buttons on.
pub(super) fn asset(path: &str, control: bool) -> Option<Response> {
    let response = match path {
        "/" | "/index.html" => {
            let page = INDEX.replace(
                "data-control=\"false\"",
                if control {
                    "data-control=\"true\""
                } else {
                    "data-control=\"false\""
                },
            );
            Response::new(200, "text/html; charset=utf-8", page)
        }
        "/page.js" => Response::new(200, "text/javascript; charset=utf-8", SCRIPT),
        "/page.css" => Response::new(200, "text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    Some(
        response
            .with_header("content-security-policy", POLICY)
            .with_header("x-content-type-options", "nosniff")
            .with_header("referrer-policy", "no-referrer"),
    )
}
