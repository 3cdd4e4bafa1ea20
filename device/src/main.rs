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
    /// Time models (per-face latency, throughput) on this machine.
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Classify(a) => cli::classify::run(a),
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
