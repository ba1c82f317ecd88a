//! Compiles `proto/elton.proto` and `proto/control.proto` with protox (pure Rust), so a fresh machine
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/elton.proto", "proto/control.proto"];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Object bytes stay reference-counted buffers from the socket to the
        // store: no copy per relay hop.
        .bytes(".elton.v1.ObjectChunk.data")
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
