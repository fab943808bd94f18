//! The `parstat` binary: parse the command line, run it, turn the outcome into an exit code.

use std::process::ExitCode;

// Faster than glibc's malloc for a load's many short-lived values on several threads, and it
// returns freed memory sooner (bench/extract_pg.sh measures both).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    parstat::cli::main()
}
