//! Integration tests, compiled as one binary: each module drives the real `parstat` binary
//! or the library against real files, PostgreSQL and MariaDB.

mod backfill;
mod check;
#[cfg(feature = "cluster")]
mod cluster;
mod deliver;
mod demo;
mod extract;
mod faults;
mod hostile;
mod hostile_sql;
mod http_faults;
mod personal;
mod recovery;
mod report;
mod s3;
mod schedule;
mod security;
mod serve;
mod tls;
mod util;
mod workbench;
