//! The streamer's integration tests, one binary: the pipeline end to end
//! through the library and the binary, against a real PostgreSQL (one fresh
//! database per test, or a throwaway cluster for the tests that stop and
//! reconfigure the server), checked against the oracle of
//! docs/architecture.md. `common` holds the helpers; every other module is
//! one area.

mod common;

mod analytics;
mod big_file;
mod chaos;
mod citus;
mod cli;
mod dashboard;
mod deploy;
mod faults;
mod fs_faults;
mod fuzz;
mod hostile;
mod http;
mod inputs;
mod live_kill;
mod ops;
mod poison;
mod replay;
mod reports;
mod stream;
mod tls;
mod torture;
mod upgrade;
