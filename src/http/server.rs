//! The HTTP servers of the front end and the peer listener: actix-web's `App` over connections
//! that take direct sends ([`crate::sendfile::Conn`]). Built from actix-server and actix-http the
//! way `actix_web::HttpServer` builds its own, with the same defaults, because `HttpServer` only
//! serves a bare `TcpStream`.

use crate::sendfile::Conn;
use actix_http::{HttpService, Request, Response};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Extensions};
use actix_web::rt::net::TcpStream;
use std::time::Duration;

/// How a server runs (the `http` settings).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Worker threads (0: one per CPU).
    pub workers: usize,
    /// Connections at once, per worker.
    pub max_connections: usize,
    /// Grace for requests in flight at a stop.
    pub shutdown_timeout: Duration,
    /// `TCP_USER_TIMEOUT` of each connection (see [`tune`]); 0 leaves the system's.
    pub write_timeout: Duration,
}

/// What `actix_web::HttpServer` uses unless told otherwise.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serve `app` on `listeners` (named `name` in logs). Signals are not handled here (the node
/// stops its servers itself).
pub fn serve<F, I, S, B>(
    name: &str,
    listeners: Vec<std::net::TcpListener>,
    settings: Settings,
    app: F,
) -> std::io::Result<actix_server::Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .max_concurrent_connections(settings.max_connections);
    if settings.workers > 0 {
        builder = builder.workers(settings.workers);
    }
    let user_timeout = u32::try_from(settings.write_timeout.as_millis()).unwrap_or(u32::MAX);
    for lst in listeners {
        let addr = lst.local_addr()?;
        let app = app.clone();
        builder = builder.listen(format!("{name}-{addr}"), lst, move || {
            let app = app().into_factory().map_err(|e| e.into().error_response());
            let http = HttpService::build()
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .local_addr(addr)
                .on_connect_ext(|conn: &Conn, ext: &mut Extensions| {
                    ext.insert(conn.sink());
                })
                .h1(map_config(app, |_| AppConfig::default()));
            fn_service(move |tcp: TcpStream| {
                tune(&tcp, user_timeout);
                let peer = tcp.peer_addr().ok();
                std::future::ready(Ok((Conn::new(tcp), peer)))
            })
            .and_then(http)
        })?;
    }
    Ok(builder.run())
}

/// Socket options of every accepted connection.
///
/// A write timeout: the kernel closes a connection whose sent bytes stay unacknowledged — or
/// whose client keeps a zero receive window, i.e. reads nothing — for longer than the timeout
/// (`TCP_USER_TIMEOUT`, in ms; Linux applies it to zero-window probes too). actix-web has no
/// write timeout of its own: a response to a client that stopped reading is never polled again,
/// so without this it keeps its buffers and upstream connection forever. `0` leaves the system
/// default.
///
/// And `TCP_NODELAY`: bodies go out as streamed pieces, and with Nagle's algorithm a piece's last
/// partial segment waits until the previous one is acknowledged, which a client's delayed ACK
/// turns into a 40 ms stall.
fn tune(tcp: &TcpStream, user_timeout_ms: u32) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if user_timeout_ms == 0 {
        return;
    }
    if let Err(e) = rustix::net::sockopt::set_tcp_user_timeout(tcp, user_timeout_ms) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}
