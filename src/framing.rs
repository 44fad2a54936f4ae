//! Where a byte stream stands in its messages, so that a stream cut short is cut between
//! messages, never inside one: gRPC's length-prefixed messages and WebSocket frames.

use bytes::{Buf, Bytes};

/// A tracker of message boundaries in a byte stream, fed the bytes as they pass.
pub trait Boundaries {
    /// Whether the bytes seen so far end exactly at the end of a message.
    fn at_boundary(&self) -> bool;

    /// Consumes bytes up to the end of the current header or payload (at least one byte of a
    /// non-empty `data`); returns how many.
    fn step(&mut self, data: &[u8]) -> usize;

    /// Consumes all of `data`.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
        }
    }

    /// Consumes `data` up to the first boundary; returns how many bytes that is (0 if already
    /// at one).
    fn advance_to_boundary(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && !self.at_boundary() {
            used += self.step(&data[used..]);
        }
        used
    }

    /// The part of `data` that completes the current message.
    fn take_to_boundary(&mut self, data: Bytes) -> Bytes {
        let end = self.advance_to_boundary(&data);
        data.slice(..end)
    }
}

/// Consumes up to `remaining` payload bytes of `data`; returns how many.
fn take_payload(remaining: &mut u64, data: &[u8]) -> usize {
    let n = data
        .len()
        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
    *remaining -= n as u64;
    n
}

/// Where a gRPC response stands in its length-prefixed messages (1 flag byte, 4 length bytes).
#[derive(Debug, Default)]
pub struct GrpcMessages {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: u64,
}

impl Boundaries for GrpcMessages {
    fn at_boundary(&self) -> bool {
        self.prefix_len == 0 && self.remaining == 0
    }

    fn step(&mut self, data: &[u8]) -> usize {
        if self.remaining > 0 {
            return take_payload(&mut self.remaining, data);
        }
        let n = data.len().min(5 - self.prefix_len);
        self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
        self.prefix_len += n;
        if self.prefix_len == 5 {
            let mut length = &self.prefix[1..];
            self.remaining = u64::from(length.get_u32());
            self.prefix_len = 0;
        }
        n
    }
}

/// Where a byte stream stands in its WebSocket frames (RFC 6455 §5.2).
#[derive(Debug, Default)]
pub struct WebSocketFrames {
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The opcode of the current (or last) frame.
    opcode: u8,
}

impl Boundaries for WebSocketFrames {
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    fn step(&mut self, data: &[u8]) -> usize {
        if self.remaining > 0 {
            return take_payload(&mut self.remaining, data);
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
}

impl WebSocketFrames {
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

    /// Consumes `data`; returns whether a close frame has been completed in it.
    pub fn advance_until_close(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
            if self.opcode == 0x8 && self.at_boundary() {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_boundaries_are_tracked_across_frames() {
        let mut messages = GrpcMessages::default();
        // Two messages of 3 and 2 bytes, split awkwardly.
        let wire = [0u8, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 2, b'd', b'e'];
        messages.advance(&wire[..3]);
        assert!(!messages.at_boundary());
        messages.advance(&wire[3..8]);
        assert!(messages.at_boundary());
        messages.advance(&wire[8..14]);
        assert!(!messages.at_boundary());
        let rest = messages.take_to_boundary(Bytes::copy_from_slice(&wire[14..]));
        assert_eq!(&rest[..], b"e");
        assert!(messages.at_boundary());

        let mut messages = GrpcMessages::default();
        messages.advance(&wire[..6]);
        let taken = messages.take_to_boundary(Bytes::copy_from_slice(&wire[6..]));
        assert_eq!(&taken[..], b"bc");
    }

    #[test]
    fn frame_boundaries_are_found_across_reads() {
        // A masked text frame "hi" from a client, then an unmasked 300-byte binary frame.
        let mut wire = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        wire.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        wire.extend(std::iter::repeat_n(7u8, 300));
        let mut frames = WebSocketFrames::default();
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
}
