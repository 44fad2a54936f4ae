//! The body of every response lameduck sends, and how each kind of response ends when the drain
//! deadline cuts it:
//!
//! - `text/event-stream`: only complete events are forwarded (a partial event's bytes wait for
//!   the rest), so at the cut the stream ends cleanly after its last complete event, with an
//!   `event: error` event first (its data set by `--sse-shutdown-event` and
//!   `--sse-shutdown-data`) unless `--sse-shutdown-event off`;
//! - gRPC over HTTP/2: once the message being forwarded is complete, trailers with
//!   `grpc-status: 14` (UNAVAILABLE) end the call;
//! - anything else is cut off (an error, so the client sees a truncated body, never a short one
//!   that looks complete).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http_body::{Body, Frame, SizeHint};

use crate::admission::InFlight;
use crate::advisor::RequestKind;
use crate::backend::BackendBody;
use crate::config::{JsonObject, SseShutdownEvent};
use crate::cut::{CutWatch, Ending};
use crate::framing::{Boundaries, GrpcMessages};
use crate::telemetry::Observation;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The data of the final event with `--sse-shutdown-event on`: reconnect and resume.
const SSE_SHUTDOWN_DATA: &str = r#"{"error":"server_restarting","resume":true}"#;

/// The data with `--sse-shutdown-event openai`: OpenAI SDKs raise an error carrying
/// `error.message` (without one they raise a generic "An error occurred during streaming").
const SSE_SHUTDOWN_DATA_OPENAI: &str = concat!(
    r#"{"error":{"message":"The server is restarting; retry the request.","#,
    r#""type":"server_restarting","code":"server_restarting"},"resume":true}"#
);

/// The bytes that end every event stream cut at the drain deadline, built once at start from
/// `--sse-shutdown-event` and `--sse-shutdown-data`; `None`: streams just end. Data given
/// replaces the mode's data, under the same `event: error`; `off` sends nothing either way.
pub fn sse_shutdown_event(mode: SseShutdownEvent, data: Option<&JsonObject>) -> Option<Bytes> {
    let data = match (mode, data) {
        (SseShutdownEvent::Off, _) => return None,
        // Compact JSON: one line, so one `data:` field holds it.
        (_, Some(data)) => data.as_str(),
        (SseShutdownEvent::On, None) => SSE_SHUTDOWN_DATA,
        (SseShutdownEvent::Openai, None) => SSE_SHUTDOWN_DATA_OPENAI,
    };
    Some(Bytes::from(format!("event: error\ndata: {data}\n\n")))
}

#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// Metrics and access log for this request, when on; recorded when the body ends.
    pub(crate) observation: Option<Observation>,
}

#[derive(Debug)]
enum Kind {
    Local(Option<Bytes>),
    Proxied(Proxied),
}

/// A backend's response body, streamed frame by frame.
#[derive(Debug)]
struct Proxied {
    /// Given back ([`BackendBody::release`]) when the response is complete: a backend link it
    /// reads is then free for the next request.
    body: BackendBody,
    /// Holds the request's in-flight count (and concurrency slot) until the last frame.
    in_flight: Option<InFlight>,
    cut: CutWatch,
    shape: Shape,
    /// The cut has come; the shape is ending the response.
    cutting: bool,
}

/// What the response carries, which decides how it can end early.
#[derive(Debug)]
enum Shape {
    Plain,
    /// Server-sent events; `held` is a partial event waiting for its end, `shutdown_event` the
    /// bytes sent at the cut (see [`sse_shutdown_event`]).
    EventStream {
        held: BytesMut,
        shutdown_event: Option<Bytes>,
    },
    Grpc(GrpcMessages),
}

/// What kind of response a backend's head announces.
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    /// A gRPC response whose status can reach the client as trailers.
    grpc: bool,
    kind: RequestKind,
}

impl Announced {
    /// `trailers_ok`: the client speaks HTTP/2, so a gRPC status can reach it as trailers.
    pub fn from_headers(headers: &HeaderMap, trailers_ok: bool) -> Announced {
        let content_type = headers
            .get(CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let starts = |prefix: &[u8]| {
            content_type.len() >= prefix.len()
                && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        let grpc =
            starts(b"application/grpc") && matches!(content_type.get(16), None | Some(b'+' | b';'));
        let kind = if starts(b"text/event-stream") {
            RequestKind::EventStream
        } else if grpc {
            RequestKind::Grpc
        } else {
            RequestKind::Request
        };
        Announced {
            grpc: grpc && trailers_ok,
            kind,
        }
    }

    /// What the request is, for the advisor.
    pub fn kind(&self) -> RequestKind {
        self.kind
    }
}

impl ResponseBody {
    fn new(kind: Kind) -> ResponseBody {
        ResponseBody {
            kind,
            observation: None,
        }
    }

    pub fn local(bytes: Bytes) -> ResponseBody {
        ResponseBody::new(Kind::Local(Some(bytes)))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::new(Kind::Local(None))
    }

    pub fn proxied(
        body: BackendBody,
        in_flight: InFlight,
        cut: CutWatch,
        announced: Announced,
        sse_shutdown_event: Option<Bytes>,
    ) -> ResponseBody {
        let shape = if announced.kind == RequestKind::EventStream {
            Shape::EventStream {
                held: BytesMut::new(),
                shutdown_event: sse_shutdown_event,
            }
        } else if announced.grpc {
            Shape::Grpc(GrpcMessages::default())
        } else {
            Shape::Plain
        };
        ResponseBody::new(Kind::Proxied(Proxied {
            body,
            in_flight: Some(in_flight),
            cut,
            shape,
            cutting: false,
        }))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Proxied(proxied) => proxied.poll_frame(cx),
        };
        if let Some(observation) = &mut this.observation {
            match &frame {
                Poll::Ready(Some(Ok(frame))) => {
                    observation.add_bytes(frame.data_ref().map_or(0, Bytes::len));
                }
                Poll::Ready(_) => this.observation = None,
                Poll::Pending => {}
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(bytes) => bytes.is_none(),
            // A plain body that is over (one that cannot have data, say) is, whether or not its
            // end has been read: hyper then asks no more, and sends what its length says.
            Kind::Proxied(proxied) => {
                proxied.in_flight.is_none()
                    || (matches!(proxied.shape, Shape::Plain) && proxied.body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Proxied(proxied) => match proxied.shape {
                Shape::Plain => proxied.body.size_hint(),
                // Held-back bytes and a shutdown event make the length unknowable.
                _ => SizeHint::default(),
            },
        }
    }
}

impl Proxied {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.in_flight.is_none() {
                return Poll::Ready(None);
            }
            if !self.cutting && self.cut.has_come() {
                self.cutting = true;
            }
            if self.cutting {
                if let Some(end) = self.end_at_cut() {
                    return Poll::Ready(end);
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => {
                    if !self.cutting && self.cut.poll(cx).is_ready() {
                        self.cutting = true;
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    let held = self.complete();
                    return Poll::Ready(held.map(|held| Ok(Frame::data(held))));
                }
                Poll::Ready(Some(Err(err))) => {
                    self.in_flight = None;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers pass through untouched.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let forward = match &mut self.shape {
                Shape::Plain => Some(data),
                Shape::EventStream { held, .. } => complete_events(held, data),
                Shape::Grpc(messages) if self.cutting => Some(messages.take_to_boundary(data)),
                Shape::Grpc(messages) => {
                    messages.advance(&data);
                    Some(data)
                }
            };
            // With a known length, the client side stops polling after the last byte: finish
            // now rather than waiting for an end that is never asked for.
            let forward = if self.body.is_end_stream() {
                match (forward, self.complete()) {
                    (Some(data), Some(held)) => Some([data, held].concat().into()),
                    (data, held) => data.or(held),
                }
            } else {
                forward
            };
            if let Some(data) = forward.filter(|data| !data.is_empty()) {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }

    /// The backend's body is complete: the request no longer counts as in flight, and its
    /// backend connection is free for the client connection's next request. Returns a partial
    /// event still held back, passed on as the backend left it.
    fn complete(&mut self) -> Option<Bytes> {
        self.in_flight = None;
        self.body.release();
        match &mut self.shape {
            Shape::EventStream { held, .. } if !held.is_empty() => Some(held.split().freeze()),
            _ => None,
        }
    }

    /// The end this response takes at the cut, or `None` to keep forwarding (a gRPC message is
    /// still being completed).
    fn end_at_cut(&mut self) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
        let in_flight = self.in_flight.take()?;
        let end = match &mut self.shape {
            Shape::EventStream {
                held,
                shutdown_event,
            } => {
                held.clear();
                self.cut.count(Ending::SseEnded);
                shutdown_event.take().map(|event| Ok(Frame::data(event)))
            }
            Shape::Grpc(messages) if !messages.at_boundary() => {
                self.in_flight = Some(in_flight);
                return None;
            }
            Shape::Grpc(_) => {
                self.cut.count(Ending::GrpcUnavailable);
                Some(Ok(Frame::trailers(grpc_unavailable())))
            }
            Shape::Plain => {
                self.cut.count(Ending::Torn);
                Some(Err("response cut at the drain deadline".into()))
            }
        };
        Some(end)
    }
}

/// Appends `data` to what is held and returns everything up to the end of the last complete
/// event, holding the rest. Zero-copy when nothing is held and `data` ends on an event boundary.
fn complete_events(held: &mut BytesMut, data: Bytes) -> Option<Bytes> {
    if held.is_empty() {
        let end = last_event_end(&data);
        if end == data.len() {
            return Some(data);
        }
        held.extend_from_slice(&data[end..]);
        return Some(data.slice(..end));
    }
    held.extend_from_slice(&data);
    let end = last_event_end(held);
    Some(held.split_to(end).freeze())
}

/// The offset just past the last complete event in `buf` (0 if none): an event ends with an
/// empty line, and lines end with `\n`, `\r\n` or `\r`. `buf` starts at the start of a line.
fn last_event_end(buf: &[u8]) -> usize {
    let mut end = 0;
    let mut line_start = true;
    let mut i = 0;
    while i < buf.len() {
        let terminator = match buf[i] {
            b'\n' => 1,
            // A final `\r` may be the first half of `\r\n`: wait for the next byte.
            b'\r' if i + 1 == buf.len() => break,
            b'\r' if buf[i + 1] == b'\n' => 2,
            b'\r' => 1,
            _ => 0,
        };
        if terminator == 0 {
            line_start = false;
            i += 1;
            continue;
        }
        i += terminator;
        if line_start {
            end = i;
        }
        line_start = true;
    }
    end
}

fn grpc_unavailable() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert(
        "grpc-message",
        HeaderValue::from_static("server restarting (lameduck drain deadline); retry"),
    );
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_an_empty_line_whatever_the_line_endings() {
        assert_eq!(last_event_end(b"data: a\n\n"), 9);
        assert_eq!(last_event_end(b"data: a\n\ndata: b"), 9);
        assert_eq!(last_event_end(b"data: a\r\n\r\ndata: b\n"), 11);
        // The final \r might still become \r\n: that event waits for the next byte.
        assert_eq!(last_event_end(b"data: a\r\rdata: b\r\r"), 9);
        assert_eq!(last_event_end(b"data: a\r\rdata: b\r\rx"), 18);
        assert_eq!(last_event_end(b"data: a\n"), 0);
        // A trailing \r could still be the start of \r\n.
        assert_eq!(last_event_end(b"data: a\r\n\r"), 0);
        assert_eq!(last_event_end(b"id: 1\ndata: a\n\nid: 2\n"), 15);
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut held = BytesMut::new();
        let out = complete_events(&mut held, Bytes::from_static(b"data: one\n\ndata: tw"));
        assert_eq!(out.unwrap(), "data: one\n\n");
        assert_eq!(&held[..], b"data: tw");
        let out = complete_events(&mut held, Bytes::from_static(b"o\n"));
        assert_eq!(out.unwrap(), "");
        let out = complete_events(&mut held, Bytes::from_static(b"\ndata: three\n\n"));
        assert_eq!(out.unwrap(), "data: two\n\ndata: three\n\n");
        assert!(held.is_empty());
    }

    #[test]
    fn the_final_event_follows_the_mode_and_the_data_given() {
        use SseShutdownEvent::{Off, On, Openai};
        let event = |mode, data| sse_shutdown_event(mode, data).map(|b| b.to_vec());
        assert_eq!(
            event(On, None).unwrap(),
            b"event: error\ndata: {\"error\":\"server_restarting\",\"resume\":true}\n\n"
        );
        let openai = event(Openai, None).unwrap();
        let openai = std::str::from_utf8(&openai).unwrap();
        let data = openai
            .strip_prefix("event: error\ndata: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "error": {
                    "message": "The server is restarting; retry the request.",
                    "type": "server_restarting",
                    "code": "server_restarting",
                },
                "resume": true,
            })
        );
        assert_eq!(event(Off, None), None);

        let custom = crate::config::Config::parse_from([
            "lameduck",
            "--cerebrium-toml",
            "/dev/null",
            "--sse-shutdown-data",
            "{ \"bye\": [1, 2] }",
        ])
        .unwrap();
        let custom = custom.sse_shutdown_data.as_ref();
        for mode in [On, Openai] {
            assert_eq!(
                event(mode, custom).unwrap(),
                b"event: error\ndata: {\"bye\":[1,2]}\n\n"
            );
        }
        assert_eq!(event(Off, custom), None);
    }

    #[test]
    fn grpc_is_recognised_only_for_clients_that_take_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(Announced::from_headers(&headers, true).grpc);
        assert!(!Announced::from_headers(&headers, false).grpc);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert!(!Announced::from_headers(&headers, true).grpc);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        assert_eq!(
            Announced::from_headers(&headers, true).kind(),
            RequestKind::EventStream
        );
    }
}
