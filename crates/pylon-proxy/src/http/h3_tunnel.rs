//! An HTTP/3 request stream as a tunnel's byte stream. A WebSocket over HTTP/3
//! (RFC 9220) runs in the DATA frames of its extended CONNECT's stream once the answer
//! is 2xx; [`H3Tunnel`] reads and writes them as bytes, so that the one WebSocket relay
//! (`tunnel.rs`, `ws_relay.rs`) carries it as it carries an HTTP/1.1 connection or an
//! HTTP/2 stream.
//!
//! h3 sends only through `async fn`s, and the relay does not flush after each write
//! (a socket needs no flush), so writes go to a writer task of the tunnel's own that
//! owns the sending half, through a channel of [`QUEUED`] writes: a client that stops
//! reading holds the relay back once that is full, as a full socket buffer would.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard, PollSender};

use crate::conn::ClientIo;

/// The sending half of a request stream on Pylon's HTTP/3 server.
pub(super) type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// The receiving half.
pub(super) type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Writes handed to the writer task and not yet sent, at most.
const QUEUED: usize = 4;

/// What the tunnel asks its writer to send.
enum Out {
    Data(Bytes),
    /// The stream's end (a clean shutdown).
    End,
}

/// A WebSocket's request stream after its 2xx answer. Dropped before the client ended
/// its side, the receiving half stops it (quinn's STOP_SENDING as the stream drops;
/// h3-quinn's own `stop_sending` panics while a read is under way, and h3 leaves one
/// under way after each DATA frame), and the writer resets the sending half unless it
/// was ended cleanly.
pub(super) struct H3Tunnel {
    recv: RecvStream,
    /// What the last DATA frame brought beyond the reads so far.
    read_ahead: Bytes,
    /// The client finished its side.
    read_done: bool,
    out: PollSender<Out>,
    /// The stream's end was asked for.
    ending: bool,
    /// The writer's result, once it has sent the end (or failed).
    written: Option<oneshot::Receiver<io::Result<()>>>,
    /// Dropped with the tunnel: stops a writer blocked on a client that reads nothing.
    _writer: DropGuard,
    /// Dropped with the tunnel: the request's task waits for that, so that its QUIC
    /// connection counts the tunnel as a request in progress (no idle close, and a
    /// graceful close waits for it).
    _open: oneshot::Sender<()>,
}

impl H3Tunnel {
    /// The tunnel over `send` and `recv` (its writer task starts here); `open`'s
    /// receiver learns when it ends.
    pub(super) fn new(send: SendStream, recv: RecvStream, open: oneshot::Sender<()>) -> H3Tunnel {
        let (out, queued) = mpsc::channel(QUEUED);
        let (done, written) = oneshot::channel();
        let stop = CancellationToken::new();
        tokio::spawn(write_out(send, queued, stop.clone(), done));
        H3Tunnel {
            recv,
            read_ahead: Bytes::new(),
            read_done: false,
            out: PollSender::new(out),
            ending: false,
            written: Some(written),
            _writer: stop.drop_guard(),
            _open: open,
        }
    }

    /// Hands `item` to the writer once it has room.
    fn poll_queue(&mut self, cx: &mut Context<'_>, item: Out) -> Poll<io::Result<()>> {
        let gone = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.out.poll_reserve(cx)).map_err(gone)?;
        self.out.send_item(item).map_err(gone)?;
        Poll::Ready(Ok(()))
    }
}

/// The tunnel's writer: sends what it is handed, in order, until the end, a failure,
/// or the tunnel's drop. Any end but a clean one resets the stream: the client must not
/// take a cut tunnel for a finished one.
async fn write_out(
    mut send: SendStream,
    mut queued: mpsc::Receiver<Out>,
    stop: CancellationToken,
    done: oneshot::Sender<io::Result<()>>,
) {
    let result = loop {
        let sent = match queued.recv().await {
            Some(Out::Data(data)) => tokio::select! {
                sent = send.send_data(data) => sent.map_err(broken),
                () = stop.cancelled() => Err(io::ErrorKind::BrokenPipe.into()),
            },
            // (h3 may send a GREASE frame first, which waits on flow control too.)
            Some(Out::End) => tokio::select! {
                sent = send.finish() => break sent.map_err(broken),
                () = stop.cancelled() => Err(io::ErrorKind::BrokenPipe.into()),
            },
            // The tunnel is gone without its end.
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = sent {
            break Err(e);
        }
    };
    if result.is_err() {
        send.stop_stream(Code::H3_REQUEST_CANCELLED);
    }
    let _ = done.send(result);
}

/// A stream error as the relay reports it.
fn broken(e: StreamError) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H3Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_ahead.is_empty() {
                let n = this.read_ahead.len().min(buf.remaining());
                buf.put_slice(&this.read_ahead.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_recv_data(cx)) {
                Ok(Some(mut data)) => this.read_ahead = data.copy_to_bytes(data.remaining()),
                Ok(None) => this.read_done = true,
                Err(e) => return Poll::Ready(Err(broken(e))),
            }
        }
    }
}

impl AsyncWrite for H3Tunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.ending {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_queue(cx, Out::Data(Bytes::copy_from_slice(b))))?;
        Poll::Ready(Ok(b.len()))
    }

    /// What was written is the writer's to send, as bytes in a socket's buffer are.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends the stream's end after everything written, and waits for the writer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ending {
            ready!(this.poll_queue(cx, Out::End))?;
            this.ending = true;
        }
        match this.written.as_mut() {
            Some(written) => {
                let result = ready!(Pin::new(written).poll(cx));
                this.written = None;
                Poll::Ready(result.unwrap_or(Err(io::ErrorKind::BrokenPipe.into())))
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

impl ClientIo for H3Tunnel {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn ClientIo>> {
        Err(self)
    }
}
