//! `streamer`: see the library ([`streamer::run`]) for what it does.

use std::process::ExitCode;

use generator::cli;
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
            cli::run_async("streamer", |shutdown| streamer::run(args, shutdown))
        }
    }
}
