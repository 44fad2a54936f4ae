//! Where the backend's connections go: the addresses [`Upstream::addrs`] holds when the upstream
//! needs no name lookup (an IP literal, `localhost`), else what the system resolver says its name
//! is. So a static lameduck runs in an image with no `/etc/hosts` and no NSS modules as long as
//! its upstream is an IP address or `localhost`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tokio::net::TcpStream;

use crate::config::Upstream;

/// A new TCP connection to the backend, trying its addresses in order.
pub(super) async fn connect(upstream: &Upstream) -> io::Result<TcpStream> {
    if upstream.addrs.is_empty() {
        TcpStream::connect((upstream.host.as_str(), upstream.port)).await
    } else {
        TcpStream::connect(&upstream.addrs[..]).await
    }
}

/// The pooled client's resolver. The pool only ever connects to the upstream, whose authority
/// is the name it asks for: answered from [`Upstream::addrs`] when they are known, else by
/// `getaddrinfo` (hyper-util's [`GaiResolver`]). hyper-util never asks about IP literals.
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
