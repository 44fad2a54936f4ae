//! Where the backend's connections go: a Unix socket ([`Upstream::socket`]), or the addresses
//! [`Upstream::addrs`] holds when the upstream needs no name lookup (an IP literal,
//! `localhost`), else what the system resolver says its name is. So a static lameduck runs in an
//! image with no `/etc/hosts` and no NSS modules as long as its upstream is an IP address,
//! `localhost` or a socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::Upstream;

/// A connection to the backend, over TCP or a Unix socket. An enum rather than a trait object:
/// each read and write is one `match`, with no allocation and no dynamic call.
#[derive(Debug)]
pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A new connection to the backend: to its socket, or to its addresses in order.
pub(super) async fn connect(upstream: &Upstream) -> io::Result<Stream> {
    if let Some(path) = &upstream.socket {
        return connect_unix(path).await.map(Stream::Unix);
    }
    let stream = if upstream.addrs.is_empty() {
        TcpStream::connect((upstream.host.as_str(), upstream.port)).await?
    } else {
        TcpStream::connect(&upstream.addrs[..]).await?
    };
    stream.set_nodelay(true)?;
    Ok(Stream::Tcp(stream))
}

/// A new connection to a Unix socket. The caller bounds the wait.
///
/// A full listen queue on a Unix socket does not make `connect` wait, as it does over TCP (the
/// SYN is retried): the non-blocking `connect` fails with `EAGAIN`. That means "busy", not "down":
/// so try again shortly, as a TCP connection would have waited, rather than answer 502 to a
/// backend that is merely slow to accept.
async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let mut pause = Duration::from_millis(1);
    loop {
        match UnixStream::connect(path).await {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            done => return done,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// The pooled client's connector: hyper-util's [`HttpConnector`] for TCP (with [`Resolver`]),
/// or a dial of the upstream's socket. Either way it goes to the upstream, whatever the
/// authority it is asked for: that only keys the pool (it is the upstream's too, today), and
/// must never decide where lameduck connects.
#[derive(Debug, Clone)]
pub(super) enum Connector {
    Tcp {
        tcp: HttpConnector<Resolver>,
        /// `http://` and the upstream's authority: what `tcp` is always asked to connect to.
        upstream: http::Uri,
    },
    Unix {
        path: Arc<Path>,
        timeout: Duration,
    },
}

impl Connector {
    pub(super) fn new(upstream: &Upstream, timeout: Duration) -> Connector {
        if let Some(path) = &upstream.socket {
            return Connector::Unix {
                path: path.as_path().into(),
                timeout,
            };
        }
        let mut tcp = HttpConnector::new_with_resolver(Resolver::new(upstream));
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(upstream.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        Connector::Tcp {
            tcp,
            // Cannot fail: scheme, authority and path were each valid on their own.
            upstream: http::Uri::from_parts(parts).expect("the upstream's URI is valid"),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    // Boxed: called once per new pooled connection, never per request.
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Tcp { tcp, .. } => tcp.poll_ready(cx).map_err(Into::into),
            Connector::Unix { .. } => Poll::Ready(Ok(())),
        }
    }

    /// `_authority`: the pool's key, not where to connect.
    fn call(&mut self, _authority: http::Uri) -> Self::Future {
        match self {
            Connector::Tcp { tcp, upstream } => {
                let connecting = tcp.call(upstream.clone());
                Box::pin(async move {
                    let stream = connecting.await?.into_inner();
                    Ok(TokioIo::new(Stream::Tcp(stream)))
                })
            }
            Connector::Unix { path, timeout } => {
                let (path, timeout) = (path.clone(), *timeout);
                Box::pin(async move {
                    let stream = tokio::time::timeout(timeout, connect_unix(&path))
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                    Ok(TokioIo::new(Stream::Unix(stream)))
                })
            }
        }
    }
}

/// The pooled client's resolver. The pool only ever connects to the upstream ([`Connector`]),
/// whose host is the name it asks for: answered from [`Upstream::addrs`] when they are known,
/// else by `getaddrinfo` (hyper-util's [`GaiResolver`]). hyper-util never asks about IP
/// literals.
#[derive(Debug, Clone)]
pub(super) struct Resolver {
    known: Arc<[SocketAddr]>,
    system: GaiResolver,
}

impl Resolver {
    pub(super) fn new(upstream: &Upstream) -> Resolver {
        Resolver {
            known: upstream.addrs.as_slice().into(),
            system: GaiResolver::new(),
        }
    }
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if !self.known.is_empty() {
            let known = self.known.to_vec();
            return Box::pin(async move { Ok(known.into_iter()) });
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener whose queue is full makes `connect` fail with `EAGAIN`: `connect_unix` waits
    /// for room instead, and connects once the backend accepts.
    #[tokio::test]
    async fn a_full_listen_queue_is_waited_for_not_an_error() {
        /// Removes the directory, and the socket in it, even when the test fails.
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("lameduck-dial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _cleanup = Cleanup(dir.clone());
        let path = dir.join("full.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut queued = Vec::new();
        let full = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => queued.push(stream),
                Err(err) => break err,
            }
            assert!(queued.len() < 100_000, "the listen queue never filled");
        };
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");

        let waiting = tokio::spawn({
            let path = path.clone();
            async move { connect_unix(&path).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "connect_unix gave up on a full queue"
        );
        drop(listener.accept().unwrap());
        let connected = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        connected
            .expect("connect_unix still waiting")
            .unwrap()
            .unwrap();
    }
}
