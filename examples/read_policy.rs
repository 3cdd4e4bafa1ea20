//! Measures reading each person until settled against reading every face in every frame, on
//! crowd clips of validation-split faces whose labels are known (the model card's "Reading each
//! person" figures):
//!
//!     scripts/build.sh && target/release/examples/read_policy [LANES...] [--people N] [--model FILE]
//!
//! For each lane count (default 1 3 6) it renders a crowd clip (`make_clip crowd:N`) of faces
//! of the model's own validation split, runs it through `faceage run`'s loop (the library's
//! `Live`, on frames rendered in memory rather than decoded from a clip) reading every face in
//! every frame, reading each person until settled, and that with the detector on every other
//! frame ("per pers/2"), and prints: people counted (each walker must be counted exactly once),
//! model reads per person, ms per frame of the pipeline stages (detect, crop, classify, track),
//! and each
//! person's final fused reading against the label (age MAE, gender accuracy).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use faceage_device::detect::load_board_detector;
use faceage_device::labels::{Sample, Split, load_dataset};
use faceage_device::live::{Live, LiveOptions};
use faceage_device::source::Frame;
use faceage_device::track::{ReadPolicy, TrackView};
use faceage_device::{AgeGenderModel, Pipeline};
use faceage_e2e::{ScriptedScene, crowd_walkers, detector, root, utkface_dir};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 480;
/// Frames each walker is in view (4 s at 10 fps).
const FRAMES_EACH: usize = 40;

struct Outcome {
    people: usize,
    walkers_counted_once: usize,
    reads: usize,
    frames: usize,
    pipeline: Duration,
    classify: Duration,
    age_errors: Vec<f32>,
    gender_right: usize,
    /// Each walker's final fused (age, p female), when counted.
    per_walker: Vec<Option<(f32, f32)>>,
}

fn main() -> anyhow::Result<()> {
    let mut lanes: Vec<usize> = Vec::new();
    let mut people = 60usize;
    let mut model_path = root().join("models/faceage-f32.onnx");
    let mut policy = ReadPolicy::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--people" => people = args.next().and_then(|v| v.parse().ok()).expect("--people N"),
            "--model" => model_path = PathBuf::from(args.next().expect("--model FILE")),
            // Other settings of the per-person policy, to measure them.
            "--min-reads" => policy.min_reads = args.next().and_then(|v| v.parse().ok()).expect("N"),
            "--settle-error" => {
                policy.settle_age_error = args.next().and_then(|v| v.parse().ok()).expect("YEARS")
            }
            "--recheck" => policy.recheck_every = args.next().and_then(|v| v.parse().ok()).expect("FRAMES"),
            n => lanes.push(n.parse().map_err(|_| anyhow::anyhow!("{n}: expected a lane count"))?),
        }
    }
    if lanes.is_empty() {
        lanes = vec![1, 3, 6];
    }
    let seed = AgeGenderModel::load(&model_path)?.contract().split_seed.unwrap_or(0);
    let (samples, _) = load_dataset(&utkface_dir())?;
    // The validation split: the policy's settings are chosen on it, and the test split stays a test.
    let test: Vec<Sample> = faceage_device::eval::select(samples, Some((Split::Val, seed)));
    println!("{}: validation split (seed {seed}) of {} faces; {policy:?}", model_path.display(), test.len());
    println!(
        "{:>5} {:<12} {:>7} {:>6} {:>11} {:>13} {:>13} {:>8} {:>8} {:>10} {:>8}",
        "lanes",
        "policy",
        "people",
        "once",
        "reads/pers",
        "pipeline ms/f",
        "classify ms/f",
        "age MAE",
        "gender",
        "dMAE (se)",
        "|d age|"
    );
    for &n in &lanes {
        // Enough frames for `people` walkers in `n` lanes.
        let frames = (people.div_ceil(n) + 1) * (FRAMES_EACH + 4);
        let step = (test.len() / (people * 2)).max(1);
        let faces: Vec<&Sample> = test.iter().step_by(step).collect();
        let paths: Vec<PathBuf> = faces.iter().map(|s| s.path.clone()).collect();
        let (mut walkers, side) = crowd_walkers(&paths, n, frames, WIDTH, HEIGHT, FRAMES_EACH);
        walkers.truncate(people);
        let truth: Vec<&Sample> =
            walkers.iter().map(|w| *faces.iter().find(|s| s.path == w.face).unwrap()).collect();
        let scene = ScriptedScene::new(&walkers, WIDTH, HEIGHT, side, true);
        let frames = walkers.iter().map(|w| w.leave).max().unwrap_or(0) + 8;
        let configs = [
            ("every frame", ReadPolicy::every_frame(), 1),
            ("per person", policy, 1),
            ("per pers/2", policy, 2),
        ];
        // Each person's reading under every policy, against reading every frame.
        let mut reference: Option<Vec<Option<(f32, f32)>>> = None;
        for (name, policy, detect_every) in configs {
            let o = run(&scene, frames, &truth, &model_path, policy, detect_every)?;
            let mae = o.age_errors.iter().sum::<f32>() / o.age_errors.len().max(1) as f32;
            let reference = reference.get_or_insert_with(|| o.per_walker.clone());
            // Paired over the walkers both runs counted: the change in absolute error, its
            // standard error, and how far the fused age moved.
            let (mut deltas, mut moved) = (Vec::new(), 0.0f32);
            for (w, (a, b)) in reference.iter().zip(&o.per_walker).enumerate() {
                if let (Some((ref_age, _)), Some((age, _))) = (a, b) {
                    deltas.push((age - truth[w].age).abs() - (ref_age - truth[w].age).abs());
                    moved += (age - ref_age).abs();
                }
            }
            let n_pairs = deltas.len().max(1) as f32;
            let mean_delta = deltas.iter().sum::<f32>() / n_pairs;
            let se =
                (deltas.iter().map(|d| (d - mean_delta).powi(2)).sum::<f32>() / n_pairs / n_pairs).sqrt();
            let per_frame = |d: Duration| d.as_secs_f64() * 1000.0 / o.frames as f64;
            println!(
                "{n:>5} {name:<12} {:>3}/{:<3} {:>6} {:>11.1} {:>13.2} {:>13.2} {mae:>8.2} {:>7.1}% {:>+5.2} ({:.2}) {:>8.2}",
                o.people,
                walkers.len(),
                o.walkers_counted_once,
                o.reads as f64 / o.people.max(1) as f64,
                per_frame(o.pipeline),
                per_frame(o.classify),
                100.0 * o.gender_right as f64 / o.age_errors.len().max(1) as f64,
                mean_delta,
                se,
                moved / n_pairs
            );
        }
    }
    Ok(())
}

/// One pass of the clip through `faceage run`'s loop under `policy`.
fn run(
    scene: &ScriptedScene,
    frames: usize,
    truth: &[&Sample],
    model: &std::path::Path,
    policy: ReadPolicy,
    detect_every: u32,
) -> anyhow::Result<Outcome> {
    let mut pipeline =
        Pipeline::new(Box::new(load_board_detector(&detector(), 0.5)?), AgeGenderModel::load(model)?);
    let mut options = LiveOptions { detect_every, ..LiveOptions::default() };
    options.tracker.read = policy;
    let mut live = Live::new(options);
    // Which walker each counted track is, and each track's latest view.
    let mut walker_of: HashMap<u64, usize> = HashMap::new();
    let mut latest: HashMap<u64, TrackView> = HashMap::new();
    for f in 0..frames {
        let frame =
            Frame { image: scene.frame(f), index: f as u64, time: Duration::from_millis(f as u64 * 100) };
        let report = live.process(&mut pipeline, &frame, 0)?;
        for t in &report.counted {
            let (cx, cy) = (t.bbox.cx, t.bbox.cy);
            let nearest = (0..scene.walkers.len())
                .filter_map(|w| scene.corner(w, f).map(|(x, y)| (w, (x, y))))
                .map(|(w, (x, y))| {
                    let half = scene.side as f32 / 2.0;
                    (w, (x + half - cx).hypot(y + half - cy))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((w, distance)) = nearest
                && distance < scene.side as f32
            {
                walker_of.insert(t.id, w);
            }
        }
        for t in report.tracks.iter().chain(&report.ended) {
            latest.insert(t.id, t.clone());
        }
    }
    let mut counts = vec![0usize; scene.walkers.len()];
    let (mut age_errors, mut gender_right) = (Vec::new(), 0);
    let mut per_walker = vec![None; scene.walkers.len()];
    for (id, &w) in &walker_of {
        counts[w] += 1;
        let reading = latest[id].reading;
        per_walker[w] = Some((reading.age, reading.female));
        age_errors.push((reading.age - truth[w].age).abs());
        gender_right += usize::from((reading.female >= 0.5) == truth[w].female);
    }
    let times = live.times;
    Ok(Outcome {
        people: live.people_total as usize,
        walkers_counted_once: counts.iter().filter(|&&c| c == 1).count(),
        reads: times.reads,
        frames,
        pipeline: times.detect + times.crop + times.classify + live.track_time,
        classify: times.classify,
        age_errors,
        gender_right,
        per_walker,
    })
}
