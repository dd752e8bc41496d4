//! `streamer`: see the library ([`streamer::run`]) for what it does, and
//! [`streamer::ops`] for the operator commands.

use std::process::ExitCode;

use runtime::config::{config_exit, load_dotenv, parse_or_exit};
use streamer::{ops, Cli, Command};

/// Runs an async command of the streamer; a failure is logged under this
/// binary's name.
fn run<T, Fut>(name: &'static str, task: impl FnOnce(tokio_util::sync::CancellationToken) -> Fut) -> ExitCode
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    runtime::shutdown::run(task, |e| tracing::error!(error = format!("{e:#}"), command = name, "streamer failed"))
}

fn main() -> ExitCode {
    if let Err(e) = load_dotenv() {
        return config_exit(&e);
    }
    let cli: Cli = parse_or_exit();
    match cli.command() {
        Command::Run(args) => {
            let config = match args.config() {
                Ok(config) => config,
                Err(e) => return config_exit(&e),
            };
            if config.progress {
                runtime::logging::init_to(config.log_format, streamer::observe::progress::BarWriter::make);
            } else {
                runtime::logging::init(config.log_format);
            }
            run("run", |shutdown| streamer::run(config, shutdown))
        }
        Command::Status(args) => run("status", |_| async move {
            let status = ops::status(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            match &status.database_error {
                Some(e) => anyhow::bail!("the database part of the status is missing: {e}"),
                None => Ok(()),
            }
        }),
        Command::Reprocess(args) => run("reprocess", |_| async move {
            let names = ops::reprocess(&args)?;
            println!("{} file(s) will be loaded again by the stream:", names.len());
            for name in names {
                println!("  {name}");
            }
            Ok(())
        }),
        Command::Verify(args) => {
            run("verify", |_| async move {
                let v = ops::verify(&args).await?;
                print!("{v}");
                if v.rows_differing + v.rows_missing > 0 {
                    anyhow::bail!(
                        "events differs from the files: {} rows differ, {} are missing",
                        v.rows_differing,
                        v.rows_missing
                    );
                }
                if v.files_absent + v.files_changed > 0 {
                    println!("(the files that were not re-read may have overwritten some keys: differences there are possible)");
                }
                Ok(())
            })
        }
        Command::Report(args) => run("report", |_| async move { streamer::ops::report::report(&args).await }),
        Command::Reset(args) => run("reset", |_| async move {
            let reset = ops::reset(&args).await?;
            match reset.checkpoint_id {
                Some(id) => println!("checkpoint {id} forgotten"),
                None => println!("no checkpoint to forget"),
            }
            if reset.tables_truncated {
                println!("{} emptied", streamer::ops::TABLES);
            } else if reset.files_forgotten > 0 {
                println!(
                    "{} files forgotten by the registry; the next start loads every file in the data folder",
                    reset.files_forgotten
                );
            }
            Ok(())
        }),
    }
}
