//! Feeds arbitrary bytes to the stream framer, whole and cut into chunks whose
//! sizes come from the input, then decodes every frame as a JSON-RPC message.
//! Nothing may panic, chunking must not change the frames or the error, and every
//! frame must be one bracketed value within the size limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ovsdb_client::protocol::framing::{FrameError, JsonFramer};
use ovsdb_client::protocol::jsonrpc::Message;

const LIMIT: usize = 4096;

/// Frames `input` fed in chunks of the given sizes (cycled); stops at the first error.
fn frames(input: &[u8], chunk_sizes: &[u8]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut framer = JsonFramer::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let size = sizes.next().map_or(rest.len(), |&s| usize::from(s).max(1)).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(frame)) => out.push(frame.to_vec()),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let (sizes, input) = match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n % 8).min(rest.len())),
        None => return,
    };
    let (whole, whole_err) = frames(input, &[]);
    let (chunked, chunked_err) = frames(input, sizes);
    for frame in &whole {
        assert!(frame.len() <= LIMIT);
        assert!(matches!(frame.first(), Some(b'{' | b'[')));
        assert!(matches!(frame.last(), Some(b'}' | b']')));
        let _ = Message::decode(frame);
    }
    // An oversized message may be reported before or after a chunk boundary, but
    // the frames before the first error are the same either way.
    let common = whole.len().min(chunked.len());
    assert_eq!(whole[..common], chunked[..common]);
    if whole_err.is_none() && chunked_err.is_none() {
        assert_eq!(whole, chunked);
    }
    if !matches!(whole_err, Some(FrameError::TooLarge { .. }))
        && !matches!(chunked_err, Some(FrameError::TooLarge { .. }))
    {
        assert_eq!(whole, chunked);
        assert_eq!(whole_err, chunked_err);
    }
});
