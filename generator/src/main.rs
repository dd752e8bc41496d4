//! `generator`: see the library ([`generator::run`]) for what it does.

use std::process::ExitCode;

use generator::cli;
use generator::{Config, ConfigError};

fn main() -> ExitCode {
    if let Err(e) = cli::load_dotenv() {
        return cli::config_exit(&e);
    }
    let cfg: Config = cli::parse_or_exit();
    if let Err(e) = cfg.validate() {
        return cli::config_exit(&e);
    }
    cli::init_logging(cfg.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = cli::shutdown_on_signals();
        generator::run(cfg, shutdown).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config) => cli::config_exit(config),
            None => {
                tracing::error!(error = format!("{e:#}"), "generator failed");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
