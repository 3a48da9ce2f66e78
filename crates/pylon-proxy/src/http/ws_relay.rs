//! WebSocket tunnels relayed with an eye on frame boundaries. The bytes pass untouched,
//! but each direction knows where its current frame ends, so that when Pylon itself
//! ends a tunnel (a reload retired its route, a stop reached its drain timeout, the
//! tunnel's idle timeout or lifetime) it finishes the frame in flight and sends each
//! side a Close frame with status 1001 "going away" (RFC 6455 §7.4.1): unmasked to the
//! client, masked to the upstream, as each expects from its peer. Clients then reconnect
//! (to the new process after an upgrade) instead of seeing a dead TCP connection.
//!
//! Written by hand: WebSocket crates (tungstenite and its peers) own whole messages and
//! their buffering; a relay needs only the frame headers of bytes it forwards as they
//! are (2 to 14 bytes a frame, RFC 6455 §5.2).

use std::io;
use std::sync::atomic::AtomicU64;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::l4::relay::{self, Activity, Closer, RelayEnd, RelayLimits};

/// Copy buffer per direction.
const BUF: usize = 32 * 1024;
/// WebSocket status 1001, "going away".
const GOING_AWAY: u16 = 1001;
const OPCODE_CLOSE: u8 = 0x8;

/// Where one direction's byte stream stands in its sequence of frames.
#[derive(Default)]
struct Frames {
    /// The header of the frame being read, as far as it has arrived (at most 14 bytes).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Opcode of the frame whose payload is being read.
    opcode: u8,
    /// A whole Close frame has gone by.
    close_seen: bool,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// The header's full length, once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        if self.head_len < 2 {
            return None;
        }
        let masked = self.head[1] & 0x80 != 0;
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + extended + if masked { 4 } else { 0 })
    }

    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    fn frame_done(&mut self) {
        if self.opcode == OPCODE_CLOSE {
            self.close_seen = true;
        }
    }

    /// Follows the frames through `data`, the next bytes of the stream.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload_left -= n as u64;
                data = &data[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let Some((&byte, rest)) = data.split_first() else {
                return;
            };
            data = rest;
            if let Some(slot) = self.head.get_mut(self.head_len) {
                *slot = byte;
            }
            self.head_len += 1;
            if self.header_len() == Some(self.head_len) {
                self.opcode = self.head[0] & 0x0f;
                self.payload_left = self.payload_len();
                self.head_len = 0;
                if self.payload_left == 0 {
                    self.frame_done();
                }
            }
        }
    }
}

/// The reason text of a Close frame for how Pylon ended the tunnel.
fn reason_text(end: &str) -> &'static str {
    match end {
        "route_removed" => "going away: route removed",
        "drain_timeout" => "going away: proxy stopping",
        "max_lifetime" => "going away: tunnel lifetime reached",
        "idle_timeout" => "going away: idle timeout",
        _ => "going away",
    }
}

/// A Close frame with status 1001; `masked` for frames a client sends (to the upstream).
fn close_frame(masked: bool, reason: &str) -> Vec<u8> {
    let mut payload = GOING_AWAY.to_be_bytes().to_vec();
    // Control frames carry at most 125 payload bytes.
    payload.extend(reason.bytes().take(123));
    let mut frame = vec![0x80 | OPCODE_CLOSE, payload.len() as u8];
    if masked {
        frame[1] |= 0x80;
        let mut key = [0u8; 4];
        // A failure leaves the key zero: still a valid (if predictable) mask.
        let _ = aws_lc_rs::rand::fill(&mut key);
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        frame.extend_from_slice(&payload);
    }
    frame
}

/// Copies `from` to `to` until EOF (then shuts `to`'s write side). When Pylon ends
/// the tunnel, the frame in flight is finished, `to` gets a Close frame 1001, and what
/// `from` still sends (its answer to the Close that went its way, messages already on
/// their way) is read and dropped until it sends its own Close or ends.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    activity: &Activity,
    mut closing: watch::Receiver<Option<&'static str>>,
    masked: bool,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut frames = Frames::default();
    let reason = loop {
        let now_closing = *closing.borrow_and_update();
        if let Some(end) = now_closing
            && frames.at_boundary()
        {
            break end;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => r?,
            changed = closing.changed(), if now_closing.is_none() => {
                if changed.is_err() {
                    // The relay is gone; nothing will ask for a goodbye any more.
                    std::future::pending::<()>().await;
                }
                continue;
            }
        };
        if n == 0 {
            // The source ended (perhaps answering the Close that went its way) while
            // Pylon was closing: the other side still gets its Close.
            let end = *closing.borrow();
            if let Some(end) = end
                && frames.at_boundary()
            {
                to.write_all(&close_frame(masked, reason_text(end))).await?;
            }
            to.shutdown().await?;
            return Ok(());
        }
        frames.feed(&buf[..n]);
        if frames.close_seen {
            // The first Close frame tells who closed the tunnel (for its log line).
            activity.side_closed(if masked { 1 } else { 2 });
        }
        to.write_all(&buf[..n]).await?;
        activity.moved(counter, n);
    };
    to.write_all(&close_frame(masked, reason_text(reason)))
        .await?;
    to.flush().await?;
    while !frames.close_seen {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        frames.feed(&buf[..n]);
    }
    to.shutdown().await
}

/// Relays a WebSocket tunnel until both sides close, one fails, or Pylon ends it (then
/// with Close frames 1001 both ways, within [`relay::CLOSE_LINGER`]).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    limits: RelayLimits,
    activity: &Activity,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let closer: Closer = watch::Sender::new(None);
    relay::drive(
        // Frames to the upstream are masked, as a client's are.
        pump(cr, uw, &activity.up, activity, closer.subscribe(), true),
        pump(ur, cw, &activity.down, activity, closer.subscribe(), false),
        limits,
        activity,
        Some(&closer),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend((len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend((len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend([1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_read_sizes() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
        ] {
            stream.extend(frame(0x2, masked, len));
        }
        let ends: Vec<usize> = {
            let mut at = 0;
            [0usize, 5, 125, 126, 70_000]
                .iter()
                .zip([false, true, false, true, false])
                .map(|(&len, masked)| {
                    at += frame(0x2, masked, len).len();
                    at
                })
                .collect()
        };
        for chunk in [1, 2, 3, 7, 13, 1000, 100_000] {
            let mut f = Frames::default();
            let mut fed = 0;
            for piece in stream.chunks(chunk) {
                f.feed(piece);
                fed += piece.len();
                assert_eq!(
                    f.at_boundary(),
                    ends.contains(&fed),
                    "chunk {chunk}, after {fed} bytes"
                );
            }
        }
    }

    #[test]
    fn a_close_frame_is_noticed() {
        let mut f = Frames::default();
        f.feed(&frame(0x1, true, 10));
        assert!(!f.close_seen);
        let close = close_frame(true, "bye");
        f.feed(&close[..3]);
        assert!(!f.close_seen);
        f.feed(&close[3..]);
        assert!(f.close_seen && f.at_boundary());
    }

    #[test]
    fn close_frames_say_1001_masked_or_not() {
        let plain = close_frame(false, "going away");
        assert_eq!(plain[0], 0x88);
        assert_eq!(usize::from(plain[1]), 2 + "going away".len());
        assert_eq!(&plain[2..4], &[0x03, 0xE9]);
        assert_eq!(&plain[4..], b"going away");
        let masked = close_frame(true, "going away");
        assert_eq!(masked[1] & 0x80, 0x80);
        let key = &masked[2..6];
        let payload: Vec<u8> = masked[6..]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(&payload[..2], &[0x03, 0xE9]);
        assert_eq!(&payload[2..], b"going away");
    }
}
