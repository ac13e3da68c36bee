//! JSON-RPC 2.0 envelopes for the forwarding path.
//!
//! Corral forwards MCP traffic as raw JSON: it parses only the envelope (`id`, `method`) and
//! leaves `params`, `result` and `error` as borrowed [`RawValue`]s, so fields that Corral does not
//! model (vendor extensions, `execution`, `task`, future content types) pass through byte for
//! byte. Outgoing messages are assembled by concatenation from raw parts for the same reason.

pub mod scan;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Standard and MCP-specific JSON-RPC error codes used by Corral.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The upstream server is not available (crashed, failed, cannot start).
    pub const SERVER_UNAVAILABLE: i64 = -32000;
    /// The per-call timeout (`limits.timeout`) fired.
    pub const REQUEST_TIMEOUT: i64 = -32001;
    /// Too many requests in flight for one server.
    pub const BUSY: i64 = -32002;
    /// The request was cancelled by the client.
    pub const REQUEST_CANCELLED: i64 = -32800;
    /// The requested protocol revision is not supported (2026-07-28).
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// The stateless protocol revision: no `initialize`, an envelope in every request's `_meta`.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// One incoming JSON-RPC message with the payload left unparsed.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(default)]
    pub jsonrpc: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_id")]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

/// Keeps `"id": null` distinguishable from an absent id: both become `None` in serde's
/// `Option`, but a request with a null id is still a request (the JSON-RPC spec discourages it).
fn raw_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What an [`Envelope`] is, by the JSON-RPC rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

impl<'a> Envelope<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn kind(&self) -> Kind {
        if self.jsonrpc != Some("2.0") {
            return Kind::Invalid;
        }
        match (
            &self.method,
            self.id,
            self.result.is_some() || self.error.is_some(),
        ) {
            (Some(_), Some(_), false) => Kind::Request,
            (Some(_), None, false) => Kind::Notification,
            (None, Some(_), true) => Kind::Response,
            _ => Kind::Invalid,
        }
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }
}

/// A response as received from an upstream: exactly one of result/error, kept raw.
#[derive(Debug)]
pub enum Reply {
    Result(RawSlice),
    Error(RawSlice),
}

impl Reply {
    /// Rebuilds the reply as a response to `id`.
    pub fn to_response(&self, id: &RawValue) -> Vec<u8> {
        match self {
            Reply::Result(r) => response_raw(id, "result", r.get()),
            Reply::Error(e) => response_raw(id, "error", e.get()),
        }
    }
}

/// A JSON value inside a line read from a server. The slice keeps the whole line instead of
/// copying the value out of it: a 1 MiB result is copied once on its way through, not twice.
#[derive(Debug)]
pub struct RawSlice {
    line: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl RawSlice {
    /// Where `raw` sits inside `line`; `None` if it does not borrow from `line`.
    pub fn range_in(line: &[u8], raw: &RawValue) -> Option<std::ops::Range<usize>> {
        let start = (raw.get().as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
        let end = start + raw.get().len();
        (end <= line.len()).then_some(start..end)
    }

    /// # Safety
    /// `range` must be the byte range of a `&str` within `line` (as returned by [`Self::range_in`]
    /// for a `RawValue` parsed from `line`), so that it is valid UTF-8.
    pub unsafe fn new(line: Vec<u8>, range: std::ops::Range<usize>) -> RawSlice {
        RawSlice { line, range }
    }

    pub fn from_string(text: String) -> RawSlice {
        let len = text.len();
        RawSlice {
            line: text.into_bytes(),
            range: 0..len,
        }
    }

    pub fn get(&self) -> &str {
        let bytes = &self.line[self.range.clone()];
        // SAFETY: `from_string` covers a whole `String`, and `new`'s contract requires the range
        // of a `&str` within the line: valid UTF-8 either way. Checking again would cost a pass
        // over up to megabytes per reply.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// `{"jsonrpc":"2.0","id":<id>,"<field>":<raw>}` without re-serialising `raw`.
pub fn response_raw(id: &RawValue, field: &str, raw: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + id.get().len() + field.len() + 32);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(raw.as_bytes());
    out.push(b'}');
    out
}

/// A successful response with a typed result.
pub fn result(id: &RawValue, value: &serde_json::Value) -> Vec<u8> {
    response_raw(id, "result", &value.to_string())
}

/// An error response. `id` is `null` when the request could not be parsed far enough to know it.
pub fn error(id: Option<&RawValue>, code: i64, message: &str) -> Vec<u8> {
    error_with_data(id, code, message, None)
}

pub fn error_with_data(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut body = serde_json::json!({ "code": code, "message": message });
    if let Some(data) = data {
        body["data"] = data;
    }
    response_raw(id.unwrap_or(null_id()), "error", &body.to_string())
}

/// The JSON error object alone, for building a [`Reply::Error`].
pub fn error_object(code: i64, message: &str) -> Box<RawValue> {
    let text = serde_json::json!({ "code": code, "message": message }).to_string();
    // A serialised `Value` is always valid JSON, so this cannot fail.
    RawValue::from_string(text).expect("serde_json output is valid JSON")
}

/// `{"jsonrpc":"2.0","method":<m>,"params":<raw>}`
pub fn notification_raw(method: &str, params: Option<&str>) -> Vec<u8> {
    message_raw(None, method, params)
}

/// Appends `s` as a JSON string. MCP method names are plain ASCII (`tools/call`), which needs no
/// escaping; anything else goes through serde_json.
fn push_quoted(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_-.$".contains(&b))
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
    }
}

/// `{"jsonrpc":"2.0","id":<id>,"method":<m>,"params":<raw>}`
pub fn request_raw(id: &str, method: &str, params: Option<&str>) -> Vec<u8> {
    message_raw(Some(id), method, params)
}

/// A request (with an id) or a notification, params spliced in raw.
fn message_raw(id: Option<&str>, method: &str, params: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + params.map_or(0, str::len));
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",");
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(id.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"method\":");
    push_quoted(&mut out, method);
    if let Some(p) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(p.as_bytes());
    }
    out.push(b'}');
    out
}

/// The literal `null`, for error responses whose request id is unknown.
pub fn null_id() -> &'static RawValue {
    // `null` is valid JSON; `from_borrowed` only checks nothing and wraps the str.
    let raw: &'static RawValue = serde_json::from_str("null").expect("`null` is valid JSON");
    raw
}

/// Parses a raw JSON value into an owned boxed [`RawValue`].
pub fn owned(raw: &RawValue) -> Box<RawValue> {
    raw.to_owned()
}

/// Builds an owned `RawValue` from a serialisable value.
pub fn to_raw<T: serde::Serialize>(value: &T) -> Box<RawValue> {
    // Serialising a `serde_json::Value` or derived struct into a string cannot fail.
    serde_json::value::to_raw_value(value).expect("serialisable value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let req = br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#;
        assert_eq!(Envelope::parse(req).unwrap().kind(), Kind::Request);
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(Envelope::parse(note).unwrap().kind(), Kind::Notification);
        let resp = br#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        assert_eq!(Envelope::parse(resp).unwrap().kind(), Kind::Response);
        let null_id = br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#;
        assert_eq!(Envelope::parse(null_id).unwrap().kind(), Kind::Request);
        let wrong = br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#;
        assert_eq!(Envelope::parse(wrong).unwrap().kind(), Kind::Invalid);
    }

    #[test]
    fn rebuilds_response_without_touching_payload() {
        let line = br#"{"jsonrpc":"2.0","id":3,"result":{"x-vendor":1,"content":[]}}"#;
        let env = Envelope::parse(line).unwrap();
        let reply = Reply::Result(RawSlice::from_string(env.result.unwrap().get().to_string()));
        let id: Box<RawValue> = RawValue::from_string("\"req-α\"".into()).unwrap();
        let out = String::from_utf8(reply.to_response(&id)).unwrap();
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":"req-α","result":{"x-vendor":1,"content":[]}}"#
        );
    }
}
