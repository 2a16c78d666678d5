//! One JSON-RPC connection to one server.
//!
//! A reader task splits the stream into messages, answers the server's `echo`,
//! completes pending calls by id and hands notifications to a handler *inline*, in
//! arrival order. Because ovsdb-server sends a monitor update before the reply to
//! the `transact` that caused it, a caller whose call completes already sees its
//! effect in anything the handler maintains (the cache).
//!
//! The hot path allocates little: a caller serializes its request straight into the
//! shared outgoing buffer (no JSON tree, no per-message `Vec`), and the writer task
//! takes the whole buffer and writes it in one go per wakeup, so many calls can be
//! in flight at once and a burst costs few system calls. The reader only parses
//! each message's envelope; a result reaches its caller as unparsed JSON text and a
//! notification reaches the handler borrowed from the read buffer.
//!
//! The connection never reconnects: when it ends, every pending call fails with
//! [`CallError::ConnectionLost`] and [`Connection::closed`] resolves. Reconnecting
//! is the session's job.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, trace, warn};

use crate::protocol::framing::{FrameError, JsonFramer};
use crate::protocol::jsonrpc::{self, RawMessage, RawNotification, RpcError};
use crate::runtime::halves::{self, ReadHalf, WriteHalf};
use crate::runtime::transport::{Remote, Stream};

/// Receives every notification, in arrival order, on the reader task. It must not
/// block. Returning an error closes the connection (e.g. the cache became
/// inconsistent and must be rebuilt from a fresh monitor).
pub type NotificationHandler = Arc<dyn Fn(RawNotification<'_>) -> Result<(), String> + Send + Sync>;

/// Why a call did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The server answered with a JSON-RPC error.
    #[error("server error: {0}")]
    Rpc(#[from] RpcError),
    /// The request's parameters could not be serialized, or the reply's result
    /// could not be decoded; nothing was sent in the first case.
    #[error("JSON: {0}")]
    Json(String),
    /// The connection ended before the reply arrived. When `sent` is true the
    /// server may have received and executed the request.
    #[error("connection lost ({reason}); request {}", if *sent { "may have been executed" } else { "was not sent" })]
    ConnectionLost {
        /// Whether the request had been handed to the socket writer.
        sent: bool,
        /// Why the connection ended.
        reason: CloseReason,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server closed the stream.
    Eof,
    /// A read or write failed.
    Io(String),
    /// The byte stream could not be split into messages.
    Frame(FrameError),
    /// A message was not valid JSON-RPC.
    Decode(String),
    /// Our own echo probe went unanswered for a whole probe interval.
    ProbeTimeout(Duration),
    /// The notification handler refused an update.
    Handler(String),
    /// The client closed it (shutdown, leadership moved, ...).
    Requested(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Eof => f.write_str("server closed the connection"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Frame(e) => write!(f, "{e}"),
            CloseReason::Decode(e) => write!(f, "undecodable message: {e}"),
            CloseReason::ProbeTimeout(d) => {
                write!(
                    f,
                    "no reply to inactivity probe within {} ms",
                    d.as_millis()
                )
            }
            CloseReason::Handler(e) => write!(f, "update rejected: {e}"),
            CloseReason::Requested(why) => write!(f, "closed by client: {why}"),
        }
    }
}

type Reply = oneshot::Sender<Result<Box<RawValue>, CallError>>;

struct Pending {
    calls: HashMap<u64, Reply>,
    closed: Option<CloseReason>,
}

struct Shared {
    pending: Mutex<Pending>,
    cancel: CancellationToken,
    next_id: AtomicU64,
    /// Encoded messages not yet taken by the writer task.
    outbox: Mutex<Vec<u8>>,
    /// Wakes the writer task when the outbox gains bytes.
    wake_writer: Notify,
}

impl Shared {
    /// Appends one message to the outbox with `encode` and wakes the writer.
    fn send<E>(&self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let was_empty = {
            let mut outbox = self.outbox.lock();
            let was_empty = outbox.is_empty();
            encode(&mut outbox)?;
            was_empty
        };
        if was_empty {
            self.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Ends the connection once: records the reason and fails every pending call.
    fn close(&self, reason: CloseReason) {
        let calls = {
            let mut pending = self.pending.lock();
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(reason.clone());
            std::mem::take(&mut pending.calls)
        };
        self.cancel.cancel();
        debug!(%reason, failed_calls = calls.len(), "connection closed");
        for (_, reply) in calls {
            let _ = reply.send(Err(CallError::ConnectionLost {
                sent: true,
                reason: reason.clone(),
            }));
        }
    }
}

/// Tunables of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Send an `echo` after this long without receiving anything, and close the
    /// connection if nothing arrives for another interval. `None` disables it.
    pub probe_interval: Option<Duration>,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// Batching of replies under a deep pipeline; `None` reads as soon as bytes arrive.
    pub coalescing: Option<Coalescing>,
}

/// Reply batching: while at least `min_in_flight` calls wait for replies, the reader
/// pauses `linger` after each read, so one wakeup (and one write of the requests the
/// woken callers send next) carries several replies instead of one.
///
/// ovsdb-server answers one request per turn of its main loop, so a client that reads
/// every reply as it arrives pays a wakeup, a read and a write per transaction. With
/// that many calls queued at the server, each already waits for that many server
/// turns, so a pause of a millisecond adds little latency while it divides the
/// client's per-transaction system calls and wakeups by the replies that arrive
/// meanwhile. Below the threshold nothing is delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// Pending calls from which the reader pauses.
    pub min_in_flight: usize,
    /// How long it pauses (tokio timers round this up to whole milliseconds).
    pub linger: Duration,
}

impl Default for Coalescing {
    fn default() -> Self {
        Self {
            min_in_flight: 64,
            linger: Duration::from_millis(1),
        }
    }
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            probe_interval: Some(Duration::from_secs(5)),
            max_message_size: crate::protocol::framing::DEFAULT_MAX_MESSAGE_SIZE,
            coalescing: Some(Coalescing::default()),
        }
    }
}

/// An open JSON-RPC connection. Dropping it closes it.
pub struct Connection {
    remote: Remote,
    shared: Arc<Shared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .finish()
    }
}

impl Connection {
    /// Starts the reader and writer tasks on an open stream.
    pub fn start(
        remote: Remote,
        stream: Stream,
        options: ConnectionOptions,
        handler: NotificationHandler,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                calls: HashMap::new(),
                closed: None,
            }),
            cancel: CancellationToken::new(),
            next_id: AtomicU64::new(1),
            outbox: Mutex::new(Vec::with_capacity(OUTBOX_CAPACITY)),
            wake_writer: Notify::new(),
        });
        let (read, write) = halves::split(stream)?;
        let span = tracing::debug_span!("ovsdb_connection", remote = %remote);
        tokio::spawn(write_loop(write, shared.clone()).instrument(span.clone()));
        tokio::spawn(read_loop(read, options, handler, shared.clone()).instrument(span));
        Ok(Self { remote, shared })
    }

    /// The server this connection talks to.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Sends a request and waits for its reply. Many calls may be in flight at once.
    pub async fn call<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<Value, CallError> {
        let raw = self.call_raw(method, params).await?;
        serde_json::from_str(raw.get()).map_err(|e| CallError::Json(e.to_string()))
    }

    /// Like [`Connection::call`], but returns the result as unparsed JSON text, for
    /// callers that decode it straight into their own types.
    pub async fn call_raw<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<Box<RawValue>, CallError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock();
            if let Some(reason) = &pending.closed {
                return Err(CallError::ConnectionLost {
                    sent: false,
                    reason: reason.clone(),
                });
            }
            pending.calls.insert(id, reply);
        }
        trace!(id, method, "request");
        let encoded = self
            .shared
            .send(|out| jsonrpc::encode_request_into(out, id, method, params));
        if let Err(e) = encoded {
            self.shared.pending.lock().calls.remove(&id);
            return Err(CallError::Json(e.to_string()));
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(CallError::ConnectionLost {
                sent: true,
                reason: self
                    .close_reason()
                    .unwrap_or_else(|| CloseReason::Requested("reply dropped".into())),
            }),
        }
    }

    /// Closes the connection; pending calls fail with [`CallError::ConnectionLost`].
    pub fn close(&self, why: impl Into<String>) {
        self.shared.close(CloseReason::Requested(why.into()));
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.pending.lock().closed.clone()
    }

    /// Resolves when the connection ends, with the reason.
    pub async fn closed(&self) -> CloseReason {
        self.shared.cancel.cancelled().await;
        self.close_reason()
            .unwrap_or_else(|| CloseReason::Requested("cancelled".into()))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared
            .close(CloseReason::Requested("connection dropped".into()));
    }
}

/// Initial and retained capacity of the outgoing buffers.
const OUTBOX_CAPACITY: usize = 64 * 1024;

async fn write_loop(mut write: WriteHalf, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(OUTBOX_CAPACITY);
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            _ = shared.wake_writer.notified() => {}
        }
        // Everything queued since the last wakeup goes out in one write.
        std::mem::swap(&mut *shared.outbox.lock(), &mut batch);
        if batch.is_empty() {
            continue;
        }
        let written = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            written = write.write_all(&batch) => written,
        };
        if let Err(e) = written {
            shared.close(CloseReason::Io(e.to_string()));
            break;
        }
        batch.clear();
        if batch.capacity() > 16 * OUTBOX_CAPACITY {
            batch.shrink_to(OUTBOX_CAPACITY);
        }
    }
    let _ = write.shutdown().await;
}

async fn read_loop(
    mut read: ReadHalf,
    options: ConnectionOptions,
    handler: NotificationHandler,
    shared: Arc<Shared>,
) {
    let mut framer = JsonFramer::new(options.max_message_size);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut probe_outstanding = false;
    let reason = 'read: loop {
        let read_once = read.read_buf(&mut buf);
        let outcome = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            outcome = maybe_timeout(options.probe_interval, read_once) => outcome,
        };
        match outcome {
            None => {
                let interval = options.probe_interval.unwrap_or_default();
                if probe_outstanding {
                    break CloseReason::ProbeTimeout(interval);
                }
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                debug!(id, "idle; sending inactivity probe");
                let probe =
                    shared.send(|out| jsonrpc::encode_request_into(out, id, "echo", &[(); 0]));
                if let Err(e) = probe {
                    break CloseReason::Io(e.to_string());
                }
                probe_outstanding = true;
                continue;
            }
            Some(Ok(0)) => break CloseReason::Eof,
            Some(Ok(_)) => probe_outstanding = false,
            Some(Err(e)) => break CloseReason::Io(e.to_string()),
        }
        loop {
            let frame = match framer.next_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'read CloseReason::Frame(e),
            };
            let message = match RawMessage::decode(&frame) {
                Ok(message) => message,
                Err(e) => break 'read CloseReason::Decode(e.to_string()),
            };
            if let Err(reason) = dispatch(message, &handler, &shared) {
                break 'read reason;
            }
        }
        if let Some(coalescing) = options.coalescing
            && shared.pending.lock().calls.len() >= coalescing.min_in_flight
        {
            read.pause();
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => return,
                _ = tokio::time::sleep(coalescing.linger) => {}
            }
        }
    };
    if !matches!(reason, CloseReason::Eof) {
        warn!(%reason, "closing connection");
    }
    shared.close(reason);
}

async fn maybe_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    fut: F,
) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn dispatch(
    message: RawMessage<'_>,
    handler: &NotificationHandler,
    shared: &Shared,
) -> Result<(), CloseReason> {
    match message {
        RawMessage::Response {
            id: Some(id),
            result,
        } => {
            let reply = shared.pending.lock().calls.remove(&id);
            match reply {
                Some(reply) => {
                    let _ = reply.send(result.map(RawValue::to_owned).map_err(CallError::Rpc));
                }
                None => trace!(id, "reply to a call nobody waits for (probe or abandoned)"),
            }
        }
        RawMessage::Response { id: None, .. } => debug!("ignoring reply with an id we never issue"),
        RawMessage::Request { id, method } if method == "echo" => {
            trace!("answering server echo");
            let _ = shared.send(|out| {
                jsonrpc::encode_raw_reply(out, id, "[]", "null");
                Ok::<_, ()>(())
            });
        }
        RawMessage::Request { id, method } => {
            debug!(%method, "server request we do not implement");
            let _ = shared.send(|out| {
                jsonrpc::encode_raw_reply(out, id, "null", "\"unknown method\"");
                Ok::<_, ()>(())
            });
        }
        RawMessage::Notification(notification) => {
            trace!(method = %notification.method, "notification");
            handler(notification).map_err(CloseReason::Handler)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    /// A connection over a socketpair-like unix stream, plus the server end.
    async fn pair(
        options: ConnectionOptions,
        handler: NotificationHandler,
    ) -> (Connection, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let conn =
            Connection::start(Remote::Unix(path), Stream::Unix(client), options, handler).unwrap();
        (conn, server, dir)
    }

    fn no_notifications() -> NotificationHandler {
        Arc::new(|_| Ok(()))
    }

    /// Reads requests one JSON value at a time from the fake server's side.
    async fn read_values(server: &mut UnixStream, n: usize) -> Vec<Value> {
        let mut framer = JsonFramer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        while out.len() < n {
            while let Some(frame) = framer.next_frame(&mut buf).unwrap() {
                out.push(serde_json::from_slice(&frame).unwrap());
            }
            if out.len() >= n {
                break;
            }
            assert!(
                server.read_buf(&mut buf).await.unwrap() > 0,
                "client hung up"
            );
        }
        out
    }

    #[tokio::test]
    async fn replies_out_of_order_in_one_write_reach_their_callers() {
        let (conn, mut server, _dir) = pair(ConnectionOptions::default(), no_notifications()).await;
        let conn = Arc::new(conn);
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.call("echo", &json!([i])).await })
            })
            .collect();
        let requests = read_values(&mut server, 3).await;
        let mut batch = String::new();
        for req in requests.iter().rev() {
            batch.push_str(
                &json!({"id": req["id"], "result": req["params"], "error": null}).to_string(),
            );
        }
        server.write_all(batch.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        for call in calls {
            got.push(call.await.unwrap().unwrap());
        }
        assert_eq!(got, vec![json!([0]), json!([1]), json!([2])]);
    }

    /// Makes `calls` echo calls, answers them in `order` (call numbers), `gap` apart, and
    /// returns how long after the first answer each caller got its own, in `order`.
    async fn answer_spaced(
        conn: Connection,
        server: &mut UnixStream,
        calls: usize,
        order: &[usize],
        gap: Duration,
    ) -> Vec<Duration> {
        let conn = Arc::new(conn);
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..calls {
            let (conn, done) = (conn.clone(), done.clone());
            tokio::spawn(async move {
                conn.call("echo", &json!([i])).await.unwrap();
                let _ = done.send((i, tokio::time::Instant::now()));
            });
        }
        let requests = read_values(server, calls).await;
        let by_param = |i: usize| requests.iter().find(|r| r["params"] == json!([i])).unwrap();
        let start = tokio::time::Instant::now();
        for &i in order {
            let req = by_param(i);
            let reply = json!({"id": req["id"], "result": [], "error": null}).to_string();
            server.write_all(reply.as_bytes()).await.unwrap();
            tokio::time::sleep(gap).await;
        }
        let mut at = vec![Duration::ZERO; order.len()];
        for _ in order {
            let (i, when) = finished.recv().await.unwrap();
            at[order.iter().position(|&o| o == i).unwrap()] = when - start;
        }
        at
    }

    #[tokio::test]
    async fn deep_pipelines_get_their_replies_in_batches() {
        let linger = Duration::from_millis(300);
        let options = ConnectionOptions {
            coalescing: Some(Coalescing {
                min_in_flight: 2,
                linger,
            }),
            ..ConnectionOptions::default()
        };
        let (conn, mut server, _dir) = pair(options, no_notifications()).await;
        // Three calls wait; after the first reply two still do, so the reader pauses
        // and the second reply, sent 20 ms later, waits out the pause. With one call
        // left the third is read at once.
        let at = answer_spaced(conn, &mut server, 3, &[0, 1, 2], Duration::from_millis(20)).await;
        assert!(at[0] < linger / 2, "first reply at {:?}", at[0]);
        assert!(
            at[1] >= linger,
            "second reply at {:?}, before the pause ended",
            at[1]
        );
        assert!(at[2] >= linger, "third reply at {:?}", at[2]);
    }

    #[tokio::test]
    async fn shallow_pipelines_are_never_delayed() {
        let options = ConnectionOptions {
            coalescing: Some(Coalescing {
                min_in_flight: 3,
                linger: Duration::from_secs(5),
            }),
            ..ConnectionOptions::default()
        };
        let (conn, mut server, _dir) = pair(options, no_notifications()).await;
        let at = answer_spaced(conn, &mut server, 3, &[0, 1, 2], Duration::from_millis(20)).await;
        assert!(
            at.iter().all(|t| *t < Duration::from_secs(2)),
            "replies at {at:?}"
        );
    }

    #[tokio::test]
    async fn answers_server_echo_with_the_same_id() {
        let (_conn, mut server, _dir) =
            pair(ConnectionOptions::default(), no_notifications()).await;
        server
            .write_all(br#"{"id":"echo","method":"echo","params":[]}"#)
            .await
            .unwrap();
        let reply = read_values(&mut server, 1).await;
        assert_eq!(reply[0], json!({"id":"echo","result":[],"error":null}));
    }

    #[tokio::test]
    async fn notifications_are_handled_before_the_following_reply() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler: NotificationHandler = Arc::new(move |n| {
            log.lock().push(n.method.into_owned());
            Ok(())
        });
        let (conn, mut server, _dir) = pair(ConnectionOptions::default(), handler).await;
        let conn = Arc::new(conn);
        let task = {
            let conn = conn.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                conn.call("transact", &json!([])).await.unwrap();
                seen.lock().clone()
            })
        };
        let req = read_values(&mut server, 1).await;
        let batch = format!(
            r#"{{"id":null,"method":"update3","params":[]}}{{"id":{},"result":[],"error":null}}"#,
            req[0]["id"]
        );
        server.write_all(batch.as_bytes()).await.unwrap();
        assert_eq!(task.await.unwrap(), vec!["update3".to_owned()]);
    }

    #[tokio::test]
    async fn error_replies_as_string_and_object() {
        let (conn, mut server, _dir) = pair(ConnectionOptions::default(), no_notifications()).await;
        let conn = Arc::new(conn);
        let a = tokio::spawn({
            let conn = conn.clone();
            async move { conn.call("nope", &json!([])).await }
        });
        let b = tokio::spawn({
            let conn = conn.clone();
            async move { conn.call("get_schema", &json!(["No_Such_DB"])).await }
        });
        let reqs = read_values(&mut server, 2).await;
        for req in reqs {
            let reply = if req["method"] == "nope" {
                json!({"id": req["id"], "error": "unknown method"})
            } else {
                json!({"id": req["id"], "error": {"error": "unknown database", "details": "d"}})
            };
            server
                .write_all(reply.to_string().as_bytes())
                .await
                .unwrap();
        }
        let CallError::Rpc(a) = a.await.unwrap().unwrap_err() else {
            panic!("expected an rpc error")
        };
        assert!(a.is_unknown_method());
        let CallError::Rpc(b) = b.await.unwrap().unwrap_err() else {
            panic!("expected an rpc error")
        };
        assert_eq!(
            (b.error.as_str(), b.details.as_deref()),
            ("unknown database", Some("d"))
        );
    }

    #[tokio::test]
    async fn pending_calls_fail_as_maybe_sent_when_the_server_hangs_up() {
        let (conn, mut server, _dir) = pair(ConnectionOptions::default(), no_notifications()).await;
        let conn = Arc::new(conn);
        let call = tokio::spawn({
            let conn = conn.clone();
            async move { conn.call("transact", &json!([])).await }
        });
        read_values(&mut server, 1).await;
        drop(server);
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(
            err,
            CallError::ConnectionLost {
                sent: true,
                reason: CloseReason::Eof
            }
        );
        assert_eq!(conn.closed().await, CloseReason::Eof);
        let after = conn.call("echo", &json!([])).await.unwrap_err();
        assert!(matches!(
            after,
            CallError::ConnectionLost { sent: false, .. }
        ));
    }

    #[tokio::test]
    async fn idle_probe_then_close_when_unanswered() {
        let options = ConnectionOptions {
            probe_interval: Some(Duration::from_millis(100)),
            ..ConnectionOptions::default()
        };
        let (conn, server, _dir) = pair(options, no_notifications()).await;
        let mut lines = BufReader::new(server);
        let mut first = Vec::new();
        lines.read_until(b'}', &mut first).await.unwrap();
        let probe: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(probe["method"], "echo");
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("closed after an unanswered probe");
        assert_eq!(
            reason,
            CloseReason::ProbeTimeout(Duration::from_millis(100))
        );
    }

    #[tokio::test]
    async fn answered_probe_keeps_the_connection() {
        let options = ConnectionOptions {
            probe_interval: Some(Duration::from_millis(100)),
            ..ConnectionOptions::default()
        };
        let (conn, mut server, _dir) = pair(options, no_notifications()).await;
        for _ in 0..4 {
            let probe = read_values(&mut server, 1).await;
            assert_eq!(probe[0]["method"], "echo");
            let reply = json!({"id": probe[0]["id"], "result": [], "error": null});
            server
                .write_all(reply.to_string().as_bytes())
                .await
                .unwrap();
        }
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn garbage_closes_with_a_decode_reason() {
        let (conn, mut server, _dir) = pair(ConnectionOptions::default(), no_notifications()).await;
        server
            .write_all(br#"{"id":1,"result":[1,]}"#)
            .await
            .unwrap();
        assert!(matches!(conn.closed().await, CloseReason::Decode(_)));
    }

    #[tokio::test]
    async fn oversized_message_closes_with_a_frame_reason() {
        let options = ConnectionOptions {
            max_message_size: 64,
            ..ConnectionOptions::default()
        };
        let (conn, mut server, _dir) = pair(options, no_notifications()).await;
        let big = format!(r#"{{"id":1,"result":"{}"}}"#, "x".repeat(100));
        server.write_all(big.as_bytes()).await.unwrap();
        assert_eq!(
            conn.closed().await,
            CloseReason::Frame(FrameError::TooLarge { limit: 64 })
        );
    }

    #[tokio::test]
    async fn handler_error_closes_the_connection() {
        let handler: NotificationHandler = Arc::new(|_| Err("row does not exist".into()));
        let (conn, mut server, _dir) = pair(ConnectionOptions::default(), handler).await;
        server
            .write_all(br#"{"id":null,"method":"update2","params":[]}"#)
            .await
            .unwrap();
        assert_eq!(
            conn.closed().await,
            CloseReason::Handler("row does not exist".into())
        );
    }
}
