//! HTML building blocks: escaping, URL segments, the page frame. Pages are
//! plain server-rendered HTML with inline CSS: no script, no build step.

use percent_encoding::{AsciiSet, utf8_percent_encode};

/// Characters escaped in path segments of generated links.
const SEGMENT: &AsciiSet = &crate::http::SEGMENT.add(b'\'').add(b'&');

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A relative path (`a/b c`) as URL path segments (`a/b%20c`).
pub fn url_path(path: &str) -> String {
    path.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Bytes in a human unit (binary prefixes).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(unix: u64) -> String {
    if unix == 0 {
        return "—".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 24px}header a{color:#fff;text-decoration:none;font-weight:600}\
main{padding:16px 24px;max-width:1100px}h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;background:#fff;width:100%}th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e3e6eb}\
th{background:#eef0f3;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#17803d}.bad{color:#b42318}.muted{color:#6b7280}code{font-size:13px}\
.A{color:#17803d}.M{color:#9a6700}.D{color:#b42318}svg{background:#fff;border:1px solid #e3e6eb}\
nav.crumbs{margin:8px 0}";

/// A whole page: title, breadcrumb-ish heading, body.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} — Elton</title><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head>\
         <body><header><a href=\"/\">Elton</a></header><main>{body}</main></body></html>",
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_paths_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(url_path("a b/c#d"), "a%20b/c%23d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(time(0), "—");
        assert_eq!(time(86_400), "1970-01-02 00:00:00 UTC");
    }
}
