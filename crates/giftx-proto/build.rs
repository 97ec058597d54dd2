//! Compiles `proto/giftx/v1` with protox (pure Rust): no system protoc.

use prost::Message as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "common.proto",
        "issuance.proto",
        "exchange.proto",
        "expiry.proto",
        "operations.proto",
        "access.proto",
    ]
    .map(|f| root.join("giftx/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves this set; protox hands it to us already parsed, so it
    // is written here rather than by tonic-prost-build.
    std::fs::write(out.join("giftx_v1_descriptor.bin"), fds.encode_to_vec())?;
    // A request that does not parse is the caller's mistake:
    // INVALID_ARGUMENT, not tonic-prost's INTERNAL (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::GiftxCodec")
        .compile_fds(fds)?;
    Ok(())
}
