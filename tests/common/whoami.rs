//! Name servers for the end-to-end tests: a thread in a pod namespace that
//! answers every TCP connection (or UDP datagram) on a port with
//! `"<name> <peer ip>"`, so a test sees which backend served it and which
//! source address it saw; and the TCP client that reads that line.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kxdp_topology::{Netns, TopoResult};

/// Longest a server runs if it is never dropped.
const MAX_LIFETIME: Duration = Duration::from_secs(120);

/// A running name server; stops when dropped.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<TopoResult<()>>>,
}

impl NameServer {
    /// TCP on `port`: one line per connection.
    pub fn tcp(ns: &Netns, name: &str, port: u16) -> TopoResult<Self> {
        Self::spawn(ns, name, port, |name, port, stop, ready| {
            let l = TcpListener::bind(("0.0.0.0", port))
                .map_err(|e| format!("bind tcp :{port}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let _ = ready.send(());
            let deadline = Instant::now() + MAX_LIFETIME;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = write!(s, "{name} {}", peer.ip());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            }
            Ok(())
        })
    }

    /// UDP on `port`: one reply datagram per datagram.
    pub fn udp(ns: &Netns, name: &str, port: u16) -> TopoResult<Self> {
        Self::spawn(ns, name, port, |name, port, stop, ready| {
            let s =
                UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("bind udp :{port}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            let _ = ready.send(());
            let deadline = Instant::now() + MAX_LIFETIME;
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                }
            }
            Ok(())
        })
    }

    fn spawn(
        ns: &Netns,
        name: &str,
        port: u16,
        body: fn(&str, u16, &AtomicBool, mpsc::Sender<()>) -> TopoResult<()>,
    ) -> TopoResult<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (name, flag) = (name.to_owned(), Arc::clone(&stop));
        let handle = ns.spawn(move || body(&name, port, &flag, tx));
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| "name server did not start".to_string())?;
        Ok(NameServer {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One TCP connection from `ns` to `dst:port`: the server's
/// `"<name> <peer>"` line.
pub fn tcp_whoami(ns: &Netns, dst: Ipv4Addr, port: u16, timeout: Duration) -> TopoResult<String> {
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), timeout)
            .map_err(|e| format!("connect {dst}:{port}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read from {dst}:{port}: {e}"))?;
        Ok(text)
    })
}
