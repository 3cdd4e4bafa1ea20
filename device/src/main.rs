//! `faceage`: the board's command line. Parses arguments, calls the library, prints.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "faceage",
    version,
    about = "Age and gender of the faces in front of a camera, on the board"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the faces in photos with their age and gender.
    Classify(cli::classify::Args),
    /// Count the people in front of a camera (or in a video), with an optional kiosk view.
    Run(Box<cli::run::Args>),
    /// Measure the readings on labelled photos (a UTKFace folder or a CSV manifest).
    Eval(cli::eval::Args),
    /// Summarise counts logs: a table, JSON, or a PNG chart of people per hour.
    Report(cli::report::Args),
    /// Time models (per-face latency, throughput) or the whole pipeline on this machine.
    Bench(cli::bench::Args),
    /// Keep every board's counts from an MQTT broker, one counts log per board.
    #[cfg(feature = "mqtt")]
    Collect(cli::collect::Args),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !matches!(args.command, Command::Run(_)) {
        stop_quietly_on_a_closed_pipe();
    }
    let result = match args.command {
        Command::Classify(a) => cli::classify::run(a),
        Command::Run(a) => cli::run::run(*a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Bench(a) => cli::bench::run(a),
        #[cfg(feature = "mqtt")]
        Command::Collect(a) => cli::collect::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The printing commands end quietly when their reader goes away (`faceage classify … | head`),
/// as Unix tools do, instead of panicking on the broken pipe. `run` keeps Rust's default (SIGPIPE
/// ignored, write errors reported) so that a vanished pipe can never kill the counting service.
fn stop_quietly_on_a_closed_pipe() {
    // SAFETY: called at the start of main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
