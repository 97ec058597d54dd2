//! The giftx domain, free of I/O, protobuf and Redis.
//!
//! - [`code`]: printed credentials (codes, login keys), their check
//!   character, generation and the forgiving parser.
//! - [`hash`]: keyed hashes of codes, login keys and emails; the HMAC key
//!   never leaves the process.
//! - [`money`]: [`Money`] and the ISO 4217 table.
//! - [`clock`]: the injectable [`Clock`] (system and manual).
//! - [`model`]: campaigns, options, batches, exchanges, deliverables and
//!   their validated identifiers.
//! - [`error`]: the domain's error enums.
//! - [`random`]: the OS CSPRNG's bytes, drawn a block at a time.

pub mod clock;
pub mod code;
pub mod error;
pub mod hash;
pub mod model;
pub mod money;
pub mod random;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use code::{Code, LoginKey, Series};
pub use error::{DomainError, FieldViolation};
pub use hash::{Digest, Hasher, KeyRing, Secret};
pub use money::{Currency, Money};
