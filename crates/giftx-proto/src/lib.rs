//! Generated code for the `giftx.v1` API: messages, client and server stubs,
//! and the encoded file descriptor set that server reflection serves.
//!
//! Nothing here is written by hand but [`codec`] (prost's codec answering
//! INVALID_ARGUMENT for a message that does not parse); the source of
//! truth is `proto/giftx/v1`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod codec;

/// The `giftx.v1` package.
pub mod v1 {
    tonic::include_proto!("giftx.v1");
}

/// The encoded `FileDescriptorSet` of `giftx.v1` (for tonic-reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("giftx_v1_descriptor");
