//! A connection's stream as a read half and a write half.
//!
//! A plain socket (unix or tcp) gets two reactor registrations on two descriptors
//! of the same socket: the read half asks only for readability and can stop asking
//! while the reader lingers ([`ReadHalf::pause`]), the write half asks only for
//! writability. With the one registration a split stream shares, every reply that
//! arrives wakes the runtime, also while the reader has decided to wait for more:
//! ovsdb-server writes one reply per turn of its main loop, so under a deep pipeline
//! those wakeups are most of a client's CPU. A TLS stream keeps tokio's split (its
//! reads and writes share the TLS session) and ignores pauses.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

use crate::runtime::transport::Stream;

/// A socket we read and write with plain system calls.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Socket {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).read(buf),
            Socket::Unix(s) => (&*s).read(buf),
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).write(buf),
            Socket::Unix(s) => (&*s).write(buf),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Write),
            Socket::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// Splits `stream` into its halves; must run inside the runtime that will drive them.
pub(crate) fn split(stream: Stream) -> io::Result<(ReadHalf, WriteHalf)> {
    let socket = match stream {
        Stream::Tcp(s) => Socket::Tcp(s.into_std()?),
        Stream::Unix(s) => Socket::Unix(s.into_std()?),
        Stream::Tls(tls) => {
            let (read, write) = tokio::io::split(Stream::Tls(tls));
            return Ok((ReadHalf::Tls(read), WriteHalf::Tls(write)));
        }
    };
    let reader = socket.try_clone()?;
    Ok((
        ReadHalf::Plain(PlainReader {
            registered: Some(listen(reader, Interest::READABLE)?),
            paused: None,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }),
        WriteHalf::Plain(listen(socket, Interest::WRITABLE)?),
    ))
}

/// Registers `socket` with the runtime's reactor for `interest` only.
fn listen(socket: Socket, interest: Interest) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: a `Socket` owns its descriptor, which therefore stays open and names the
    // same socket until the `AsyncFd` is dropped or hands the `Socket` back.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(io::Error::from)
}

/// Bytes asked for per read.
const READ_CHUNK: usize = 64 * 1024;

/// The reading side of a connection.
pub(crate) enum ReadHalf {
    Plain(PlainReader),
    Tls(tokio::io::ReadHalf<Stream>),
}

pub(crate) struct PlainReader {
    /// Listening for readability; `None` while paused.
    registered: Option<AsyncFd<Socket>>,
    /// The socket while paused.
    paused: Option<Socket>,
    /// Reads land here first: `Read` wants initialized memory.
    scratch: Box<[u8]>,
}

impl ReadHalf {
    /// Appends what the peer sent to `buf`; `Ok(0)` at end of stream. Resumes a
    /// paused half first.
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tls(read) => read.read_buf(buf).await,
            ReadHalf::Plain(plain) => {
                if let Some(socket) = plain.paused.take() {
                    plain.registered = Some(listen(socket, Interest::READABLE)?);
                }
                let Some(registered) = &plain.registered else {
                    // Only after registering it again failed, which ended the connection.
                    return Err(io::Error::other(
                        "the socket could not be listened to again",
                    ));
                };
                let scratch = &mut plain.scratch;
                loop {
                    let mut ready = registered.readable().await?;
                    match ready.try_io(|socket| socket.get_ref().read(scratch)) {
                        Ok(Ok(n)) => {
                            if n < scratch.len() {
                                // The socket is drained: the next read waits for news.
                                ready.clear_ready();
                            }
                            buf.extend_from_slice(&scratch[..n]);
                            return Ok(n);
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => {}
                    }
                }
            }
        }
    }

    /// Stops listening for readability until the next [`ReadHalf::read_buf`], so
    /// data arriving meanwhile wakes nobody.
    pub(crate) fn pause(&mut self) {
        if let ReadHalf::Plain(plain) = self
            && let Some(registered) = plain.registered.take()
        {
            plain.paused = Some(registered.into_inner());
        }
    }
}

/// The writing side of a connection.
pub(crate) enum WriteHalf {
    Plain(AsyncFd<Socket>),
    Tls(tokio::io::WriteHalf<Stream>),
}

impl WriteHalf {
    /// Writes all of `data`.
    pub(crate) async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        match self {
            WriteHalf::Tls(write) => write.write_all(data).await,
            WriteHalf::Plain(socket) => {
                while !data.is_empty() {
                    let mut ready = socket.writable().await?;
                    match ready.try_io(|socket| socket.get_ref().write(data)) {
                        Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(Ok(n)) => data = &data[n..],
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Tells the peer we will send nothing more.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Tls(write) => write.shutdown().await,
            WriteHalf::Plain(socket) => socket.get_ref().shutdown_write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_reader() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (_read, mut write) = split(Stream::Unix(ours)).unwrap();
        let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            write.write_all(&data).await.unwrap();
            write.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(
            got == expected,
            "{} bytes arrived of {}",
            got.len(),
            expected.len()
        );
    }

    #[tokio::test]
    async fn what_arrives_while_paused_is_read_after_and_eof_reads_zero() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (mut read, _write) = split(Stream::Unix(ours)).unwrap();
        let mut buf = BytesMut::new();
        theirs.write_all(b"one").await.unwrap();
        assert_eq!(read.read_buf(&mut buf).await.unwrap(), 3);
        read.pause();
        theirs.write_all(b" two").await.unwrap();
        theirs.shutdown().await.unwrap();
        drop(theirs);
        while read.read_buf(&mut buf).await.unwrap() > 0 {}
        assert_eq!(&buf[..], b"one two");
    }
}
