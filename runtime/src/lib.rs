//! What the pipeline's binaries share, so that the generator and the
//! streamer behave alike:
//! - [`config`]: settings from `.env`, then the environment, then flags;
//!   one-line configuration errors and their exit code;
//! - [`logging`]: `tracing` to stderr, text or JSON;
//! - [`shutdown`]: the future that fires on SIGINT or SIGTERM, and the
//!   runtime that runs a program's task with it;
//! - [`publish`]: atomic, durable publication of a file into a folder
//!   another process reads.

pub mod config;
pub mod logging;
pub mod publish;
pub mod shutdown;

pub use config::{ConfigError, EXIT_CONFIG};
pub use logging::LogFormat;
