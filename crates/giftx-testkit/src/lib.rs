//! Test support for giftx.
//!
//! - [`redis`]: [`RedisServer`] starts a private `redis-server` on a free
//!   loopback port in a temporary directory (AOF on, `appendfsync always`),
//!   and can kill it with SIGKILL and start it again on the same port and
//!   data. Never touches the Redis on 6379.
//! - [`app`]: [`TestApp`] runs giftxd in-process on a free port with a
//!   manual clock (embedded ledger, or a private Redis) and hands out
//!   typed clients.
//! - [`pki`]: [`TestPki`] makes a CA, a server certificate for
//!   `127.0.0.1` and client certificates with the `openssl` CLI.
//! - [`sentinel`]: [`SentinelGroup`] runs a master, two replicas and three
//!   sentinels, and can kill and restart any data node.

pub mod app;
pub mod pki;
pub mod redis;
pub mod sentinel;

pub use app::{TestApp, TestAppOptions};
pub use pki::TestPki;
pub use redis::RedisServer;
pub use sentinel::SentinelGroup;
