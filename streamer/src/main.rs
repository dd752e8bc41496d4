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

/// glibc's malloc maps an allocation of 128 KiB or more on its own and
/// unmaps it when freed, but after the first such free it raises that
/// threshold (up to 32 MiB), and the big buffers of the next chunks (a
/// chunk's columns, a batch's counters) then land in its heaps, which keep
/// what they once held. Fixed at 128 KiB, the freed buffers go back to the
/// system: in by-hand runs of backlog A (600 000 rows, two loaders) the
/// peak RSS was 106–111 MB with it and 110–153 MB without, for 0.15–0.35 s
/// more of the streamer's CPU (fresh pages; the benchmark's figures are in
/// docs/performance_metrics.md). glibc reads the fixed threshold from the
/// environment when a process starts (this crate has no `unsafe` for
/// `mallopt`), so the streamer starts itself again, once, with it set; a
/// value the operator set is kept, and if the new start fails this one goes
/// on as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_big_buffers_to_the_system() {
    use std::os::unix::process::CommandExt;
    const THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";
    if std::env::var_os(THRESHOLD).is_some() {
        return;
    }
    let (Ok(exe), Some(arg0)) = (std::env::current_exe(), std::env::args_os().next()) else { return };
    // exec returns only when it failed.
    let _ =
        std::process::Command::new(exe).arg0(arg0).args(std::env::args_os().skip(1)).env(THRESHOLD, "131072").exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_big_buffers_to_the_system() {}

fn main() -> ExitCode {
    return_big_buffers_to_the_system();
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
