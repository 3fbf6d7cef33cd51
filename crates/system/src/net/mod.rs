//! One HTTP stack for both runtimes.
//!
//! Servers are axum routers served on any [`axum::serve::Listener`]; clients
//! speak HTTP/1.1 through hyper over whatever a [`Connector`] dials. In
//! production the connector is tokio TCP; the simulator plugs in turmoil's
//! TCP, so every request between town, container and forge crosses its
//! simulated network (and can be delayed, held or lost there).

mod client;

pub use client::{HttpClient, HttpError, HttpResponse, Method};

use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a client can speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type SendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Dials `host:port`. The one seam between our HTTP code and the network.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> SendFuture<'a, io::Result<Box<dyn Io>>>;
}

/// Real TCP through tokio (production mode).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> SendFuture<'a, io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// Serve `router` on `listener` until the future is dropped.
pub async fn serve<L>(listener: L, router: axum::Router) -> io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router).await
}
