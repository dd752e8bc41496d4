//! `streamer`: see the library ([`streamer::run`]) for what it does.

use std::process::ExitCode;

use generator::cli;
use generator::ConfigError;
use streamer::{Cli, Command};

fn main() -> ExitCode {
    if let Err(e) = cli::load_dotenv() {
        return cli::config_exit(&e);
    }
    let cli: Cli = cli::parse_or_exit();
    match cli.command() {
        Command::Run(args) => {
            if let Err(e) = args.validate() {
                return cli::config_exit(&e);
            }
            cli::init_logging(args.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let shutdown = cli::shutdown_on_signals();
                streamer::run(args, shutdown).await
            });
            // Blocking reads still running after a shutdown are not waited for.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => match e.downcast_ref::<ConfigError>() {
                    Some(config) => cli::config_exit(config),
                    None => {
                        tracing::error!(error = format!("{e:#}"), "streamer failed");
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
    }
}
