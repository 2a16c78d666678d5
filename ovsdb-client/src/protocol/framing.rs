//! Splits an OVSDB byte stream into JSON values.
//!
//! OVSDB sends JSON-RPC messages back to back with no delimiter, and one read can
//! hold several messages or a fraction of one. [`JsonFramer`] scans incrementally
//! (it never rescans bytes it has already seen), tracks string and escape state so
//! braces inside strings do not count, and refuses a message larger than its limit
//! instead of buffering without bound.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// Default largest message accepted: initial monitor replies of a big NB database
/// reach hundreds of megabytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Why the byte stream cannot be split into JSON values.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// One message grew past the configured limit; the stream cannot be resynchronised.
    #[error("JSON-RPC message exceeds the maximum size of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// Between messages the stream held something other than whitespace, `{` or `[`.
    #[error("unexpected byte 0x{byte:02x} between JSON-RPC messages")]
    UnexpectedByte {
        /// The offending byte.
        byte: u8,
    },
}

/// Incremental splitter of concatenated JSON objects and arrays.
///
/// It only finds message boundaries; `serde_json` validates the content.
#[derive(Debug, Clone)]
pub struct JsonFramer {
    max_size: usize,
    /// Bytes of the current message already scanned (from the start of the buffer).
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Default for JsonFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl JsonFramer {
    /// A framer that refuses messages longer than `max_size` bytes.
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size: max_size.max(2),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// The configured size limit in bytes.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Removes and returns the next complete JSON value from `buf`, or `None` when
    /// more bytes are needed. Leading whitespace is discarded.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if self.depth == 0 {
            let skip = buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(buf.len());
            buf.advance(skip);
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if first != b'{' && first != b'[' {
                return Err(FrameError::UnexpectedByte { byte: first });
            }
            self.scanned = 0;
        }
        let mut end = None;
        for (offset, &byte) in buf[self.scanned..].iter().enumerate() {
            let pos = self.scanned + offset;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    // A value starts with `{` or `[`, so depth is at least 1 here.
                    self.depth -= 1;
                    if self.depth == 0 {
                        end = Some(pos + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(len) if len > self.max_size => Err(FrameError::TooLarge {
                limit: self.max_size,
            }),
            Some(len) => {
                self.scanned = 0;
                Ok(Some(buf.split_to(len)))
            }
            None if buf.len() > self.max_size => Err(FrameError::TooLarge {
                limit: self.max_size,
            }),
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }
}

impl Decoder for JsonFramer {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        self.next_frame(src)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(framer: &mut JsonFramer, chunks: &[&[u8]]) -> Result<Vec<String>, FrameError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = framer.next_frame(&mut buf)? {
                out.push(String::from_utf8(frame.to_vec()).expect("utf8"));
            }
        }
        Ok(out)
    }

    const STREAM: &str = concat!(
        r#"{"id":1,"result":[{"uuid":["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]}],"error":null}"#,
        "\n",
        r#"{"id":null,"method":"update3","params":[["m","db"],"x",{"T":{"u":{"modify":{"name":"a\"}b{\\"}}}}]}"#,
        "  ",
        r#"{"id":"echo","method":"echo","params":[]}"#,
        r#"[1,"]",{"k":"\\\\"}]"#,
    );

    fn expected() -> Vec<String> {
        let mut out = Vec::new();
        let values = serde_json::Deserializer::from_str(STREAM).into_iter::<serde_json::Value>();
        for value in values {
            out.push(value.expect("valid sample").to_string());
        }
        out
    }

    fn normalise(frames: Vec<String>) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(f)
                    .expect("frame is one JSON value")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn many_messages_in_one_read() {
        let frames = split_all(&mut JsonFramer::default(), &[STREAM.as_bytes()]).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(normalise(frames), expected());
    }

    #[test]
    fn every_split_position_gives_the_same_messages() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let mut framer = JsonFramer::default();
            let frames = split_all(&mut framer, &[&bytes[..cut], &bytes[cut..]]).unwrap();
            assert_eq!(normalise(frames), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn every_pair_of_split_positions_gives_the_same_messages() {
        let bytes = STREAM.as_bytes();
        for a in (0..bytes.len()).step_by(3) {
            for b in a..bytes.len() {
                let mut framer = JsonFramer::default();
                let frames =
                    split_all(&mut framer, &[&bytes[..a], &bytes[a..b], &bytes[b..]]).unwrap();
                assert_eq!(normalise(frames), expected(), "cuts at {a} and {b}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        let frames = split_all(&mut JsonFramer::default(), &chunks).unwrap();
        assert_eq!(normalise(frames), expected());
    }

    #[test]
    fn escaped_quote_and_backslash_inside_strings() {
        let input = r#"{"a":"\""}{"b":"\\"}{"c":"\\\"}"}"#;
        let frames = split_all(&mut JsonFramer::default(), &[input.as_bytes()]).unwrap();
        assert_eq!(
            frames,
            vec![r#"{"a":"\""}"#, r#"{"b":"\\"}"#, r#"{"c":"\\\"}"}"#]
        );
    }

    #[test]
    fn braces_inside_strings_do_not_count() {
        let input = r#"{"a":"}}}]]"}{"b":"{{{[["}"#;
        let frames = split_all(&mut JsonFramer::default(), &[input.as_bytes()]).unwrap();
        assert_eq!(frames, vec![r#"{"a":"}}}]]"}"#, r#"{"b":"{{{[["}"#]);
    }

    #[test]
    fn escape_split_across_reads() {
        let input = br#"{"a":"x\"}"}"#;
        let backslash = input.iter().position(|&b| b == b'\\').unwrap();
        let frames = split_all(
            &mut JsonFramer::default(),
            &[&input[..=backslash], &input[backslash + 1..]],
        )
        .unwrap();
        assert_eq!(frames, vec![r#"{"a":"x\"}"}"#]);
    }

    #[test]
    fn incomplete_message_waits_for_more() {
        let mut framer = JsonFramer::default();
        let mut buf = BytesMut::from(&br#"{"id":1,"res"#[..]);
        assert_eq!(framer.next_frame(&mut buf).unwrap(), None);
        assert_eq!(
            buf.len(),
            12,
            "nothing is consumed before the message is whole"
        );
    }

    #[test]
    fn whitespace_only_yields_nothing() {
        let mut buf = BytesMut::from(&b" \r\n\t "[..]);
        assert_eq!(JsonFramer::default().next_frame(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn message_at_the_limit_passes_and_one_byte_more_fails() {
        let msg = br#"{"a":"0123456789"}"#;
        let mut buf = BytesMut::from(&msg[..]);
        let frame = JsonFramer::new(msg.len()).next_frame(&mut buf).unwrap();
        assert_eq!(frame.as_deref(), Some(&msg[..]));

        let mut buf = BytesMut::from(&msg[..]);
        let err = JsonFramer::new(msg.len() - 1)
            .next_frame(&mut buf)
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                limit: msg.len() - 1
            }
        );
    }

    #[test]
    fn oversized_incomplete_message_fails_before_it_ends() {
        let mut framer = JsonFramer::new(16);
        let mut buf = BytesMut::from(&br#"{"a":"0123456789abcdef"#[..]);
        assert_eq!(
            framer.next_frame(&mut buf).unwrap_err(),
            FrameError::TooLarge { limit: 16 }
        );
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        let mut buf = BytesMut::from(&br#"{"a":1} 42"#[..]);
        let mut framer = JsonFramer::default();
        assert!(framer.next_frame(&mut buf).unwrap().is_some());
        assert_eq!(
            framer.next_frame(&mut buf).unwrap_err(),
            FrameError::UnexpectedByte { byte: b'4' }
        );
    }

    #[test]
    fn stray_close_between_messages_is_an_error() {
        let mut buf = BytesMut::from(&b"[]]"[..]);
        let mut framer = JsonFramer::default();
        assert!(framer.next_frame(&mut buf).unwrap().is_some());
        assert_eq!(
            framer.next_frame(&mut buf).unwrap_err(),
            FrameError::UnexpectedByte { byte: b']' }
        );
    }

    #[test]
    fn non_ascii_strings_pass_through() {
        let input = "{\"name\":\"p\u{f6}rt-\u{1f680}\"}{}";
        let frames = split_all(&mut JsonFramer::default(), &[input.as_bytes()]).unwrap();
        assert_eq!(frames, vec!["{\"name\":\"p\u{f6}rt-\u{1f680}\"}", "{}"]);
    }
}
