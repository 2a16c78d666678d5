//! JSON-RPC 1.0 messages as ovsdb-server speaks them.
//!
//! Ids of our own requests are `u64`; the server's requests (its inactivity `echo`)
//! carry ids of any JSON shape, which are echoed back unchanged. Error replies put a
//! string, an object or (for `convert`) a one-element array in `error`, and omit
//! `result`; all three decode to [`RpcError`].

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// A decoded message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request the server expects an answer to (in practice its `echo` probe).
    Request {
        /// The id to answer with, unchanged.
        id: Value,
        /// The method name.
        method: String,
        /// The parameters.
        params: Value,
    },
    /// A notification (`update`, `update2`, `update3`, `locked`, `stolen`, `monitor_canceled`).
    Notification(Notification),
    /// The reply to one of our requests.
    Response {
        /// Our request id; `None` when the server sent an id we never issue.
        id: Option<u64>,
        /// The result, or the error the server returned.
        result: Result<Value, RpcError>,
    },
}

/// A server notification: a method and its parameters, with no reply expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// `update`, `update2`, `update3`, `locked`, `stolen` or `monitor_canceled`.
    pub method: String,
    /// The notification's parameters.
    pub params: Value,
}

/// A JSON-RPC level error reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}{}", details.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct RpcError {
    /// The error tag, e.g. `unknown method`, `unknown database`, `syntax error`.
    pub error: String,
    /// The server's human-readable explanation, when it sent one.
    pub details: Option<String>,
    /// The request fragment the server complained about, when it sent one.
    pub syntax: Option<String>,
}

impl RpcError {
    /// Whether the server rejected the method itself (drives the monitor fallback).
    pub fn is_unknown_method(&self) -> bool {
        self.error == "unknown method"
    }

    fn from_value(value: Value) -> Self {
        match value {
            Value::String(error) => Self {
                error,
                details: None,
                syntax: None,
            },
            Value::Object(mut obj) => {
                let mut text = |key: &str| match obj.remove(key) {
                    Some(Value::String(s)) => Some(s),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                };
                let error = text("error").unwrap_or_else(|| "unknown error".to_owned());
                Self {
                    error,
                    details: text("details"),
                    syntax: text("syntax"),
                }
            }
            Value::Array(mut items) if items.len() == 1 => Self::from_value(items.remove(0)),
            other => Self {
                error: other.to_string(),
                details: None,
                syntax: None,
            },
        }
    }
}

/// Why a frame is not a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not valid JSON.
    #[error("invalid JSON in message: {0}")]
    Json(String),
    /// Valid JSON, but neither a request, a notification nor a response.
    #[error("malformed JSON-RPC message: {0}")]
    Malformed(&'static str),
}

/// A message borrowed from its frame: the parts the connection only routes
/// (results, notification parameters, echo ids) stay unparsed JSON text, so the
/// caller that needs them decodes them once, into its own types.
#[derive(Debug, Clone)]
pub enum RawMessage<'a> {
    /// A request the server expects an answer to.
    Request {
        /// The id to answer with, unchanged.
        id: &'a RawValue,
        /// The method name.
        method: Cow<'a, str>,
    },
    /// A notification.
    Notification(RawNotification<'a>),
    /// The reply to one of our requests.
    Response {
        /// Our request id; `None` when the server sent an id we never issue.
        id: Option<u64>,
        /// The result text, or the error the server returned.
        result: Result<&'a RawValue, RpcError>,
    },
}

/// A notification borrowed from its frame.
#[derive(Debug, Clone)]
pub struct RawNotification<'a> {
    /// `update`, `update2`, `update3`, `locked`, `stolen` or `monitor_canceled`.
    pub method: Cow<'a, str>,
    /// The parameters, as JSON text (an empty array when the server sent none).
    pub params: &'a RawValue,
}

/// The members of any JSON-RPC message, borrowed. `result` keeps `null` apart from
/// absent.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

const EMPTY_PARAMS: &str = "[]";

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

impl<'a> RawMessage<'a> {
    /// Decodes the envelope of one framed message, leaving its payload unparsed.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let envelope: Envelope<'a> = serde_json::from_slice(frame).map_err(|e| {
            if e.is_data() {
                DecodeError::Malformed("members of the wrong type, or not an object")
            } else {
                DecodeError::Json(e.to_string())
            }
        })?;
        let Envelope {
            id,
            method,
            params,
            result,
            error,
        } = envelope;
        if let Some(method) = method {
            let params = params.unwrap_or_else(|| {
                serde_json::from_str(EMPTY_PARAMS).expect("an empty array is JSON")
            });
            return Ok(match id.filter(|id| id.get() != "null") {
                None => RawMessage::Notification(RawNotification { method, params }),
                Some(id) => RawMessage::Request { id, method },
            });
        }
        let result = if is_null(error) {
            Ok(result.ok_or(DecodeError::Malformed("reply has neither result nor error"))?)
        } else {
            let error = error.map(RawValue::get).unwrap_or("null");
            let error: Value =
                serde_json::from_str(error).map_err(|e| DecodeError::Json(e.to_string()))?;
            Err(RpcError::from_value(error))
        };
        if is_null(id) {
            return Err(DecodeError::Malformed("reply without an id"));
        }
        Ok(RawMessage::Response {
            id: id.and_then(|id| id.get().parse().ok()),
            result,
        })
    }
}

impl Message {
    /// Decodes one framed message, payloads included.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let parse = |raw: &RawValue| {
            serde_json::from_str::<Value>(raw.get()).map_err(|e| DecodeError::Json(e.to_string()))
        };
        Ok(match RawMessage::decode(frame)? {
            RawMessage::Request { id, method } => {
                let envelope: Envelope<'_> =
                    serde_json::from_slice(frame).map_err(|e| DecodeError::Json(e.to_string()))?;
                Message::Request {
                    id: parse(id)?,
                    method: method.into_owned(),
                    params: match envelope.params {
                        Some(params) => parse(params)?,
                        None => Value::Array(Vec::new()),
                    },
                }
            }
            RawMessage::Notification(n) => Message::Notification(Notification {
                method: n.method.into_owned(),
                params: parse(n.params)?,
            }),
            RawMessage::Response { id, result } => Message::Response {
                id,
                result: match result {
                    Ok(raw) => Ok(parse(raw)?),
                    Err(e) => Err(e),
                },
            },
        })
    }
}

/// Appends a request with one of our ids to `out`, serializing `params` straight
/// into it. On failure `out` is left as it was.
pub fn encode_request_into<P: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    id: u64,
    method: &str,
    params: &P,
) -> Result<(), serde_json::Error> {
    #[derive(Serialize)]
    struct Request<'a, P: ?Sized> {
        id: u64,
        method: &'a str,
        params: &'a P,
    }
    let len = out.len();
    serde_json::to_writer(&mut *out, &Request { id, method, params })
        .inspect_err(|_| out.truncate(len))
}

/// Encodes a request with one of our ids.
pub fn encode_request(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    encode_request_into(&mut out, id, method, params)
        .expect("JSON serialization of a request cannot fail");
    out
}

/// Encodes the reply to a server request (the answer to its `echo`).
pub fn encode_reply(id: &Value, result: &Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"id": id, "result": result, "error": null}))
        .expect("JSON serialization of a reply cannot fail")
}

/// Appends the reply to a server request whose id is kept as JSON text.
pub(crate) fn encode_raw_reply(out: &mut Vec<u8>, id: &RawValue, result: &str, error: &str) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.extend_from_slice(b",\"error\":");
    out.extend_from_slice(error.as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(s: &str) -> Message {
        Message::decode(s.as_bytes()).expect("decodes")
    }

    #[test]
    fn success_reply() {
        assert_eq!(
            decode(r#"{"id":9,"result":[{"count":1},{}],"error":null}"#),
            Message::Response {
                id: Some(9),
                result: Ok(json!([{"count":1},{}]))
            }
        );
    }

    #[test]
    fn string_error_without_result() {
        assert_eq!(
            decode(r#"{"id":6,"error":"unknown method"}"#),
            Message::Response {
                id: Some(6),
                result: Err(RpcError {
                    error: "unknown method".into(),
                    details: None,
                    syntax: None
                })
            }
        );
    }

    #[test]
    fn object_error() {
        let Message::Response { id, result } = decode(
            r#"{"id":5,"error":{"error":"unknown database","details":"get_schema request specifies unknown database No_Such_DB","syntax":"[\"No_Such_DB\"]"}}"#,
        ) else {
            panic!("not a response")
        };
        assert_eq!(id, Some(5));
        let err = result.unwrap_err();
        assert_eq!(err.error, "unknown database");
        assert_eq!(err.syntax.as_deref(), Some(r#"["No_Such_DB"]"#));
        assert!(err.to_string().starts_with("unknown database: get_schema"));
    }

    #[test]
    fn convert_style_array_error() {
        let Message::Response { result, .. } =
            decode(r#"{"id":3,"error":[{"error":"constraint violation","details":"x"}]}"#)
        else {
            panic!("not a response")
        };
        assert_eq!(result.unwrap_err().error, "constraint violation");
    }

    #[test]
    fn server_echo_request_and_reply() {
        let msg = decode(r#"{"id":"echo","method":"echo","params":[]}"#);
        assert_eq!(
            msg,
            Message::Request {
                id: json!("echo"),
                method: "echo".into(),
                params: json!([])
            }
        );
        let reply: Value =
            serde_json::from_slice(&encode_reply(&json!("echo"), &json!([]))).unwrap();
        assert_eq!(reply, json!({"id":"echo","result":[],"error":null}));
    }

    #[test]
    fn notification_has_null_id() {
        assert_eq!(
            decode(r#"{"id":null,"method":"update3","params":[["m","db"],"x",{}]}"#),
            Message::Notification(Notification {
                method: "update3".into(),
                params: json!([["m", "db"], "x", {}])
            })
        );
    }

    #[test]
    fn foreign_reply_id_is_kept_as_none() {
        let Message::Response { id, .. } = decode(r#"{"id":"x","result":{}}"#) else {
            panic!("not a response")
        };
        assert_eq!(id, None);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            "[1,2]",
            "{}",
            r#"{"id":1}"#,
            r#"{"method":7}"#,
            r#"{"result":1}"#,
            "{",
            "not json",
        ] {
            assert!(Message::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn null_result_is_kept_apart_from_a_missing_one() {
        assert_eq!(
            decode(r#"{"id":3,"result":null,"error":null}"#),
            Message::Response {
                id: Some(3),
                result: Ok(Value::Null)
            }
        );
        assert!(Message::decode(br#"{"id":3,"error":null}"#).is_err());
    }

    #[test]
    fn request_encoding() {
        let bytes = encode_request(42, "transact", &json!(["OVN_Northbound"]));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"id":42,"method":"transact","params":["OVN_Northbound"]})
        );
    }
}
