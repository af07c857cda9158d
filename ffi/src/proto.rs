//! The control-plane schema (`ffi/proto/krepis/v1/*.proto`), compiled by prost
//! in `build.rs`. The TypeScript side is generated from the same files.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/krepis.v1.rs"));
