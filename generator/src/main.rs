//! `generator`: see the library ([`generator::run`]) for what it does.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use generator::config::GeneratorCommand;
use generator::Config;
use runtime::config::{config_exit, load_dotenv, parse_or_exit};

fn main() -> ExitCode {
    if let Err(e) = load_dotenv() {
        return config_exit(&e);
    }
    let cfg: Config = parse_or_exit();
    let report = |e: &anyhow::Error| tracing::error!(error = format!("{e:#}"), "generator failed");
    if let Some(GeneratorCommand::Replay(args)) = cfg.command {
        let progress_bar = std::io::stderr().is_terminal();
        let settings = match args.settings(chrono::Utc::now(), progress_bar) {
            Ok(s) => s,
            Err(e) => return config_exit(&e),
        };
        runtime::logging::init(args.log_format);
        return runtime::shutdown::run(|shutdown| generator::replay::replay(settings, shutdown, |_| {}), report);
    }
    if let Err(e) = cfg.validate() {
        return config_exit(&e);
    }
    runtime::logging::init(cfg.log_format);
    runtime::shutdown::run(|shutdown| generator::run(cfg, shutdown), report)
}
