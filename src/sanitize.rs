//! Text that came from outside (gate answers, document keys, SDK errors) before it reaches events,
//! `/status`, logs or metrics: bounded, one line, no control characters. A remote endpoint must not
//! be able to fill memory through the event ring, redraw an operator's terminal with escape
//! sequences, or forge log lines with newlines.

/// Longest message kept (a gate's outcome, a parser's complaint), in bytes.
pub const MESSAGE_MAX: usize = 512;
/// Longest piece of echoed input (a key, a value) in a document error, in bytes.
pub const ECHO_MAX: usize = 128;

/// `s` without control characters (newlines and tabs become spaces, others are dropped), cut to at
/// most `max` bytes on a character boundary. A cut ends with "…" (counted in `max`) so a reader
/// knows there was more.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut last_space = false;
    for c in s.chars() {
        let c = match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => continue,
            // Bidirectional overrides and zero-width characters can make a message read as
            // something else in a terminal.
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => continue,
            c => c,
        };
        // Runs of whitespace from folded newlines collapse to one space.
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    cut(out, max)
}

/// `clean` with the message bound.
pub fn message(s: &str) -> String {
    clean(s, MESSAGE_MAX)
}

/// `clean` with the echoed-input bound, for keys and values quoted back in document errors.
pub fn echo(s: &str) -> String {
    clean(s, ECHO_MAX)
}

/// A URL for messages: userinfo (`user:password@`, or a token as user) and the query string (API
/// keys) replaced by `redacted`, the fragment dropped. Text that does not parse as a URL is cut
/// at `?`/`#` and before its last `@` the same way.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("redacted");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("redacted"));
            }
            u.set_fragment(None);
            u.to_string()
        }
        _ => {
            let (base, rest) = match url.find(['?', '#']) {
                Some(i) => (&url[..i], "?redacted"),
                None => (url, ""),
            };
            let base = match base.rsplit_once('@') {
                Some((before, host)) => match before.find("://") {
                    Some(i) => format!("{}redacted@{host}", &before[..i + 3]),
                    None => format!("redacted@{host}"),
                },
                None => base.to_string(),
            };
            format!("{base}{rest}")
        }
    }
}

const ELLIPSIS: &str = "…";

/// Cut to at most `max` bytes on a character boundary, ending with "…" when something was cut.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let keep = max.saturating_sub(ELLIPSIS.len());
    let mut end = keep;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if max >= ELLIPSIS.len() {
        s.push_str(ELLIPSIS);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_go_newlines_fold() {
        assert_eq!(clean("a\x1b[2Jb", 100), "a[2Jb");
        assert_eq!(clean("line one\r\n\tline two", 100), "line one line two");
        assert_eq!(clean("x\u{202e}y\u{0}z\u{7f}", 100), "xyz");
        assert_eq!(clean("plain text", 100), "plain text");
    }

    #[test]
    fn cut_on_a_char_boundary_within_the_bound() {
        // 'é' is 2 bytes: 300 of them are 600 bytes.
        let long = "é".repeat(300);
        let c = clean(&long, MESSAGE_MAX);
        assert!(c.len() <= 512, "{}", c.len());
        assert!(c.ends_with('…'));
        assert!(c.len() >= 512 - 4, "cut too much: {}", c.len());
        let exact = "a".repeat(512);
        assert_eq!(clean(&exact, 512), exact, "at the bound nothing is cut");
        let over = "a".repeat(513);
        assert_eq!(clean(&over, 512).len(), 512);
        // A 1 MiB answer does not survive whole.
        assert!(message(&"x".repeat(1 << 20)).len() <= 512);
    }

    #[test]
    fn urls_lose_userinfo_and_query() {
        let cases = [
            ("https://prom.example/api", "https://prom.example/api"),
            (
                "https://probe:s3cret@x.example:8443/h?token=abc#frag",
                "https://redacted@x.example:8443/h?redacted",
            ),
            ("http://TOKEN@x.example/", "http://redacted@x.example/"),
            ("not a url?key=1", "not a url?redacted"),
            ("ftp//u:p@host", "redacted@host"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn tiny_bounds_do_not_panic() {
        for max in 0..6 {
            let c = clean("ééééé", max);
            assert!(c.len() <= max, "{max}: {c:?}");
        }
    }
}
