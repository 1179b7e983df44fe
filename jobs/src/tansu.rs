//! A `tansu` broker (a Kafka-compatible broker from the crates registry, not written here) as a
//! child process on loopback, storing on SQLite so that it keeps its data across restarts:
//! the tests and benchmarks run against it as well as against the embedded mock cluster.
//! `scripts/setup.sh` installs it once into `~/.cache/duet-tools` (outside the clone).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the broker binary is: `$DUET_TANSU`, else `bin/tansu` under `$DUET_TOOLS` or
/// `~/.cache/duet-tools` (where `scripts/setup.sh` installs it), else `tansu` on `PATH`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DUET_TANSU") {
        return p.into();
    }
    let tools = std::env::var_os("DUET_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/duet-tools")));
    if let Some(p) = tools.map(|t| t.join("bin/tansu"))
        && p.exists()
    {
        return p;
    }
    "tansu".into()
}

/// A running `tansu broker` on 127.0.0.1 with its SQLite data in a folder of its own. Killed
/// when dropped.
#[derive(Debug)]
pub struct LocalTansu {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl LocalTansu {
    /// Starts a broker keeping its data in `dir` on a free port and creates `topics` with
    /// `partitions` partitions each.
    pub fn start(dir: &Path, topics: &[String], partitions: i32) -> Result<LocalTansu> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // a free port found here may be taken by another process before tansu binds it: then
        // tansu exits at once, and another port is tried
        let mut attempt = 0;
        let broker = loop {
            attempt += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("find a free port")?
                .port();
            let mut broker = LocalTansu {
                child: None,
                port,
                dir: dir.to_path_buf(),
            };
            match broker.spawn() {
                Ok(()) => break broker,
                Err(e) if attempt < 3 && broker.exited() => {
                    tracing::warn!(port, error = %e, "tansu did not start; trying another port");
                }
                Err(e) => return Err(e),
            }
        };
        let port = broker.port;
        for t in topics {
            let out = Command::new(binary())
                .args(["topic", "create", t, "--partitions"])
                .arg(partitions.to_string())
                .arg("--broker")
                .arg(format!("tcp://127.0.0.1:{port}"))
                .output()
                .with_context(|| format!("run {} topic create", binary().display()))?;
            if !out.status.success() {
                bail!(
                    "tansu topic create {t}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).context("create tansu.log")?;
        let child = Command::new(binary())
            .current_dir(&self.dir)
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("tansu.log")?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (scripts/setup.sh installs it)",
                    binary().display()
                )
            })?;
        self.child = Some(child);
        let start = Instant::now();
        let log_path = self.dir.join("tansu.log");
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.exited() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                bail!(
                    "tansu on port {} exited before it listened (log: {}): {tail}",
                    self.port,
                    log_path.display()
                );
            }
            // a loaded machine (the test suite on two cores) can take seconds to start it
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "tansu on port {} did not listen within 30 s (log: {})",
                    self.port,
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether the broker process was started and has exited.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// `bootstrap.servers` of the broker.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for LocalTansu {
    fn drop(&mut self) {
        self.kill();
    }
}
