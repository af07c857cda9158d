//! Upstream pools of proxy routes: choosing an upstream (round robin, least
//! connections, consistent hash of the client), passive and active health.
//!
//! Pingora's own load balancer has no least-connections policy, so the three
//! policies live here over one representation: a list of upstreams with a
//! health flag and an in-flight counter each.

use crate::error::{KernelError, KernelResult};
use crate::proto::{HttpLoadBalancing, HttpProxy};
use pingora_core::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an upstream that refused a connection is skipped (when others
/// are available) before it is tried again.
const PASSIVE_DOWN: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Retries beyond the first attempt, at most (Pingora's own cap is 16).
const MAX_RETRIES: u32 = 15;

pub struct Upstream {
    pub label: String,
    address: SocketAddr,
    /// The last active health check's verdict (true until one fails).
    healthy: AtomicBool,
    /// Milliseconds since the pool's epoch before which a passive failure
    /// keeps this upstream out of rotation.
    down_until_ms: AtomicU64,
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Kept-alive connections of the HTTP/1 fast proxy path (and when they
    /// were put back), most recent last.
    idle: std::sync::Mutex<Vec<(tokio::net::TcpStream, Instant)>>,
}

/// Idle upstream connections kept per upstream, at most.
const MAX_IDLE: usize = 128;
/// Idle upstream connections older than this are closed, not reused.
const IDLE_EXPIRY: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A kept-alive connection, if one is idle and still clean: one the
    /// upstream closed, or wrote to while idle (a late byte of an earlier
    /// response, a 408), is dropped, never handed to another request.
    pub fn take_idle(&self) -> Option<tokio::net::TcpStream> {
        loop {
            let (connection, since) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if since.elapsed() > IDLE_EXPIRY {
                continue;
            }
            let mut probe = [0u8; 1];
            match connection.try_read(&mut probe) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Some(connection)
                }
                // EOF, unexpected bytes or an error: not reusable.
                _ => continue,
            }
        }
    }

    /// Keeps a connection whose last response was read completely.
    pub fn put_idle(&self, connection: tokio::net::TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((connection, Instant::now()));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Policy {
    RoundRobin,
    LeastConn,
    Hash,
}

pub struct HealthCheck {
    /// `None`: a TCP connect; else a GET of this path expecting 2xx/3xx.
    path: Option<String>,
    interval: Duration,
}

pub struct Pool {
    pub upstreams: Vec<Upstream>,
    policy: Policy,
    next: AtomicUsize,
    pub timeout: Duration,
    pub retries: u32,
    health: Option<HealthCheck>,
    epoch: Instant,
}

impl Pool {
    pub fn from_proto(proto: &HttpProxy, route: usize) -> KernelResult<Pool> {
        let field = |name: &str| format!("routes[{route}].proxy.{name}");
        let bad = |name: &str, message: String| {
            KernelError::invalid_argument(message).with_detail("field", field(name))
        };
        if proto.upstreams.is_empty() {
            return Err(bad(
                "upstreams",
                format!("{} needs at least one \"host:port\"", field("upstreams")),
            ));
        }
        let mut upstreams = Vec::with_capacity(proto.upstreams.len());
        for label in &proto.upstreams {
            let address = label
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
                .ok_or_else(|| {
                    bad(
                        "upstreams",
                        format!(
                            "{}: {label:?} is not a resolvable \"host:port\"",
                            field("upstreams")
                        ),
                    )
                })?;
            upstreams.push(Upstream {
                label: label.clone(),
                address,
                healthy: AtomicBool::new(true),
                down_until_ms: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                idle: std::sync::Mutex::new(Vec::new()),
            });
        }
        let policy = match HttpLoadBalancing::try_from(proto.load_balancing) {
            Ok(HttpLoadBalancing::RoundRobin) => Policy::RoundRobin,
            Ok(HttpLoadBalancing::LeastConn) => Policy::LeastConn,
            Ok(HttpLoadBalancing::Hash) => Policy::Hash,
            Err(_) => {
                return Err(bad(
                    "loadBalancing",
                    format!("unknown load balancing {}", proto.load_balancing),
                ))
            }
        };
        if proto.retries > MAX_RETRIES {
            return Err(bad(
                "retries",
                format!("{} must be at most {MAX_RETRIES}", field("retries")),
            ));
        }
        let health = proto.health_check.as_ref().map(|check| HealthCheck {
            path: (!check.path.is_empty()).then(|| check.path.clone()),
            interval: match check.interval_ms {
                0 => DEFAULT_HEALTH_INTERVAL,
                ms => Duration::from_millis(u64::from(ms)),
            },
        });
        if let Some(path) = health.as_ref().and_then(|check| check.path.as_deref()) {
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(bad(
                    "healthCheck.path",
                    format!(
                        "{} must be a path like \"/health\", got {path:?}",
                        field("healthCheck.path")
                    ),
                ));
            }
        }
        Ok(Pool {
            upstreams,
            policy,
            next: AtomicUsize::new(0),
            timeout: match proto.timeout_ms {
                0 => DEFAULT_TIMEOUT,
                ms => Duration::from_millis(u64::from(ms)),
            },
            retries: proto.retries,
            health,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn available(&self, index: usize, now_ms: u64) -> bool {
        let upstream = &self.upstreams[index];
        upstream.healthy.load(Ordering::Relaxed)
            && upstream.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Picks an upstream not in `tried`: among the available ones when any
    /// is, else among all (so a pool whose every upstream looks down still
    /// tries, and notices recovery without waiting for a health check).
    pub fn select(&self, client_key: u64, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let untried = |index: &usize| !tried.contains(index);
        let count = self.upstreams.len();
        let any_available = (0..count).filter(untried).any(|i| self.available(i, now));
        let candidate =
            |index: usize| untried(&index) && (!any_available || self.available(index, now));
        match self.policy {
            Policy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..count)
                    .map(|step| (start + step) % count)
                    .find(|&i| candidate(i))
            }
            Policy::LeastConn => {
                // Ties rotate, so equal loads still spread.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..count)
                    .map(|step| (start + step) % count)
                    .filter(|&i| candidate(i))
                    .min_by_key(|&i| self.upstreams[i].in_flight.load(Ordering::Relaxed))
            }
            Policy::Hash => (0..count)
                .filter(|&i| candidate(i))
                .max_by_key(|&i| rendezvous(client_key, &self.upstreams[i].label)),
        }
    }

    /// A connect to `index` failed: skip it for a moment.
    pub fn mark_failed(&self, index: usize) {
        let until = self.now_ms() + PASSIVE_DOWN.as_millis() as u64;
        self.upstreams[index]
            .down_until_ms
            .store(until, Ordering::Relaxed);
    }

    pub fn is_healthy(&self, index: usize) -> bool {
        self.available(index, self.now_ms())
    }

    pub fn peer(&self, index: usize) -> HttpPeer {
        let mut peer = HttpPeer::new(self.upstreams[index].address, false, String::new());
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.total_connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer
    }

    /// Runs the active health checks until `stop` fires (no-op without).
    pub async fn check_health(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(check) = &self.health else { return };
        loop {
            for upstream in &self.upstreams {
                let healthy = probe(upstream.address, check.path.as_deref(), self.timeout).await;
                upstream.healthy.store(healthy, Ordering::Relaxed);
                if healthy {
                    upstream.down_until_ms.store(0, Ordering::Relaxed);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(check.interval) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// One health probe: a TCP connect, or a `GET path` answered with 2xx/3xx.
async fn probe(address: SocketAddr, path: Option<&str>, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let Some(path) = path else {
            return Ok::<bool, std::io::Error>(true);
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: krepis-health\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        // "HTTP/1.x SNN"
        Ok(head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3'))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

/// Rendezvous (highest random weight) hashing: each client picks the
/// upstream with the highest score, so removing one upstream only moves the
/// clients that were on it.
fn rendezvous(client_key: u64, label: &str) -> u64 {
    // FNV-1a over the label, mixed with the client key (splitmix64).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in label.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    let mut z = hash ^ client_key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash key of a client: its IP address.
pub fn client_key(address: Option<std::net::IpAddr>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes: Vec<u8> = match address {
        Some(std::net::IpAddr::V4(ip)) => ip.octets().to_vec(),
        Some(std::net::IpAddr::V6(ip)) => ip.octets().to_vec(),
        None => Vec::new(),
    };
    for byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::HttpHealthCheck;

    fn pool(policy: HttpLoadBalancing, count: usize) -> Pool {
        Pool::from_proto(
            &HttpProxy {
                upstreams: (0..count)
                    .map(|i| format!("127.0.0.1:{}", 9000 + i))
                    .collect(),
                load_balancing: policy as i32,
                ..Default::default()
            },
            0,
        )
        .unwrap()
    }

    #[test]
    fn round_robin_rotates_and_skips_failed() {
        let pool = pool(HttpLoadBalancing::RoundRobin, 3);
        let picks: Vec<_> = (0..6).map(|_| pool.select(0, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        pool.mark_failed(1);
        let picks: Vec<_> = (0..4).map(|_| pool.select(0, &[]).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(
            pool.select(0, &[0, 2]),
            Some(1),
            "all others tried: the failed one"
        );
        assert_eq!(pool.select(0, &[0, 1, 2]), None);
    }

    #[test]
    fn least_conn_prefers_the_idle() {
        let pool = pool(HttpLoadBalancing::LeastConn, 3);
        pool.upstreams[0].in_flight.store(5, Ordering::Relaxed);
        pool.upstreams[2].in_flight.store(1, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(pool.select(0, &[]), Some(1));
        }
        pool.upstreams[1].in_flight.store(9, Ordering::Relaxed);
        assert_eq!(pool.select(0, &[]), Some(2));
    }

    #[test]
    fn hash_is_sticky_and_moves_only_the_lost() {
        let pool = pool(HttpLoadBalancing::Hash, 4);
        let clients: Vec<u64> = (0..200u32)
            .map(|i| client_key(Some(std::net::Ipv4Addr::from(i).into())))
            .collect();
        let before: Vec<_> = clients
            .iter()
            .map(|&c| pool.select(c, &[]).unwrap())
            .collect();
        assert_eq!(
            before,
            clients
                .iter()
                .map(|&c| pool.select(c, &[]).unwrap())
                .collect::<Vec<_>>()
        );
        for upstream in 0..4 {
            assert!(before.contains(&upstream), "every upstream gets clients");
        }
        pool.mark_failed(2);
        for (client, was) in clients.iter().zip(&before) {
            let now = pool.select(*client, &[]).unwrap();
            if *was != 2 {
                assert_eq!(now, *was, "clients of healthy upstreams stay");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn bad_options_name_their_field() {
        let error = Pool::from_proto(&HttpProxy::default(), 3).err().unwrap();
        assert_eq!(error.details["field"], "routes[3].proxy.upstreams");
        let error = Pool::from_proto(
            &HttpProxy {
                upstreams: vec!["nope".into()],
                ..Default::default()
            },
            0,
        )
        .err()
        .unwrap();
        assert_eq!(error.details["field"], "routes[0].proxy.upstreams");
        let error = Pool::from_proto(
            &HttpProxy {
                upstreams: vec!["127.0.0.1:1".into()],
                health_check: Some(HttpHealthCheck {
                    path: "health".into(),
                    interval_ms: 0,
                }),
                ..Default::default()
            },
            0,
        )
        .err()
        .unwrap();
        assert_eq!(error.details["field"], "routes[0].proxy.healthCheck.path");
    }

    #[tokio::test]
    async fn health_checks_follow_the_upstream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = [0u8; 512];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
        assert!(probe(address, Some("/health"), Duration::from_secs(2)).await);
        assert!(probe(address, None, Duration::from_secs(2)).await);
        server.abort();
        let _ = server.await;
        assert!(!probe(address, None, Duration::from_secs(2)).await);
    }
}
