//! `generator`: see the library ([`generator::run`]) for what it does.

use std::process::ExitCode;

use generator::cli;
use std::io::IsTerminal as _;

use generator::config::GeneratorCommand;
use generator::Config;

fn main() -> ExitCode {
    if let Err(e) = cli::load_dotenv() {
        return cli::config_exit(&e);
    }
    let cfg: Config = cli::parse_or_exit();
    if let Some(GeneratorCommand::Replay(args)) = cfg.command {
        let progress_bar = std::io::stderr().is_terminal();
        let settings = match args.settings(chrono::Utc::now(), progress_bar) {
            Ok(s) => s,
            Err(e) => return cli::config_exit(&e),
        };
        cli::init_logging(args.log_format);
        return cli::run_async("generator replay", |shutdown| generator::replay::replay(settings, shutdown, |_| {}));
    }
    if let Err(e) = cfg.validate() {
        return cli::config_exit(&e);
    }
    cli::init_logging(cfg.log_format);
    cli::run_async("generator", |shutdown| generator::run(cfg, shutdown))
}
