//! A `redis-server` child process on loopback, for tests, benchmarks and trying the Redis
//! store without running a server by hand.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A `redis-server` (Debian's `redis-server` package, found on `PATH`) listening on
/// 127.0.0.1 with its data (append-only file on, `appendfsync everysec` as in production) in
/// a folder of its own. Killed when dropped.
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

fn failed(detail: impl Into<String>, source: Option<std::io::Error>) -> Error {
    Error::RedisServer {
        detail: detail.into(),
        source,
    }
}

impl LocalRedis {
    /// Starts a server keeping its data in `dir` on a free port, and waits (up to 10 s) until
    /// it answers `PING`.
    pub fn start(dir: &Path) -> Result<LocalRedis> {
        LocalRedis::start_with(dir, &[])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Result<LocalRedis> {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("create {}", dir.display()), Some(e)))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| failed("find a free port", Some(e)))?
            .port();
        let mut server = LocalRedis {
            child: None,
            port,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                "redis.log",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                failed(
                    "start `redis-server` (Debian package redis-server; scripts/setup.sh installs it)",
                    Some(e),
                )
            })?;
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(failed(
                    format!(
                        "redis-server on port {} did not answer within 10 s (log: {})",
                        self.port,
                        self.dir.join("redis.log").display()
                    ),
                    None,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// The server's URL, `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: what its append-only file had not written is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `redis-server`s on 127.0.0.1 (no replicas), made with
/// `redis-cli --cluster create` (Debian's `redis-tools`, installed with `redis-server`), for
/// tests. Killed when dropped.
#[derive(Debug)]
pub struct LocalRedisCluster {
    nodes: Vec<LocalRedis>,
}

impl LocalRedisCluster {
    /// Starts `n` (at least 3) nodes with their data under `dir` and joins them into one
    /// cluster whose slots they share; waits until the cluster is ready.
    pub fn start(dir: &Path, n: usize) -> Result<LocalRedisCluster> {
        let nodes = (0..n.max(3))
            .map(|i| {
                LocalRedis::start_with(
                    &dir.join(format!("node-{i}")),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| failed("run `redis-cli --cluster create`", Some(e)))?;
        if !out.status.success() {
            return Err(failed(
                format!(
                    "redis-cli --cluster create: {}",
                    String::from_utf8_lossy(&out.stdout)
                ),
                None,
            ));
        }
        let cluster = LocalRedisCluster { nodes };
        let start = Instant::now();
        while !cluster.ready() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(failed("the cluster did not become ready within 20 s", None));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    fn ready(&self) -> bool {
        self.nodes.iter().all(|n| {
            Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        })
    }

    /// The cluster's URL for `[store] url`: `redis-cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        format!(
            "redis-cluster://{}",
            self.nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port))
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}
