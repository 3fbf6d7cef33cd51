//! turmoil's simulated TCP behind the system's transport seams: a
//! [`Connector`] for clients and an axum [`Listener`] for servers. The town,
//! container and forge code is the same as in production; only these two
//! types differ.

use gastown::net::{Connector, Io, SendFuture};
use std::io;
use std::net::SocketAddr;

/// Dials through turmoil's network (DNS is turmoil's: host names are hosts).
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> SendFuture<'a, io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((host, port)).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// A turmoil listener that axum can serve on.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl TurmoilListener {
    pub async fn bind(port: u16) -> io::Result<Self> {
        Ok(TurmoilListener(turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?))
    }
}

impl axum::serve::Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(pair) => return pair,
                // A failed accept (peer gone mid-handshake) must not end the server.
                Err(e) => {
                    tracing::debug!(error = %e, "turmoil accept failed");
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
