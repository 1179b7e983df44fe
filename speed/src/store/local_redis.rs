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
