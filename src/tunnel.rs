//! Upgraded connections (WebSockets and any other `Upgrade`): bytes copied both ways, counted in
//! flight until either side closes. At the cut, a WebSocket gets a close frame with code 1001
//! (going away) in each direction, sent between frames, never inside one; other protocols are
//! cut off.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::readiness::{Ending, InFlight, State};

const BUFFER: usize = 16 * 1024;
/// After one side has closed, how long the other gets to finish before the tunnel is dropped.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// After sending a close frame, how long to wait for the peer's close frame in reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_millis(300);
/// Close frame, status 1001, as a server sends it (unmasked).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Runs the tunnel once both sides have upgraded.
pub async fn run(client: OnUpgrade, backend: OnUpgrade, websocket: bool, in_flight: InFlight) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(err) => {
            warn!(error = %err, "upgrade failed");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (backend_read, backend_write) = tokio::io::split(TokioIo::new(backend));
    let state = in_flight.state();
    let frames = || websocket.then(Frames::default);
    let close_to_backend = masked_close();
    let up = pump(
        client_read,
        backend_write,
        frames(),
        &close_to_backend,
        state,
    );
    let down = pump(
        backend_read,
        client_write,
        frames(),
        &CLOSE_TO_CLIENT,
        state,
    );
    tokio::pin!(up, down);
    // Once one side is done, the other gets a moment to finish, not forever.
    let abandoned = Ok(Pump::Abandoned);
    let (up, down) = tokio::select! {
        up = &mut up => {
            let down = tokio::time::timeout(HALF_CLOSE_GRACE, down).await;
            (up, down.unwrap_or(abandoned))
        }
        down = &mut down => {
            let up = tokio::time::timeout(HALF_CLOSE_GRACE, up).await;
            (up.unwrap_or(abandoned), down)
        }
    };
    debug!(?up, ?down, "upgraded connection ended");
    if matches!(up, Ok(Pump::Cut)) || matches!(down, Ok(Pump::Cut)) {
        let ending = if websocket {
            Ending::WebSocketClosed
        } else {
            Ending::Torn
        };
        in_flight.count_ending(ending);
    }
}

/// How one direction of a tunnel ended.
#[derive(Debug)]
enum Pump {
    /// The sender closed its side.
    Eof,
    /// The cut came: a close frame was sent (WebSocket) or the copy stopped.
    Cut,
    /// The other direction ended and this one did not finish in time.
    Abandoned,
}

/// Copies `from` to `to` until EOF or the cut. With `frames`, the copy tracks WebSocket frame
/// boundaries so that at the cut `close` is written between frames.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut frames: Option<Frames>,
    close: &[u8],
    state: &State,
) -> std::io::Result<Pump>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let cut = state.cut_signal();
    tokio::pin!(cut);
    let mut cutting = false;
    loop {
        if cutting {
            match &frames {
                None => return Ok(Pump::Cut),
                Some(frames) if frames.at_boundary() => {
                    to.write_all(close).await?;
                    to.flush().await?;
                    // The closing handshake: let the sender answer with its own close frame.
                    let reply = await_close(&mut from);
                    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, reply).await;
                    return Ok(Pump::Cut);
                }
                // Finish the frame in progress first.
                Some(_) => {}
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            () = &mut cut, if !cutting => {
                cutting = true;
                continue;
            }
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(Pump::Eof);
        }
        let upto = match &mut frames {
            Some(frames) if cutting => frames.advance_to_boundary(&buf[..n]),
            Some(frames) => {
                frames.advance(&buf[..n]);
                n
            }
            None => n,
        };
        to.write_all(&buf[..upto]).await?;
    }
}

/// Reads (and drops) what `from` sends until its close frame is complete, or it closes. Called
/// at a frame boundary.
async fn await_close<R: AsyncRead + Unpin>(from: &mut R) {
    let mut frames = Frames::default();
    let mut buf = [0u8; 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if frames.advance_until_close(&buf[..n]) {
                    return;
                }
            }
        }
    }
}

/// A close frame with status 1001 as a client sends it: masked (RFC 6455 §5.3).
fn masked_close() -> [u8; 8] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5a5a_5a5a, |d| d.subsec_nanos());
    let key = nanos.to_be_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        0x03 ^ key[0],
        0xE9 ^ key[1],
    ]
}

/// Where a byte stream stands in its WebSocket frames (RFC 6455 §5.2).
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The opcode of the current (or last) frame.
    opcode: u8,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// The header's full length, once its first two bytes are known.
    fn header_size(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or_default()),
            len => u64::from(len),
        }
    }

    /// Consumes up to the end of the current header or payload; returns the bytes consumed.
    fn step(&mut self, data: &[u8]) -> usize {
        if self.remaining > 0 {
            let n = data
                .len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            self.remaining -= n as u64;
            return n;
        }
        let mut used = 0;
        while used < data.len() {
            self.header[self.header_len] = data[used];
            self.header_len += 1;
            used += 1;
            if self.header_len == self.header_size() {
                self.remaining = self.payload_len();
                self.opcode = self.header[0] & 0x0f;
                self.header_len = 0;
                break;
            }
        }
        used
    }

    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
        }
    }

    /// Consumes `data`; returns whether a close frame has been completed in it.
    fn advance_until_close(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
            if self.opcode == 0x8 && self.at_boundary() {
                return true;
            }
        }
        false
    }

    /// Consumes `data` up to the first frame boundary; returns how many bytes that is.
    fn advance_to_boundary(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && !self.at_boundary() {
            used += self.step(&data[used..]);
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_found_across_reads() {
        // A masked text frame "hi" from a client, then an unmasked 300-byte binary frame.
        let mut wire = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        wire.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        wire.extend(std::iter::repeat_n(7u8, 300));
        let mut frames = Frames::default();
        frames.advance(&wire[..5]);
        assert!(!frames.at_boundary());
        frames.advance(&wire[5..8]);
        assert!(frames.at_boundary());
        frames.advance(&wire[8..20]);
        assert!(!frames.at_boundary());
        let used = frames.advance_to_boundary(&wire[20..]);
        assert_eq!(20 + used, wire.len());
        assert!(frames.at_boundary());
        assert_eq!(frames.advance_to_boundary(b"\x81\x00"), 0);
    }

    #[test]
    fn the_close_frames_carry_1001() {
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
        let masked = masked_close();
        let code = [masked[6] ^ masked[2], masked[7] ^ masked[3]];
        assert_eq!(u16::from_be_bytes(code), 1001);
    }
}
