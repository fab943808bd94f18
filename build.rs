//! Build script: folds byte-identical machine code in optimised builds of the binary.
//!
//! Monomorphised generics leave many identical functions (drop glue, iterator adapters), and
//! lld's identical code folding keeps one of each; figures are in bench/README.md.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PARSTAT_NO_ICF");
    // A linker configured later must drop the flag without a `cargo clean`.
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let optimised = env::var("OPT_LEVEL").is_ok_and(|level| level != "0");
    // Rust links x86_64 Linux binaries with its own lld (our dependencies need Rust 1.95); a
    // linker the user chose instead may not know the flag.
    let own_lld = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("link"));
    if optimised && own_lld && env::var_os("PARSTAT_NO_ICF").is_none() {
        // Folding makes two functions share an address; Rust promises nothing about function
        // pointer equality, and rustc's own optimised Windows builds fold the same way.
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    }
}
