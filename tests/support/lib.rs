//! Helpers shared by the end-to-end tests: where the binaries, the detector and UTKFace are,
//! scenes composed from UTKFace faces, and a tiny model trained once per build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use image::{Rgb, RgbImage};

/// The workspace root.
/// `--interval` for a run whose log must hold one line per source: intervals sit on the clock's
/// grid, so even an hour's interval closes early when a slow test run straddles the hour (it
/// did in CI). The first boundary of this grid (2^32 s) is in 2106.
pub const ONE_INTERVAL: &str = "4294967296";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// UTKFace folder: `FACEAGE_UTKFACE`, else `../shared/datasets/utkface/UTKFace`. Tests that
/// need real faces fail (never pass silently) when it is missing.
pub fn utkface_dir() -> PathBuf {
    let dir = std::env::var_os("FACEAGE_UTKFACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/datasets/utkface/UTKFace"));
    assert!(
        dir.is_dir(),
        "UTKFace not found at {}: download UTKFace.tar.gz (https://susanqq.github.io/UTKFace/), \
         extract it and set FACEAGE_UTKFACE=/path/to/UTKFace",
        dir.display()
    );
    dir
}

/// FairFace folder (`train.csv` and `train/`): `FACEAGE_FAIRFACE`, else
/// `../shared/datasets/fairface`. Tests that need it fail loudly when it is missing.
pub fn fairface_dir() -> PathBuf {
    let dir = std::env::var_os("FACEAGE_FAIRFACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/datasets/fairface"));
    assert!(
        dir.join("train.csv").is_file(),
        "FairFace not found at {} (no train.csv): get FairFace (padding 0.25, \
         https://github.com/joojs/fairface) and set FACEAGE_FAIRFACE=/path/to/it",
        dir.display()
    );
    dir
}

/// The first `n` rows of FairFace's `train.csv` after `skip`, each as
/// `ABSOLUTE_PATH,age group,gender,race`.
pub fn fairface_rows(skip: usize, n: usize) -> Vec<String> {
    let dir = fairface_dir();
    let text = std::fs::read_to_string(dir.join("train.csv")).unwrap();
    text.lines()
        .skip(1 + skip)
        .take(n)
        .map(|line| {
            let (path, rest) = line.split_once(',').expect("path,age,gender,race");
            format!("{},{rest}", dir.join(path).display())
        })
        .collect()
}

/// The BlazeFace detector fetched by the set-up step.
pub fn detector() -> PathBuf {
    let path = root().join("models/face_detection_back_256x256_barracuda.onnx");
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-detector.sh (part of scripts/setup.sh)",
        path.display()
    );
    path
}

/// A binary of the workspace, next to the test executables (scripts/test.sh builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run scripts/test.sh, or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs a command, returning its output; panics only if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, printing both streams otherwise.
pub fn ok(o: &Output) -> &Output {
    assert!(
        o.status.success(),
        "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    o
}

/// Labelled UTKFace images, sorted by name.
pub fn utkface_images() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(utkface_dir())
        .expect("list UTKFace")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
}

/// `n` images spread over the whole set (so over ages and groups), skipping `offset`.
pub fn spread_faces(n: usize, offset: usize) -> Vec<PathBuf> {
    let all = utkface_images();
    let step = (all.len() / (n + 1)).max(1);
    (0..n).map(|i| all[(offset + i * step) % all.len()].clone()).collect()
}

/// Where a face was placed on a scene: its square's corner and side.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

impl Placement {
    pub fn centre(&self) -> (f32, f32) {
        (self.x as f32 + self.side as f32 / 2.0, self.y as f32 + self.side as f32 / 2.0)
    }
}

/// A `width x height` scene: a soft background with each face chip scaled to `side` pixels
/// and pasted in a row, evenly spaced.
pub fn compose_scene(faces: &[PathBuf], width: u32, height: u32, side: u32) -> (RgbImage, Vec<Placement>) {
    let mut scene = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(90 + x * 40 / width) as u8, (110 + y * 30 / height) as u8, 100])
    });
    let gap = (width - side * faces.len() as u32) / (faces.len() as u32 + 1);
    let mut placements = Vec::new();
    for (i, path) in faces.iter().enumerate() {
        let chip = image::open(path).expect("decode UTKFace image").to_rgb8();
        let chip = image::imageops::resize(&chip, side, side, image::imageops::FilterType::Triangle);
        let p = Placement { x: gap + i as u32 * (side + gap), y: (height - side) / 2, side };
        image::imageops::replace(&mut scene, &chip, p.x as i64, p.y as i64);
        placements.push(p);
    }
    (scene, placements)
}

/// `dir/name`: a 400x300 photo holding one UTKFace face (the `nth` of `spread_faces`), 140 px.
pub fn one_face_photo(dir: &Path, name: &str, nth: usize) -> PathBuf {
    let (scene, _) = compose_scene(&spread_faces(1, nth), 400, 300, 140);
    let path = dir.join(name);
    scene.save(&path).expect("write the photo");
    path
}

/// A small model of the shipped design (32x32 input) trained once per test process (a few
/// hundred images, two epochs; tests/main.rs makes every file one process) and exported as
/// f32, shared by the tests that need *a* model rather than a good one.
pub struct TinyRun {
    /// Work folder: `run/` (the training run) and the model files.
    pub dir: PathBuf,
    pub f32_model: PathBuf,
}

pub fn tiny_run() -> &'static TinyRun {
    static RUN: OnceLock<TinyRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("faceage-tiny-").tempdir().expect("temp dir").keep();
        let run = dir.join("run");
        let model = dir.join("tiny-f32.onnx");
        ok(&train_small("standard", 2, &run, &dir));
        ok(&run_host(&["export", "--run", run.to_str().unwrap(), "--out", model.to_str().unwrap()], &dir));
        TinyRun { dir, f32_model: model }
    })
}

pub fn tiny_model() -> &'static Path {
    &tiny_run().f32_model
}

/// Trains a small `net` at 32x32 on 300 UTKFace images (batch 32) into `out`.
pub fn train_small(net: &str, epochs: usize, out: &Path, work: &Path) -> Output {
    train_small_with(net, epochs, out, work, &[])
}

/// [`train_small`] with more `train` options.
pub fn train_small_with(net: &str, epochs: usize, out: &Path, work: &Path, extra: &[&str]) -> Output {
    let epochs = epochs.to_string();
    let args =
        ["train", "--net", net, "--size", "32", "--limit", "300", "--epochs", &epochs, "--batch", "32"];
    run_host(&[&args[..], extra, &["--out", out.to_str().unwrap()]].concat(), work)
}

/// The lines of a training run's `metrics.jsonl`, one per epoch.
pub fn run_metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The crop cache every training of the tests shares (`--cache-dir`). Finding and cropping the
/// 300 faces of a small run takes about 40 s of CPU, training one on them about 1 s: with a
/// cache per test, most of the suite's training time was cropping the same faces again.
///
/// It is kept between test runs of the same build: the folder is named by a hash of the
/// `faceage-host` binary (its detector and crop code made the crops), beside the binary, so a
/// run never reads crops an older build made, and a second run of an unchanged tree crops
/// nothing. Caches of other builds are removed when a new one is made. Tests of the cache
/// itself give their own `--cache-dir`. Concurrent writers are safe: the host writes a cache
/// whole or not at all, and crops missing from it are made again.
pub fn crop_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let host = bin("faceage-host");
        let dir = host.parent().expect("binary folder").to_path_buf();
        // The project's own stable hash (the host's cache keys use it too).
        let bytes = std::fs::read(&host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
        let name = format!("test-crops-{:016x}", faceage_device::labels::fnv1a(0, &bytes));
        for entry in std::fs::read_dir(&dir).expect("binary folder").flatten() {
            let other = entry.file_name();
            let other = other.to_string_lossy();
            if other.starts_with("test-crops-") && other != name {
                // Another build's crops; a concurrent run of that build crops again.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let cache = dir.join(name);
        std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("{}: {e}", cache.display()));
        cache
    })
}

/// The worker threads of the tests' `faceage-host` runs (`FACEAGE_THREADS`; a `--threads`
/// argument still wins): one. The tests run one more at a time than there are cores, and
/// trainers sized to every core beside them spent their time waiting on each other (e2e
/// binary on 2 cores, 3 test threads: 200 s, 191 s with one thread each). Training is
/// deterministic for a given thread count, so a test that starts the host itself sets it too.
pub const TRAINER_THREADS: &str = "1";

/// Runs `faceage-host` with the shared data (unless `args` name a `--data`), the detector and
/// the process's shared [`crop_cache`]. `_work` is the calling test's folder (its cache was
/// `_work/cache` before the cache was shared).
pub fn run_host(args: &[&str], _work: &Path) -> Output {
    let mut cmd = Command::new(bin("faceage-host"));
    cmd.args(args);
    if args.first() == Some(&"train") && !args.contains(&"--data") {
        cmd.arg("--data").arg(utkface_dir());
    }
    cmd.arg("--detector").arg(detector()).arg("--cache-dir").arg(crop_cache());
    cmd.env("FACEAGE_THREADS", TRAINER_THREADS);
    run(&mut cmd)
}

/// Runs `faceage` with the given model and the shared detector.
pub fn run_device(args: &[&str], model: &Path) -> Output {
    run(Command::new(bin("faceage")).args(args).arg("--model").arg(model).arg("--detector").arg(detector()))
}

/// Starts `faceage` in the background with the given model and the shared detector,
/// stdout and stderr piped.
pub fn spawn_device(args: &[&str], model: &Path) -> std::process::Child {
    Command::new(bin("faceage"))
        .args(args)
        .arg("--model")
        .arg(model)
        .arg("--detector")
        .arg(detector())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start faceage")
}

/// Intersection over union of two boxes given as (x0, y0, x1, y1).
pub fn iou(a: (f32, f32, f32, f32), b: (f32, f32, f32, f32)) -> f32 {
    let ix = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
    let iy = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
    let inter = ix * iy;
    inter / ((a.2 - a.0) * (a.3 - a.1) + (b.2 - b.0) * (b.3 - b.1) - inter)
}

/// A person walking through a scripted clip: visible from `enter` to `leave` (frame
/// numbers), moving in a straight line between two top-left corners.
#[derive(Clone, Debug)]
pub struct Walker {
    pub face: PathBuf,
    pub enter: usize,
    pub leave: usize,
    pub from: (f32, f32),
    pub to: (f32, f32),
}

/// `dir/one.avi`: `frames` frames (10 fps, 320x240) of one face walking across.
pub fn one_walker_clip(dir: &Path, frames: usize) -> PathBuf {
    let clip = dir.join("one.avi");
    write_clip(&clip, &scripted_clip(&three_walkers()[..1], frames, 320, 240, 100, false), 10);
    clip
}

/// Frames of a clip with `walkers` moving over a fixed background; faces are `side` pixels.
/// `noise` adds per-frame brightness flicker and a pixel of jitter, as a real camera would.
pub fn scripted_clip(
    walkers: &[Walker],
    frames: usize,
    width: u32,
    height: u32,
    side: u32,
    noise: bool,
) -> Vec<RgbImage> {
    let scene = ScriptedScene::new(walkers, width, height, side, noise);
    (0..frames).map(|f| scene.frame(f)).collect()
}

/// A scripted clip rendered frame by frame, so a long one need not sit in memory.
pub struct ScriptedScene {
    pub walkers: Vec<Walker>,
    pub side: u32,
    background: RgbImage,
    chips: Vec<RgbImage>,
    noise: bool,
}

impl ScriptedScene {
    pub fn new(walkers: &[Walker], width: u32, height: u32, side: u32, noise: bool) -> Self {
        let background = RgbImage::from_fn(width, height, |x, y| {
            Rgb([(70 + (x * 60 / width)) as u8, (90 + (y * 50 / height)) as u8, (110 + ((x + y) % 40)) as u8])
        });
        let chips = walkers
            .iter()
            .map(|w| {
                let chip = image::open(&w.face).expect("decode face").to_rgb8();
                image::imageops::resize(&chip, side, side, image::imageops::FilterType::Triangle)
            })
            .collect();
        Self { walkers: walkers.to_vec(), side, background, chips, noise }
    }

    /// Where walker `w`'s face square has its top-left corner in frame `f` (before any
    /// jitter), or `None` when the walker is not in view.
    pub fn corner(&self, w: usize, f: usize) -> Option<(f32, f32)> {
        let wk = &self.walkers[w];
        if f < wk.enter || f >= wk.leave {
            return None;
        }
        let t = if wk.leave - wk.enter <= 1 {
            0.0
        } else {
            (f - wk.enter) as f32 / (wk.leave - wk.enter - 1) as f32
        };
        Some((wk.from.0 + (wk.to.0 - wk.from.0) * t, wk.from.1 + (wk.to.1 - wk.from.1) * t))
    }

    pub fn frame(&self, f: usize) -> RgbImage {
        let mut frame = self.background.clone();
        for (w, chip) in self.chips.iter().enumerate() {
            let Some((mut x, mut y)) = self.corner(w, f) else { continue };
            let mut chip = chip.clone();
            if self.noise {
                let k = 1.0 + 0.08 * ((f * 7919 % 13) as f32 / 6.0 - 1.0);
                for p in chip.pixels_mut() {
                    for c in 0..3 {
                        p.0[c] = (p.0[c] as f32 * k).clamp(0.0, 255.0) as u8;
                    }
                }
                x += (f % 3) as f32 - 1.0;
                y += ((f / 3) % 3) as f32 - 1.0;
            }
            image::imageops::replace(&mut frame, &chip, x.round() as i64, y.round() as i64);
        }
        frame
    }
}

/// People crossing a `width x height` scene in `lanes` horizontal lanes, one after another in
/// each lane (the lanes staggered, alternate lanes walking the other way), each in view for
/// `frames_each` frames: about `lanes` faces in view at any time. Faces are taken from
/// `faces` in turn; walkers who would not finish within `frames` are left out. Returns the
/// walkers and the face side.
pub fn crowd_walkers(
    faces: &[PathBuf],
    lanes: usize,
    frames: usize,
    width: u32,
    height: u32,
    frames_each: usize,
) -> (Vec<Walker>, u32) {
    let lanes = lanes.max(1);
    let band = height as f32 / lanes as f32;
    let side = ((height / 4) as f32).min(band * 0.8) as u32;
    let period = frames_each + 4;
    let mut walkers = Vec::new();
    for k in 0.. {
        let mut any = false;
        for lane in 0..lanes {
            let enter = lane * period / lanes + k * period;
            if enter + frames_each > frames {
                continue;
            }
            any = true;
            let y = band * lane as f32 + (band - side as f32) / 2.0;
            let (left, right) = (4.0, (width - side) as f32 - 4.0);
            let (from, to) = if lane % 2 == 0 { (left, right) } else { (right, left) };
            let face = faces[walkers.len() % faces.len()].clone();
            walkers.push(Walker {
                face,
                enter,
                leave: enter + frames_each,
                from: (from, y),
                to: (to, y + 6.0),
            });
        }
        if !any {
            break;
        }
    }
    (walkers, side)
}

/// Three people crossing a 640x360 scene one after another, with gaps between them:
/// 64 frames, each person in view for about 20.
pub fn three_walkers() -> Vec<Walker> {
    let faces = spread_faces(3, 101);
    vec![
        Walker { face: faces[0].clone(), enter: 2, leave: 22, from: (30.0, 120.0), to: (230.0, 130.0) },
        Walker { face: faces[1].clone(), enter: 24, leave: 44, from: (480.0, 100.0), to: (300.0, 140.0) },
        Walker { face: faces[2].clone(), enter: 44, leave: 62, from: (120.0, 60.0), to: (380.0, 80.0) },
    ]
}

/// Writes frames as an MJPEG AVI clip.
pub fn write_clip(path: &Path, frames: &[RgbImage], fps: u32) {
    faceage_device::source::write_mjpeg_avi(path, frames, fps, 90).expect("write clip");
}

/// Writes `src` to `dst` with `edit` applied to its protobuf.
pub fn edit_model(src: &Path, dst: &Path, edit: impl FnOnce(&mut tract_onnx::pb::ModelProto)) {
    use prost::Message;
    let mut proto = tract_onnx::pb::ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    edit(&mut proto);
    std::fs::write(dst, proto.encode_to_vec()).unwrap();
}

/// Changes the value of the model file metadata entry `key`.
pub fn set_metadata(proto: &mut tract_onnx::pb::ModelProto, key: &str, value: &str) {
    let entry = proto.metadata_props.iter_mut().find(|p| p.key == key).unwrap();
    entry.value = value.into();
}
