//! `faceage report LOG...`: what the counts logs say over a time range.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use faceage_device::report::{GroupBy, read_logs, summarize, summarize_by};
use jiff::Timestamp;

#[derive(clap::Args)]
pub struct Args {
    /// Counts logs (JSON Lines or CSV), e.g. counts-*.jsonl.
    #[arg(required = true)]
    logs: Vec<PathBuf>,
    /// Only intervals starting at or after this time (RFC 3339, e.g. 2026-11-29T08:00:00Z).
    #[arg(long)]
    from: Option<Timestamp>,
    /// Only intervals starting before this time.
    #[arg(long)]
    to: Option<Timestamp>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw people per hour (by gender and age band) into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Split the totals per site or board (logs from `faceage collect`), or per camera.
    #[arg(long, value_enum)]
    by: Option<GroupBy>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (records, warnings) = read_logs(&args.logs)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let summary = match args.by {
        Some(by) => summarize_by(&records, args.from, args.to, by),
        None => summarize(&records, args.from, args.to),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    if let Some(path) = &args.plot {
        summary.chart().save(path).with_context(|| format!("{}: cannot write", path.display()))?;
        eprintln!("chart: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
