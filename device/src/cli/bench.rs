//! `faceage bench`: what each model costs on this board, so a user can pick a file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use faceage_device::AgeGenderModel;
use faceage_device::bench::{Timing, model_figures, set_inference_threads};

#[derive(clap::Args)]
pub struct Args {
    /// Model files to compare (repeat the option).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Thread counts to try for tract's matrix products, e.g. `1,4`.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Timed single-face runs per model and thread count.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Faces per call for the throughput figure.
    #[arg(long, default_value_t = 8)]
    batch: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let arch = std::env::consts::ARCH;
    println!(
        "{:<40} {:>9} {:>15} {:>7} {:>12} {:>9} {:>12}",
        "model", "bytes", "format", "threads", "ms/face p50", "p90", "faces/s @batch"
    );
    for path in &args.models {
        let model = AgeGenderModel::load(path)?;
        for &threads in &args.threads {
            set_inference_threads(threads);
            let f = model_figures(&model, args.runs, args.batch)?;
            println!(
                "{:<40} {:>9} {:>15} {:>7} {:>12.3} {:>9.3} {:>12.0}",
                path.display(),
                model.file_size(),
                model.contract().quant_format.as_str(),
                threads,
                Timing::ms(f.per_face.median),
                Timing::ms(f.per_face.p90),
                f.faces_per_second()
            );
        }
    }
    println!("({arch}; {} single-face runs per row, throughput at {} faces per call)", args.runs, args.batch);
    Ok(ExitCode::SUCCESS)
}
