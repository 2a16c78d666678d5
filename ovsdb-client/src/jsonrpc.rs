//! JSON-RPC 1.0 messages as ovsdb-server speaks them.
//!
//! Ids of our own requests are `u64`; the server's requests (its inactivity `echo`)
//! carry ids of any JSON shape, which are echoed back unchanged. Error replies put a
//! string, an object or (for `convert`) a one-element array in `error`, and omit
//! `result`; all three decode to [`RpcError`].

use serde::Serialize;
use serde_json::Value;

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

/// The members of any JSON-RPC message; decoding into it avoids building a map
/// for the envelope. `result` keeps `null` apart from absent.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    #[serde(default)]
    error: Value,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

impl Message {
    /// Decodes one framed message.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Envelope = serde_json::from_slice(frame).map_err(|e| {
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
            let params = params.unwrap_or(Value::Array(Vec::new()));
            return Ok(if id.is_null() {
                Message::Notification(Notification { method, params })
            } else {
                Message::Request { id, method, params }
            });
        }
        let result = if error.is_null() {
            Ok(result.ok_or(DecodeError::Malformed("reply has neither result nor error"))?)
        } else {
            Err(RpcError::from_value(error))
        };
        if id.is_null() {
            return Err(DecodeError::Malformed("reply without an id"));
        }
        Ok(Message::Response {
            id: id.as_u64(),
            result,
        })
    }
}

/// Encodes a request with one of our ids.
pub fn encode_request(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    #[derive(Serialize)]
    struct Request<'a> {
        id: u64,
        method: &'a str,
        params: &'a Value,
    }
    // Writing a `Value` into a `Vec` has no failure case.
    serde_json::to_writer(&mut out, &Request { id, method, params })
        .expect("JSON serialization of a request cannot fail");
    out
}

/// Encodes the reply to a server request (the answer to its `echo`).
pub fn encode_reply(id: &Value, result: &Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"id": id, "result": result, "error": null}))
        .expect("JSON serialization of a reply cannot fail")
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
