//! Network faults without root: one small TCP proxy per directed link between nodes.
//!
//! Node `i` is started with `QUORATE_PEER_ADDRS` naming, for every peer `j`, the proxy
//! of link `i→j`, so everything `i` sends to `j` — Raft RPCs, forwarded client
//! requests, bootstrap probes — passes through it (answers travel back on the same
//! connection). A link is *open* when it has a target (node `j`'s `raft_addr`), is not
//! cut, and its target is not marked down:
//! - open: accept, connect to the target, copy bytes both ways;
//! - closed: every connection through the link is dropped and the listening socket
//!   is closed, so new connections are *refused*, as they would be by a dead peer.
//!
//! Cutting `i→j` alone is a one-way partition: `i` can no longer reach `j`, while `j`
//! still reaches `i` (and gets its answers). Isolating a node cuts every link to and
//! from it. A node that the harness kills is marked down on its incoming links, so its
//! peers see "connection refused" exactly as without the proxy (not a connection that
//! opens and then dies).
//!
//! Node `i` was told the proxy's port at startup, so the link must be able to listen
//! on it again after every cut. Ports are taken below the kernel's ephemeral range (no
//! outgoing connection is ever handed one), and while a link is closed its port stays
//! bound to a socket that does not listen: connections are refused, and no other
//! process (another chaos run, say) can take the port meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LinkState {
    target: Option<String>,
    cut: bool,
    target_down: bool,
}

impl LinkState {
    /// Where to forward to, if the link is open.
    fn open_target(&self) -> Option<String> {
        if self.cut || self.target_down {
            None
        } else {
            self.target.clone()
        }
    }
}

#[derive(Debug)]
struct Link {
    port: u16,
    ctl: watch::Sender<LinkState>,
    task: JoinHandle<()>,
}

/// The proxies of every directed link among a set of node ids.
#[derive(Debug)]
pub struct Mesh {
    links: BTreeMap<(u64, u64), Link>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

impl Mesh {
    /// Proxies for every ordered pair of distinct ids (all closed until targets are
    /// set). Must run inside a tokio runtime.
    pub fn new(ids: &[u64]) -> Mesh {
        let pairs: Vec<(u64, u64)> = ids
            .iter()
            .flat_map(|i| ids.iter().filter(move |j| *j != i).map(move |j| (*i, *j)))
            .collect();
        let ports = reserve_ports(pairs.len());
        let links = pairs
            .into_iter()
            .zip(ports)
            .map(|(pair, (port, placeholder))| {
                let (ctl, rx) = watch::channel(LinkState::default());
                let task = tokio::spawn(run_link(port, placeholder, rx));
                (pair, Link { port, ctl, task })
            })
            .collect();
        Mesh { links }
    }

    /// The `QUORATE_PEER_ADDRS` value for node `from`: every peer through its proxy.
    pub fn peer_addrs_env(&self, from: u64) -> String {
        self.links
            .iter()
            .filter(|((i, _), _)| *i == from)
            .map(|((_, j), l)| format!("{j}=127.0.0.1:{}", l.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn update(&self, filter: impl Fn(u64, u64) -> bool, f: impl Fn(&mut LinkState)) {
        for ((i, j), link) in &self.links {
            if filter(*i, *j) {
                link.ctl.send_modify(&f);
            }
        }
    }

    /// Node `node` listens for peers at `raft_addr`.
    pub fn set_target(&self, node: u64, raft_addr: &str) {
        self.update(|_, j| j == node, |s| s.target = Some(raft_addr.to_string()));
    }

    /// Mark node `node` down (its incoming links refuse) or up again.
    pub fn set_down(&self, node: u64, down: bool) {
        self.update(|_, j| j == node, |s| s.target_down = down);
    }

    /// Cut the directed link `from→to` (one-way).
    pub fn cut(&self, from: u64, to: u64) {
        self.update(|i, j| i == from && j == to, |s| s.cut = true);
    }

    /// Cut every link to and from `node`.
    pub fn isolate(&self, node: u64) {
        self.update(|i, j| i == node || j == node, |s| s.cut = true);
    }

    /// Restore every cut link.
    pub fn heal_all(&self) {
        self.update(|_, _| true, |s| s.cut = false);
    }

    /// Links currently cut.
    pub fn cut_links(&self) -> Vec<(u64, u64)> {
        self.links
            .iter()
            .filter(|(_, l)| l.ctl.borrow().cut)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// One link: listen while open, forward each connection to the target, drop
/// everything when the link closes (keeping the port bound, not listening).
async fn run_link(port: u16, placeholder: TcpSocket, mut ctl: watch::Receiver<LinkState>) {
    let mut placeholder = Some(placeholder);
    loop {
        let target = loop {
            if let Some(t) = ctl.borrow_and_update().open_target() {
                break t;
            }
            if ctl.changed().await.is_err() {
                return;
            }
        };
        drop(placeholder.take());
        let listener = match listen(port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("proxy on port {port}: cannot listen ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                changed = ctl.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if ctl.borrow_and_update().open_target().as_ref() != Some(&target) {
                        break;
                    }
                }
                accepted = listener.accept() => {
                    if let Ok((inbound, _)) = accepted {
                        tokio::spawn(pipe(inbound, target.clone(), ctl.clone()));
                    }
                }
            }
        }
        // Closed: stop listening (new connections are refused), keep the port.
        drop(listener);
        placeholder = bind(port).ok();
    }
}

/// A socket bound to the loopback `port`, not listening.
fn bind(port: u16) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok(socket)
}

fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    bind(port)?.listen(256)
}

/// Copy one connection both ways until either side closes or the link closes.
async fn pipe(mut inbound: TcpStream, target: String, mut ctl: watch::Receiver<LinkState>) {
    let closed = ctl.wait_for(|s| s.open_target().as_ref() != Some(&target));
    let forward = async {
        let Ok(mut outbound) = TcpStream::connect(&target).await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    };
    tokio::select! {
        _ = closed => {}
        _ = forward => {}
    }
}

/// `n` loopback ports below the ephemeral range, each held by a bound socket.
fn reserve_ports(n: usize) -> Vec<(u16, TcpSocket)> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low / 2);
    let span = u32::from(ephemeral_low.saturating_sub(low)).max(1);
    // Start somewhere that depends on the process, so concurrent runs rarely probe
    // the same ports.
    let mut candidate = u32::from(low) + (std::process::id() * 97) % span;
    let mut ports = Vec::with_capacity(n);
    let mut tried = 0;
    while ports.len() < n {
        assert!(tried < span, "no {n} free ports below {ephemeral_low}");
        tried += 1;
        let port = candidate as u16;
        candidate = u32::from(low) + (candidate - u32::from(low) + 1) % span;
        // Without SO_REUSEADDR: a port in TIME_WAIT or held elsewhere is skipped.
        let socket = TcpSocket::new_v4().expect("socket");
        if socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .is_ok()
        {
            ports.push((port, socket));
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> (String, JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(port: u16) -> std::io::Result<()> {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    /// Poll until the link's state is observable from outside (connect refused or
    /// round trip works), with a deadline.
    async fn eventually(port: u16, open: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if roundtrip(port).await.is_ok() == open {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "link never became open={open}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn links_forward_refuse_when_cut_and_heal() {
        let (target, _server) = echo_server().await;
        let mesh = Mesh::new(&[1, 2]);
        let port12 = mesh.links[&(1, 2)].port;
        assert!(mesh.peer_addrs_env(1).starts_with("2=127.0.0.1:"));
        // No target yet: refused.
        assert!(roundtrip(port12).await.is_err());
        mesh.set_target(2, &target);
        eventually(port12, true).await;

        // An open connection dies when the link is cut, and new ones are refused.
        let mut held = TcpStream::connect(("127.0.0.1", port12)).await.unwrap();
        held.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        held.read_exact(&mut one).await.unwrap();
        mesh.cut(1, 2);
        assert_eq!(mesh.cut_links(), vec![(1, 2)]);
        let mut rest = Vec::new();
        let _ = held.read_to_end(&mut rest).await; // EOF or reset, not a hang
        eventually(port12, false).await;

        mesh.heal_all();
        eventually(port12, true).await;
        mesh.set_down(2, true);
        eventually(port12, false).await;
        mesh.set_down(2, false);
        eventually(port12, true).await;
    }
}
