//! `faceage eval DATA`: how well this board reads labelled photos, through `classify`'s path.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use faceage_device::eval::{EvalReport, Scene, faceless, read_samples, select, write_readings};
use faceage_device::labels::{Split, load_dataset};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A UTKFace-style folder (labels in the names) or a CSV manifest `path,age,gender[,race]`.
    data: PathBuf,
    /// Only this part of the data, by the split the model was trained with (its file records
    /// the seed; --seed overrides). Without it, every image.
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Split seed, for files that do not record one.
    #[arg(long)]
    seed: Option<u64>,
    /// Place each photo on a 640x480 camera-like frame, a quarter of its height, before
    /// reading it: the same faces at kiosk distance.
    #[arg(long)]
    scene: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Images read at once (each thread loads its own detector and model).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the images in which no face was found to this file, one path a line.
    #[arg(long)]
    list_faceless: Option<PathBuf>,
    /// Write every image's label and reading to this CSV file (path, age, gender, race,
    /// outcome, read_age, age_std, p_female, then the face's share in each age band as the counts
    /// add it: band_0-2 ... band_60+): for looking past the averages.
    #[arg(long)]
    readings: Option<PathBuf>,
    #[command(flatten)]
    models: ModelArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pipelines =
        (0..args.threads.max(1)).map(|_| args.models.load_pipeline()).collect::<Result<Vec<_>>>()?;
    let (samples, rejected) = load_dataset(&args.data)?;
    for r in rejected.iter().take(5) {
        eprintln!("skipped {r}");
    }
    if rejected.len() > 5 {
        eprintln!("skipped {} more entries with unusable labels", rejected.len() - 5);
    }
    let split = match args.split {
        None => None,
        Some(split) => {
            let recorded = pipelines[0].model.contract().split_seed;
            let Some(seed) = args.seed.or(recorded) else {
                bail!(
                    "{}: the model records no split seed; give --seed to choose the {split:?} split",
                    args.models.model_path().display()
                );
            };
            Some((split, seed))
        }
    };
    let samples = select(samples, split);
    if samples.is_empty() {
        bail!("{}: no labelled images to read in this split", args.data.display());
    }
    let scene = args.scene.then(Scene::default);
    let total = samples.len();
    let progress = |done: usize| {
        if done.is_multiple_of(200) || done == total {
            eprint!("\rread {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let outcomes = read_samples(pipelines, &samples, scene.as_ref(), &progress);
    let report = EvalReport::new(&samples, &outcomes);
    for r in &report.unreadable {
        eprintln!("skipped {r}");
    }
    if let Some(path) = &args.list_faceless {
        let mut out = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot write the list: {e}", path.display()))?;
        for p in faceless(&samples, &outcomes) {
            writeln!(out, "{}", p.display())?;
        }
    }
    if let Some(path) = &args.readings {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot write the readings: {e}", path.display()))?;
        write_readings(&samples, &outcomes, std::io::BufWriter::new(file))
            .map_err(|e| anyhow::anyhow!("{}: cannot write the readings: {e}", path.display()))?;
    }
    if args.json {
        let json = serde_json::json!({
            "model": args.models.model_path(),
            "data": args.data,
            "split": split.map(|(s, seed)| serde_json::json!({"part": s, "seed": seed})),
            "scene": scene,
            "labels_rejected": rejected.len(),
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let what = match split {
            Some((s, seed)) => format!("{s:?} split (seed {seed})").to_lowercase(),
            None => "all images".into(),
        };
        let how = if scene.is_some() { "each placed on a 640x480 frame" } else { "as they are" };
        println!("{}: {what}, {how}; model {}", args.data.display(), args.models.model_path().display());
        if !rejected.is_empty() {
            println!("{} entries skipped for unusable labels", rejected.len());
        }
        print!("{}", report.table());
    }
    Ok(if report.overall.faces == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
