//! Generates `ffi/include/krepis.h`, the single source of truth of the ABI.
//!
//! `cargo run -p krepis-abi-header -- <output>` writes the header to `<output>`
//! (`deno task codegen` passes a temporary path and compares, so a stale header
//! is detected without touching the checkout).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `cargo run` sets CARGO_MANIFEST_DIR at run time too. Prefer it to the
    // compile-time value: a target dir shared by several checkouts (CI's
    // warm cache) may hold a binary built from another checkout's path.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let workspace = manifest_dir.join("../..");
    let crate_dir = workspace.join("ffi");
    let output = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir.join("include/krepis.h"));
    let config = match cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("abi-header: cannot read ffi/cbindgen.toml: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(&output);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("abi-header: cbindgen failed: {error}");
            ExitCode::FAILURE
        }
    }
}
