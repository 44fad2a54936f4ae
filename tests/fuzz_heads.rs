//! A fuzz loop over raw request heads, against the real binary: valid heads, mutated byte by
//! byte, line by line and with known troublemakers (duplicate framing and `Host` headers, control
//! characters, folding, oversized parts), each sent on its own connection. Whatever lameduck
//! answers must not be a 5xx, and lameduck must not panic or stop serving.
//!
//! Heads only: no body follows them (one they announce stays pending; the backend answers
//! without reading it), so that what is tested is the handling of the head, not of a body
//! broken by a mutation.
//!
//! Bounded in time so that it runs with every `cargo test` (a few seconds); for a longer run:
//! `LAMEDUCK_FUZZ_SECS=300 cargo test --test fuzz_heads -- --nocapture`. A failure prints the
//! seed (`LAMEDUCK_FUZZ_SEED=<seed>` replays the same cases) and the bytes that caused it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::raw::Recording;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Valid request heads to start from.
const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"GET /path?query=1&b=two HTTP/1.1\r\nHost: a:8000\r\nCookie: a=b; c=d\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
    b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"PUT /expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"GET http://a/absolute HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
];

/// Header lines known to stress a parser or a proxy.
const LINES: &[&[u8]] = &[
    b"Host: b",
    b"Host: a@b",
    b"Host:",
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: -1",
    b"Content-Length: 18446744073709551616",
    b"Content-Length: 5, 5",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding : chunked",
    b" folded",
    b"\tfolded",
    b"Connection: close, x-secret",
    b"X-Secret: 1",
    b"Upgrade: h2c",
    b"Expect: 100-continue",
    b"TE: trailers",
    b"Trailer: X-Checksum",
    b"X-Forwarded-For: 10.0.0.1",
    b"\x00: nul",
    b"X-Empty:",
    b"X-Obs-Text: \x80\xff",
];

/// Bytes that matter to an HTTP/1 parser.
const SPECIAL: &[u8] = b"\r\n \t:;,\"\x00\x01\x1b\x7f\x80\xff/?#%@*-0123456789";

/// xorshift64*: fast, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len())]
    }
}

/// Line boundaries of `head`: the index of each line's start.
fn line_starts(head: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            head.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| i == 0 || i < head.len())
        .collect()
}

/// `case` up to the end of its first head as a parser sees it (the first empty line after a
/// non-empty one): a mutation may have made a head end early, and what follows would be a body.
fn head_only(mut case: Vec<u8>) -> Vec<u8> {
    let mut seen_content = false;
    let mut line_start = 0;
    for i in 0..case.len() {
        if case[i] != b'\n' {
            continue;
        }
        let line = &case[line_start..i];
        let empty = line.is_empty() || line == b"\r";
        if empty && seen_content {
            case.truncate(i + 1);
            return case;
        }
        seen_content |= !empty;
        line_start = i + 1;
    }
    case
}

/// One to four mutations of a seed.
fn mutate(rng: &mut Rng) -> Vec<u8> {
    let mut head = rng.pick(SEEDS).to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(head.len() + 1);
        match rng.below(10) {
            0 => {
                if at < head.len() {
                    head[at] = rng.next() as u8;
                }
            }
            1 => head.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
            2 => {
                let end = (at + 1 + rng.below(8)).min(head.len());
                head.drain(at.min(end)..end);
            }
            3 | 4 => {
                // A known troublemaker, as a line of its own after the request line.
                let starts = line_starts(&head);
                let line_at = starts[1.min(starts.len() - 1)..]
                    .get(rng.below(starts.len()))
                    .copied()
                    .unwrap_or(head.len());
                let mut line = rng.pick(LINES).to_vec();
                line.extend_from_slice(if rng.below(4) == 0 { b"\n" } else { b"\r\n" });
                head.splice(line_at..line_at, line);
            }
            5 => {
                // A line repeated.
                let starts = line_starts(&head);
                let start = starts[rng.below(starts.len())];
                let end = head[start..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(head.len(), |i| start + i + 1);
                let line = head[start..end].to_vec();
                head.splice(start..start, line);
            }
            6 => {
                // Something long: a part repeated up to past the limits.
                let end = (at + 1 + rng.below(16)).min(head.len());
                let part = head[at.min(end)..end].to_vec();
                let times = [10, 1000, 9000, 40_000][rng.below(4)] / part.len().max(1);
                let long: Vec<u8> = part.repeat(times);
                head.splice(at..at, long);
            }
            7 => {
                // Line endings: CRLF to LF, or a bare CR.
                if let Some(i) = head.windows(2).skip(at).position(|w| w == b"\r\n") {
                    if rng.below(2) == 0 {
                        head.remove(at + i);
                    } else {
                        head.remove(at + i + 1);
                    }
                }
            }
            8 => head.truncate(at.max(1)),
            _ => {
                // Half of another seed.
                let other = rng.pick(SEEDS);
                let half = &other[other.len() / 2..];
                head.splice(at..at, half.iter().copied());
            }
        }
    }
    head
}

/// The status of each response lameduck writes, until it closes the connection, stops writing,
/// or has given a final answer with nothing more buffered.
async fn statuses(port: u16, case: &[u8]) -> Vec<u16> {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        panic!("lameduck stopped accepting");
    };
    // lameduck may refuse before reading everything: a write error is an answer too.
    let _ = stream.write_all(case).await;
    let mut read = Vec::new();
    let mut chunk = [0u8; 8192];
    // Every case gets an answer within the header read timeout at most; once one has come,
    // anything more (a pipelined request's) comes at once.
    let mut wait = Duration::from_secs(5);
    loop {
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => read.extend_from_slice(&chunk[..n]),
            // Closed, reset, or quiet: what came is all.
            _ => break,
        }
        if status_codes(&read).iter().any(|code| *code >= 200) {
            wait = Duration::from_millis(200);
        }
    }
    status_codes(&read)
}

/// Every status code at the start of a line that looks like a status line.
fn status_codes(read: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(read);
    text.split("\r\n")
        .filter_map(|line| line.strip_prefix("HTTP/1."))
        .filter_map(|rest| rest.get(2..5)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn no_request_head_gets_a_5xx_or_harms_lameduck() {
    let secs: u64 = std::env::var("LAMEDUCK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("LAMEDUCK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (nanos as u64) | 1
        });
    eprintln!("fuzz seed {seed} for {secs} s (LAMEDUCK_FUZZ_SEED, LAMEDUCK_FUZZ_SECS)");

    let backend = Recording::start().await;
    let ld = Builder::without_child(backend.port)
        .args(&["--header-read-timeout", "500ms", "--idle-timeout", "2s"])
        .spawn()
        .await;
    ld.wait_ready().await;

    // The seeds themselves, then mutations, each on its own connection, 16 at a time.
    let mut rng = Rng(seed);
    let mut cases: Vec<Vec<u8>> = SEEDS.iter().map(|seed| seed.to_vec()).collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut running = tokio::task::JoinSet::new();
    while Instant::now() < stop {
        let case = cases.pop().unwrap_or_else(|| head_only(mutate(&mut rng)));
        if running.len() >= 16 {
            running.join_next().await.unwrap().unwrap();
        }
        let (port, sent) = (ld.port, Arc::clone(&sent));
        running.spawn(async move {
            let codes = statuses(port, &case).await;
            sent.fetch_add(1, Ordering::Relaxed);
            if let Some(code) = codes.iter().find(|code| **code >= 500) {
                panic!(
                    "seed {seed}: {code} for {:?} (statuses {codes:?})",
                    String::from_utf8_lossy(&case[..case.len().min(2000)])
                );
            }
        });
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
    eprintln!(
        "{} cases; the backend saw {} requests",
        sent.load(Ordering::Relaxed),
        backend.seen().len()
    );

    // Still serving, and nothing in its log says otherwise.
    assert_eq!(
        get(ld.port, "/health").await.unwrap().status,
        http::StatusCode::OK
    );
    let log = ld.log();
    assert!(!log.contains("panicked") && !log.contains("ERROR"), "{log}");
}
