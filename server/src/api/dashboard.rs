//! The operator's dashboard: three static files compiled into the binary
//! (`server/dashboard/`), served under `/` beside `/api/v1`; the page's script reads and
//! changes everything through the JSON API with the session cookie (`session`). Nothing is
//! fetched from anywhere else: the Content-Security-Policy allows this origin's script and
//! style only, no inline code, no framing.

use super::http::{etag_matches, Request, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// One embedded file.
pub(super) struct Asset {
    pub path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../../dashboard/index.html") },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../dashboard/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../dashboard/app.css"),
    },
];

/// Scripts and styles of this origin only; no inline code, plugins, frames or forms elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The embedded file at `path` (`/index.html` is `/`).
pub(super) fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|asset| asset.path == path)
}

/// `GET` of an embedded file: revalidated by its ETag (the files change only with the
/// binary), with the headers that keep a browser from running anything else.
pub(super) fn serve(asset: &Asset, request: &Request) -> Response {
    let etag = etag_of(asset);
    let response = if request.header("if-none-match").is_some_and(|v| etag_matches(v, &etag)) {
        Response::empty(304)
    } else {
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), asset.content_type.into())],
            body: asset.body.to_vec(),
        }
    };
    with_browser_headers(response).with_header("ETag", etag).with_header("Cache-Control", "no-cache")
}

/// The headers every dashboard file carries.
pub(super) fn with_browser_headers(response: Response) -> Response {
    response
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .with_header("X-Frame-Options", "DENY")
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
}

fn etag_of(asset: &Asset) -> String {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS.iter().map(|a| format!("\"{}\"", &crate::keys::hex(&Sha256::digest(a.body))[..16])).collect()
    });
    let index = ASSETS.iter().position(|a| a.path == asset.path).unwrap_or(0);
    etags[index].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_with_their_type_and_a_strict_policy() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/index.html", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let response = serve(asset(path).unwrap(), &Request::default());
            assert_eq!(response.status, 200, "{path}");
            assert!(response.header("content-type").unwrap().starts_with(kind), "{path}");
            assert_eq!(response.header("x-frame-options"), Some("DENY"));
            assert!(!response.header("content-security-policy").unwrap().contains("unsafe"));
            assert!(!response.body.is_empty());
            let etag = response.header("etag").unwrap().to_string();
            let again = Request { headers: vec![("if-none-match".into(), etag)], ..Default::default() };
            let revalidated = serve(asset(path).unwrap(), &again);
            assert_eq!(revalidated.status, 304);
            assert!(revalidated.body.is_empty());
        }
        assert!(asset("/ui/../Cargo.toml").is_none());
        assert!(asset("/ui/").is_none());
    }

    /// The `on…=` attributes (inline handlers) in `html`: any word after white space that
    /// starts with `on` and is followed by `=`.
    fn inline_handlers(html: &str) -> Vec<String> {
        let bytes = html.as_bytes();
        let mut found = Vec::new();
        for (at, _) in html.match_indices("on") {
            let after_space = at > 0 && bytes[at - 1].is_ascii_whitespace();
            let name_end =
                bytes[at + 2..].iter().position(|b| !b.is_ascii_alphabetic()).map_or(bytes.len(), |n| at + 2 + n);
            let rest = html[name_end..].trim_start();
            if after_space && name_end > at + 2 && rest.starts_with('=') {
                found.push(html[at..name_end].to_string());
            }
        }
        found
    }

    #[test]
    fn the_check_for_inline_handlers_finds_them() {
        assert_eq!(inline_handlers("<img src=x onerror =alert(1)>"), ["onerror"]);
        assert_eq!(inline_handlers("<body\nonload=\"x\">"), ["onload"]);
        assert!(inline_handlers("<a aria-label=on class=x>online</a>").is_empty());
        // Conservative: prose that looks like one counts too (the page has none).
        assert_eq!(inline_handlers("<p>a one = two</p>"), ["one"]);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = String::from_utf8_lossy(asset("/").unwrap().body).to_ascii_lowercase();
        assert!(html.contains("<script src=\"/ui/app.js\""));
        assert!(!html.contains("style=") && !html.contains("<style"));
        let scripts: Vec<&str> = html.split("<script").skip(1).map(|tag| tag.split('>').next().unwrap_or("")).collect();
        assert!(scripts.iter().all(|attributes| attributes.contains(" src=")), "an inline <script>: {scripts:?}");
        assert_eq!(inline_handlers(&html), Vec::<String>::new());
        let script = String::from_utf8_lossy(asset("/ui/app.js").unwrap().body).to_string();
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            assert!(!script.contains(sink), "app.js uses {sink}: data from devices would reach the page as HTML");
        }
    }
}
