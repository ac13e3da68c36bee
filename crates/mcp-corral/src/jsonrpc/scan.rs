//! A validating JSON scanner for the per-call fast paths.
//!
//! Forwarding a call needs only a few top-level members (`id`, `method`, `params.name`, a reply's
//! `result`) as byte ranges, and a guarantee that the whole message is well-formed JSON. serde_json
//! gives both but, for borrowed raw values, walks every payload through its generic visitor
//! machinery; this scanner checks the same grammar (RFC 8259: strings and escapes, numbers,
//! literals, nesting up to serde_json's depth limit of 128) in one tight pass and hands back
//! ranges. Anything it does not handle on the fast path (escaped keys, duplicate routing keys)
//! is reported as [`Scan::Unsupported`] so the caller falls back to serde_json, whose error
//! messages the client then sees.

use std::ops::Range;

/// Nesting deeper than this is rejected, as serde_json does.
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Not valid JSON (or not an object where one was required).
    Invalid,
    /// Valid as far as scanned, but a shape the fast path leaves to serde_json.
    Unsupported,
}

/// One member of an object: the key as written between its quotes (no escapes) and the value's
/// byte range in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a str,
    pub value: Range<usize>,
}

/// Validates that `text` is exactly one JSON object (surrounding whitespace allowed) and calls
/// `visit` for each top-level member in order.
pub fn object_members<'a>(
    text: &'a str,
    mut visit: impl FnMut(Member<'a>) -> Result<(), Scan>,
) -> Result<(), Scan> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(Scan::Invalid);
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return finish(b, i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(Scan::Invalid);
        }
        let (key_end, escaped) = scan_string(b, i)?;
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(Scan::Invalid);
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start, 1)?;
        if escaped {
            // `"\u0069d"` is `"id"`: validate everything, then let serde_json decode it.
            finish_object(b, end)?;
            return Err(Scan::Unsupported);
        }
        visit(Member {
            key,
            value: start..end,
        })?;
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return finish(b, i + 1),
            _ => return Err(Scan::Invalid),
        }
    }
}

/// Validates the rest of an object after a member value ending at `i`, then trailing whitespace.
fn finish_object(b: &[u8], mut i: usize) -> Result<(), Scan> {
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => return finish(b, i + 1),
            Some(b',') => {}
            _ => return Err(Scan::Invalid),
        }
        i = skip_ws(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return Err(Scan::Invalid);
        }
        i = skip_ws(b, skip_string(b, i)?);
        if b.get(i) != Some(&b':') {
            return Err(Scan::Invalid);
        }
        i = skip_value(b, skip_ws(b, i + 1), 1)?;
    }
}

fn finish(b: &[u8], i: usize) -> Result<(), Scan> {
    if skip_ws(b, i) == b.len() {
        Ok(())
    } else {
        Err(Scan::Invalid)
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Validates the value starting exactly at `i`; returns the index just past it.
fn skip_value(b: &[u8], i: usize, depth: usize) -> Result<usize, Scan> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{') => skip_container(b, i, depth, b'}', true),
        Some(b'[') => skip_container(b, i, depth, b']', false),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => skip_number(b, i),
        _ => Err(Scan::Invalid),
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Scan> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(Scan::Invalid)
    }
}

fn skip_container(
    b: &[u8],
    open: usize,
    depth: usize,
    close: u8,
    keyed: bool,
) -> Result<usize, Scan> {
    // `depth` counts the enclosing containers, the top-level object included.
    if depth + 1 >= MAX_DEPTH {
        return Err(Scan::Invalid);
    }
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&close) {
        return Ok(i + 1);
    }
    loop {
        if keyed {
            if b.get(i) != Some(&b'"') {
                return Err(Scan::Invalid);
            }
            i = skip_ws(b, skip_string(b, i)?);
            if b.get(i) != Some(&b':') {
                return Err(Scan::Invalid);
            }
            i = skip_ws(b, i + 1);
        }
        i = skip_ws(b, skip_value(b, i, depth + 1)?);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(&c) if c == close => return Ok(i + 1),
            _ => return Err(Scan::Invalid),
        }
    }
}

/// `b[i]` is the opening quote. Control characters must be escaped; the text is already UTF-8.
fn skip_string(b: &[u8], i: usize) -> Result<usize, Scan> {
    scan_string(b, i).map(|(end, _)| end)
}

/// Bytes that end a run of plain string characters: the quote, the backslash, and the
/// control characters JSON requires to be escaped.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// [`skip_string`], also telling whether the string had escapes.
fn scan_string(b: &[u8], i: usize) -> Result<(usize, bool), Scan> {
    let mut i = i + 1;
    let mut escaped = false;
    loop {
        // The common case: a run of plain characters, one table lookup each.
        while let Some(&c) = b.get(i) {
            if STOP[c as usize] {
                break;
            }
            i += 1;
        }
        match b.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                    escaped = true;
                    i += 2;
                }
                Some(b'u') => {
                    escaped = true;
                    let hex = b.get(i + 2..i + 6).ok_or(Scan::Invalid)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Scan::Invalid);
                    }
                    i += 6;
                }
                _ => return Err(Scan::Invalid),
            },
            _ => return Err(Scan::Invalid),
        }
    }
}

fn skip_number(b: &[u8], mut i: usize) -> Result<usize, Scan> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        _ => return Err(Scan::Invalid),
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return Err(Scan::Invalid);
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return Err(Scan::Invalid);
        }
        i = end;
    }
    Ok(i)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// The contents of a JSON string value without escapes (`"abc"` → `abc`); `None` for other
/// values or strings that need unescaping.
pub fn plain_str(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str) -> bool {
        object_members(text, |_| Ok(())).is_ok()
    }

    #[test]
    fn reports_members_in_order_with_exact_ranges() {
        let text = r#" {"jsonrpc":"2.0", "id" : 7,"params":{"a":[1,2.5e-3,true,null,"x\"y"]}} "#;
        let mut seen = Vec::new();
        object_members(text, |m| {
            seen.push((m.key, &text[m.value]));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("jsonrpc", r#""2.0""#),
                ("id", "7"),
                ("params", r#"{"a":[1,2.5e-3,true,null,"x\"y"]}"#)
            ]
        );
    }

    #[test]
    fn escaped_keys_are_left_to_serde_json() {
        let text = r#"{"\u0069d":1,"method":"x"}"#;
        assert_eq!(object_members(text, |_| Ok(())), Err(Scan::Unsupported));
        assert_eq!(
            object_members(r#"{"\u0069d":1,"method":}"#, |_| Ok(())),
            Err(Scan::Invalid)
        );
    }

    /// The scanner accepts exactly what serde_json accepts, on a corpus of edge cases.
    #[test]
    fn agrees_with_serde_json() {
        let cases = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":-0}"#,
            r#"{"a":-0.0e+1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":+1}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{"a":"é ☃ 𝄞"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":{"b":}}"#,
            r#"{"a":{"b" 1}}"#,
            r#"{"a":1,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":falsey}"#,
            r#"{"a":1}x"#,
            r#"{"a":1} "#,
            r#"{"a":1"#,
            r#"{"a""#,
            r#"[1]"#,
            r#""s""#,
            r#"{a:1}"#,
            r#"{"a":[[[]]],"b":{"c":{"d":[{}]}}}"#,
            r#"{"a":"\ud800"}"#,
        ];
        for case in cases {
            let serde_ok = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(case)
                .is_ok()
                || serde_json::from_str::<
                    std::collections::HashMap<String, &serde_json::value::RawValue>,
                >(case)
                .is_ok();
            assert_eq!(valid(case), serde_ok, "disagree on {case}");
        }
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        for depth in [100, 126, 127, 128, 200] {
            let text = format!(r#"{{"a":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            let serde_ok = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(valid(&text), serde_ok, "depth {depth}");
        }
    }

    #[test]
    fn plain_strings() {
        assert_eq!(plain_str(r#""echo""#), Some("echo"));
        assert_eq!(plain_str(r#""a\"b""#), None);
        assert_eq!(plain_str("12"), None);
    }
}
