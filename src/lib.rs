//! parstat: monthly administrative-reform (PAR) and investment statistics of a Vietnamese
//! province, from the one-stop-shop system to the leaders' inboxes.
//!
//! The library holds every stage; `main.rs` only parses arguments and maps errors to exit codes.

pub mod alloc;
pub mod cli;
pub mod clock;
#[cfg(feature = "cluster")]
pub mod cluster;
// Reading and checking the project files: a crate of its own (crates/config) so that it compiles
// beside the engine; its path stays `parstat::config`.
pub use parstat_config as config;
pub mod deliver;
pub mod demo;
pub mod docs;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod logtail;
pub mod query;
pub mod render;
pub mod serve;
pub mod testing;
pub mod warehouse;
