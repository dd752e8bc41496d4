//! `generator`: see the library ([`generator::run`]) for what it does.

use std::process::ExitCode;

use generator::cli;
use generator::Config;

fn main() -> ExitCode {
    if let Err(e) = cli::load_dotenv() {
        return cli::config_exit(&e);
    }
    let cfg: Config = cli::parse_or_exit();
    if let Err(e) = cfg.validate() {
        return cli::config_exit(&e);
    }
    cli::init_logging(cfg.log_format);
    cli::run_async("generator", |shutdown| generator::run(cfg, shutdown))
}
