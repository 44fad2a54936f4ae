//! Upgraded connections (WebSockets and any other `Upgrade`): bytes copied both ways, counted in
//! flight until either side closes. At the cut, a WebSocket gets a close frame with code 1001
//! (going away) in each direction, sent between frames, never inside one; other protocols are
//! cut off.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::admission::InFlight;
use crate::cut::{Cut, Ending};
use crate::framing::{Boundaries, WebSocketFrames};

const BUFFER: usize = 16 * 1024;
/// After one side has closed, how long the other gets to finish before the tunnel is dropped.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// After sending a close frame, how long to wait for the peer's close frame in reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_millis(300);
/// Close frame, status 1001, as a server sends it (unmasked).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Runs the tunnel once both sides have upgraded.
/// `in_flight` counts the tunnel in flight until it ends.
pub async fn run(
    client: OnUpgrade,
    backend: OnUpgrade,
    websocket: bool,
    in_flight: InFlight,
    cut: Arc<Cut>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(err) => {
            warn!(error = %err, "upgrade failed");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (backend_read, backend_write) = tokio::io::split(TokioIo::new(backend));
    let frames = || websocket.then(WebSocketFrames::default);
    let close_to_backend = masked_close();
    let up = pump(
        client_read,
        backend_write,
        frames(),
        &close_to_backend,
        &cut,
    );
    let down = pump(backend_read, client_write, frames(), &CLOSE_TO_CLIENT, &cut);
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
        cut.count(ending);
    }
    // Only now does the tunnel stop counting as in flight.
    drop(in_flight);
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
    mut frames: Option<WebSocketFrames>,
    close: &[u8],
    cut: &Cut,
) -> std::io::Result<Pump>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let cut = cut.signal();
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
    let mut frames = WebSocketFrames::default();
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

/// A close frame with status 1001 as a client sends it: masked (RFC 6455 §5.3) with a key
/// the backend cannot predict.
fn masked_close() -> [u8; 8] {
    let mut key = [0u8; 4];
    if let Err(err) = getrandom::fill(&mut key) {
        // The OS has no randomness to give: any key is still a valid frame.
        warn!(error = %err, "no random WebSocket masking key");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
