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
    /// Summarise counts logs: a table, JSON, or a PNG chart of people per hour.
    Report(cli::report::Args),
    /// Time models (per-face latency, throughput) or the whole pipeline on this machine.
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Classify(a) => cli::classify::run(a),
        Command::Run(a) => cli::run::run(*a),
        Command::Report(a) => cli::report::run(a),
        Command::Bench(a) => cli::bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
