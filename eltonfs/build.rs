//! Link settings of the `elton` binary.
//!
//! `elton` is one 40 MB binary for servers and for short CLI calls, and a
//! short call (`elton ps`) spent about a fifth of its CPU in the dynamic
//! loader applying ~46,000 relative relocations one by one (`perf`,
//! `docs/benchmarks.md`, k2i). Packed relative relocations (`DT_RELR`:
//! GNU ld ≥ 2.38, glibc ≥ 2.36) encode them as bitmaps the loader applies
//! in a tight loop. Only the final link of this binary changes, so no
//! other crate is rebuilt; the position-independent executable (ASLR)
//! stays.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && std::env::var_os("ELTON_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bin=elton=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-env-changed=ELTON_NO_RELR");
    println!("cargo:rerun-if-changed=build.rs");
}
