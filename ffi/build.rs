//! Build script: compiles the control-plane schema with prost and embeds the
//! ABI hash (SHA-256 of ffi/include/krepis.h, line endings normalised to LF)
//! so the library can report the ABI it was built against.

use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let protos = [
        "error.proto",
        "kernel.proto",
        "context.proto",
        "buffers.proto",
        "store.proto",
        "guard.proto",
        "transport.proto",
        "http.proto",
        "runtimes.proto",
    ]
    .map(|file| manifest_dir.join("proto/krepis/v1").join(file));
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    prost_build::Config::new()
        .compile_protos(&protos, &[manifest_dir.join("proto")])
        .expect("compiling ffi/proto (is protoc installed? apt-get install protobuf-compiler)");

    let header = manifest_dir.join("include/krepis.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let text = std::fs::read(&header).expect("ffi/include/krepis.h exists (deno task codegen)");
    let normalised: Vec<u8> = text.into_iter().filter(|&byte| byte != b'\r').collect();
    let hash = Sha256::digest(&normalised);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    println!("cargo:rustc-env=KREPIS_ABI_HASH={hex}");
}
