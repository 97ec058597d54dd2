//! A Redis Sentinel group for tests: one master and two replicas (AOF on,
//! fsync always) and three sentinels (quorum 2), every one its own
//! `redis-server` process on a free loopback port, any of which a test can
//! SIGKILL and restart.
//!
//! Failure detection is tuned for tests (`down-after-milliseconds` 1000,
//! `failover-timeout` 5000): a killed master is replaced within a few
//! seconds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "giftx";

/// One `redis-server` process (data node or sentinel).
struct Node {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments after the program name.
    args: Vec<String>,
}

impl Node {
    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .map_err(|e| e.to_string())?;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("redis-server exited: {status}"));
            }
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("redis-server did not become ready".into())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?
            .get_connection_with_timeout(Duration::from_secs(1))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn data_args(port: u16, dir: &std::path::Path, master: Option<u16>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--dir",
        &dir.display().to_string(),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        &dir.join("redis.log").display().to_string(),
        // Sync a replica at once (the default waits 5 s for more).
        "--repl-diskless-sync-delay",
        "0",
        // DEBUG SLEEP from loopback: tests stall a replica with it.
        "--enable-debug-command",
        "local",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(m) = master {
        a.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
    }
    a
}

/// A master, two replicas and three sentinels. Every process is killed
/// when the group is dropped.
pub struct SentinelGroup {
    data: Vec<Node>,
    sentinels: Vec<Node>,
}

impl SentinelGroup {
    /// Starts the group and waits until every sentinel sees the master,
    /// both replicas and the two other sentinels (so a failover can be
    /// agreed on).
    ///
    /// # Panics
    /// When `redis-server` is missing or the group does not form within
    /// 60 s.
    pub fn start() -> SentinelGroup {
        let mut data = Vec::new();
        let master_port = free_port();
        for i in 0..3 {
            let port = if i == 0 { master_port } else { free_port() };
            let dir = tempfile::tempdir().expect("temp dir");
            let args = data_args(port, dir.path(), (i > 0).then_some(master_port));
            let mut n = Node {
                child: None,
                port,
                dir,
                args,
            };
            n.spawn().expect("start a Redis data node");
            data.push(n);
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let mut n = Node {
                child: None,
                port,
                args: vec![conf.display().to_string(), "--sentinel".into()],
                dir,
            };
            n.spawn().expect("start a sentinel");
            sentinels.push(n);
        }
        let g = SentinelGroup { data, sentinels };
        g.wait_formed(Duration::from_secs(60));
        g
    }

    fn wait_formed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // Both replicas in sync with the master (a replica still
            // waiting for its first sync holds nothing)…
            let synced = self.data[0].connection().is_ok_and(|mut c| {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut c)
                    .is_ok_and(|i| i.matches("state=online").count() == 2)
            });
            // …and every sentinel knowing them and the other sentinels.
            let formed = synced
                && self.sentinels.iter().all(|s| {
                    let Ok(mut c) = s.connection() else {
                        return false;
                    };
                    let mut count = |what: &str| -> usize {
                        redis::cmd("SENTINEL")
                            .arg(what)
                            .arg(MASTER_NAME)
                            .query::<Vec<redis::Value>>(&mut c)
                            .map_or(0, |v| v.len())
                    };
                    count("replicas") == 2 && count("sentinels") == 2
                });
            if formed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel group did not form within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the node the sentinels now name master, if they agree
    /// on one that answers as a master.
    pub fn master_port(&self) -> Option<u16> {
        let mut named = None;
        for s in &self.sentinels {
            let Ok(mut c) = s.connection() else {
                continue;
            };
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER_NAME)
                .query(&mut c)
                .ok()
                .flatten();
            let port = addr?.1;
            if named.is_some_and(|p| p != port) {
                return None;
            }
            named = Some(port);
        }
        let port = named?;
        let node = self.data.iter().find(|n| n.port == port)?;
        let mut c = node.connection().ok()?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
        match role.first() {
            Some(redis::Value::BulkString(b)) if b == b"master" => Some(port),
            _ => None,
        }
    }

    /// The index (0..3) of the data node with this port.
    fn index_of(&self, port: u16) -> usize {
        self.data
            .iter()
            .position(|n| n.port == port)
            .expect("a data node of this group")
    }

    /// SIGKILLs the current master; returns its index for
    /// [`SentinelGroup::restart`].
    ///
    /// # Panics
    /// When there is no agreed master.
    pub fn kill_master(&mut self) -> usize {
        let port = self.master_port().expect("an agreed master");
        let i = self.index_of(port);
        self.data[i].kill();
        i
    }

    /// Waits until the sentinels name a master other than `old_port` that
    /// answers as master; returns its port.
    ///
    /// # Panics
    /// When that does not happen within `timeout`.
    pub fn wait_failover(&self, old_port: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.master_port()
                && p != old_port
            {
                return p;
            }
            assert!(Instant::now() < deadline, "no failover within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the data nodes that are not the current master.
    ///
    /// # Panics
    /// When there is no agreed master.
    pub fn replica_ports(&self) -> Vec<u16> {
        let master = self.master_port().expect("an agreed master");
        self.data
            .iter()
            .map(|n| n.port)
            .filter(|p| *p != master)
            .collect()
    }

    /// The port of data node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.data[i].port
    }

    /// Starts data node `i` again with its data directory (it reloads its
    /// AOF; a former master comes back as master until the sentinels
    /// demote it).
    ///
    /// # Panics
    /// When it does not come back within 10 s.
    pub fn restart(&mut self, i: usize) {
        let n = &mut self.data[i];
        n.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match n.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The log file of data node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.data[i].dir.path().join("redis.log")
    }
}
