//! `faceage classify PHOTO...`: faces, age and gender, as a table or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use faceage_device::imaging::load_rgb;
use faceage_device::pipeline::FaceSummary;
use serde::Serialize;

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Photos to read (JPEG, PNG, GIF).
    #[arg(required = true)]
    photos: Vec<PathBuf>,
    /// Print JSON (one array, an object per photo) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    models: ModelArgs,
}

#[derive(Serialize)]
struct PhotoResult {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    faces: Vec<FaceSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut pipeline = args.models.load_pipeline()?;
    let mut results = Vec::new();
    for photo in &args.photos {
        let file = photo.display().to_string();
        let outcome = load_rgb(photo).and_then(|frame| {
            let faces = pipeline.analyze(&frame)?;
            Ok((frame.width(), frame.height(), faces.iter().map(FaceSummary::from).collect()))
        });
        let result = match outcome {
            Ok((w, h, faces)) => PhotoResult { file, width: Some(w), height: Some(h), faces, error: None },
            Err(e) => {
                eprintln!("error: {e:#}");
                PhotoResult {
                    file,
                    width: None,
                    height: None,
                    faces: Vec::new(),
                    error: Some(format!("{e:#}")),
                }
            }
        };
        if !args.json {
            print_table(&result);
        }
        results.push(result);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    let failed = results.iter().any(|r| r.error.is_some());
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_table(result: &PhotoResult) {
    if result.error.is_some() {
        println!("{}: unreadable", result.file);
        return;
    }
    if result.faces.is_empty() {
        println!("{}: no face found", result.file);
        return;
    }
    let n = result.faces.len();
    println!("{}: {n} face{}", result.file, if n == 1 { "" } else { "s" });
    println!(
        "  {:>2}  {:>20}  {:>5}  {:>6}  {:>6}  {:>6}  {:>5}",
        "#", "box x,y,w,h", "age", "+/-", "gender", "p(F)", "score"
    );
    for (i, f) in result.faces.iter().enumerate() {
        let bbox = format!("{:.0},{:.0},{:.0},{:.0}", f.x, f.y, f.w, f.h);
        let spread = f.age_std.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "  {:>2}  {:>20}  {:>5.1}  {:>6}  {:>6}  {:>6.2}  {:>5.2}",
            i + 1,
            bbox,
            f.age,
            spread,
            f.gender.letter(),
            f.female,
            f.score
        );
    }
}
