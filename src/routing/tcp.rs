//! TCP for the p2p swarm with **a fresh local port on every dial**.
//!
//! libp2p's TCP transport binds outgoing connections to the listening port by default
//! (`PortUse::Reuse`, kept for NAT hole punching). In a cluster every node listens on the same
//! p2p port (a DaemonSet), so when node A (`a:P`) and node B (`b:P`) dial each other at the same
//! moment — they bootstrap each other — both SYNs carry the one 4-tuple `a:P <-> b:P`: TCP
//! simultaneous open makes a single connection on which both sides act as dialer, the protocol
//! negotiation fails, the connection closes, and its TIME_WAIT then refuses every redial of the
//! pair with "Address already in use" for 60 s. (CI saw exactly that: a node never became ready.)
//! A cluster needs no hole punching, so every dial takes an ephemeral port; the tuples of A's
//! and B's dials then always differ.

use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::{Multiaddr, Transport};

/// Wraps a transport and turns every dial's port policy into [`PortUse::New`].
#[derive(Debug)]
pub struct FreshPortPerDial<T>(pub T);

impl<T: Transport + Unpin> Transport for FreshPortPerDial<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        self.0.dial(addr, DialOpts { port_use: PortUse::New, ..opts })
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use libp2p::core::Endpoint;
    use libp2p::multiaddr::Protocol;
    use libp2p::tcp;

    fn tcp_port(a: &Multiaddr) -> u16 {
        a.iter().find_map(|p| if let Protocol::Tcp(p) = p { Some(p) } else { None }).unwrap()
    }

    /// Two nodes on one port number (as a DaemonSet runs them): the dial from A must not leave
    /// from A's listening port, or A's and B's simultaneous dials share one TCP 4-tuple. Plain
    /// libp2p TCP does leave from it (asserted too, so this test notices if that ever changes).
    #[tokio::test]
    async fn a_dial_leaves_from_a_fresh_port_not_the_listening_one() {
        async fn source_port_seen_by_b(fresh: bool) -> (u16, u16) {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let on = |ip: &str| format!("/ip4/{ip}/tcp/{port}").parse::<Multiaddr>().unwrap();
            let tcp = || tcp::tokio::Transport::new(tcp::Config::default());
            let mut a = if fresh { FreshPortPerDial(tcp()).boxed() } else { tcp().boxed() };
            let mut b = tcp().boxed();
            a.listen_on(ListenerId::next(), on("127.0.0.1")).unwrap();
            b.listen_on(ListenerId::next(), on("127.0.0.2")).unwrap();
            // Let both listeners come up (A's port must be registered for reuse, as in a node).
            for t in [&mut a, &mut b] {
                loop {
                    if let TransportEvent::NewAddress { .. } = t.select_next_some().await {
                        break;
                    }
                }
            }
            let opts = DialOpts { role: Endpoint::Dialer, port_use: PortUse::Reuse };
            let dial = a.dial(on("127.0.0.2"), opts).unwrap();
            let _pending = tokio::spawn(dial);
            let seen = loop {
                if let TransportEvent::Incoming { send_back_addr, .. } = b.select_next_some().await {
                    break tcp_port(&send_back_addr);
                }
            };
            (seen, port)
        }
        let (seen, listening) = source_port_seen_by_b(false).await;
        assert_eq!(seen, listening, "plain libp2p TCP reuses the listening port");
        let (seen, listening) = source_port_seen_by_b(true).await;
        assert_ne!(seen, listening, "a dial leaves from a fresh port");
    }
}
