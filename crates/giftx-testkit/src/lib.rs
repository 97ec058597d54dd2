//! Test support for giftx.
//!
//! - [`redis`]: [`RedisServer`] starts a private `redis-server` on a free
//!   loopback port in a temporary directory (AOF on, `appendfsync always`),
//!   and can kill it with SIGKILL and start it again on the same port and
//!   data. Never touches the Redis on 6379.

pub mod redis;

pub use redis::RedisServer;
