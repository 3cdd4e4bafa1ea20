//! `faceage-host`: train, evaluate and export the age and gender model.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Training allocates and frees tens of megabytes per layer per step. glibc (and jemalloc's
// defaults) hand such blocks back to the kernel and pay a page fault per 4 KiB to get them
// back: 2.2 M faults and ~45% of a training step (measured, `perf stat -e page-faults`). So:
// jemalloc, told to keep freed memory and back it with huge pages, and zeroed allocations
// (candle's gradient buffers) zeroed with memset instead of jemalloc's madvise, which would
// fault every page in again.
struct TrainingAllocator;

// SAFETY: every call forwards to jemalloc; `alloc_zeroed` zeroes what `alloc` returned.
unsafe impl std::alloc::GlobalAlloc for TrainingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let ptr = unsafe { tikv_jemallocator::Jemalloc.alloc(layout) };
        if !ptr.is_null() {
            unsafe { ptr.write_bytes(0, layout.size()) };
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: TrainingAllocator = TrainingAllocator;

#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"thp:always,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

#[derive(Parser)]
// A later option overrides an earlier one, so a script's settings can be overridden by the
// options it passes on (scripts/train-distilled.sh and its FACEAGE_TRAIN_ARGS).
#[command(
    name = "faceage-host",
    version,
    about = "Train, evaluate and export the faceage age/gender model",
    args_override_self = true
)]
struct Args {
    /// Worker threads for training maths and crop building [default: all cores].
    #[arg(long, global = true, env = "FACEAGE_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}
#[derive(Subcommand)]
enum Command {
    /// Train a model on a UTKFace folder or a CSV manifest.
    Train(commands::TrainArgs),
    /// Age MAE and gender accuracy of a run's best checkpoint, with breakdowns.
    Eval(commands::EvalArgs),
    /// Fit a run's age map (the correction of the age reading) on its validation split again.
    FitAgeMap(commands::FitAgeMapArgs),
    /// Write the ONNX model file of a run and check it with the device library.
    Export(commands::ExportArgs),
    /// Measure model files with the device library on a held-out split, against a reference.
    Verify(commands::VerifyArgs),
    /// Bring a model file from an earlier exporter up to the current contract (adds the
    /// per-band age shares the counts are made from), checked with the device library.
    Upgrade(commands::UpgradeArgs),
    /// Time training steps (forward + backward + AdamW) and print images per second.
    BenchTrain(commands::BenchTrainArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.threads {
        // SAFETY: set before any other thread exists; candle reads it to size its gemm calls.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let result = match args.command {
        Command::Train(a) => commands::train(a),
        Command::Eval(a) => commands::eval(a),
        Command::Export(a) => commands::export(a),
        Command::Verify(a) => commands::verify(a),
        Command::BenchTrain(a) => commands::bench_train(a),
        Command::FitAgeMap(a) => commands::fit_age_map(a),
        Command::Upgrade(a) => commands::upgrade(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
