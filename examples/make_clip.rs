//! Makes an MJPEG AVI clip of UTKFace faces moving over a background, for demos and
//! benchmarks on machines without a camera.
//!
//!     scripts/build.sh && target/release/examples/make_clip OUT.avi [walk|together|crowd:N] [FRAMES] [WIDTHxHEIGHT]
//!
//! With OUT.png or OUT.jpg it writes one still photo of three faces instead.
//!
//! `walk` (default): three people cross the scene one after another (the demo).
//! `together`: three faces in view in every frame, barely moving.
//! `crowd:N`: people crossing in N lanes, one after another in each, about N faces in view at
//! any time (the `faceage bench --source` clips: crowd:1, crowd:3, crowd:6).
//! Faces come from $FACEAGE_UTKFACE (default ../shared/datasets/utkface/UTKFace).

use faceage_e2e::{Walker, crowd_walkers, scripted_clip, spread_faces, three_walkers, write_clip};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: make_clip OUT.avi [walk|together|crowd:N] [FRAMES] [WIDTHxHEIGHT]");
        std::process::exit(2);
    };
    let mode = args.get(1).map(String::as_str).unwrap_or("walk");
    let frames: usize = args.get(2).and_then(|f| f.parse().ok()).unwrap_or(64);
    let (w, h) = args
        .get(3)
        .and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .unwrap_or((640u32, 480u32));
    let mut side = h / 4;
    let walkers: Vec<Walker> = match mode {
        _ if mode.starts_with("crowd:") => {
            let lanes = mode["crowd:".len()..].parse().unwrap_or(3);
            let (walkers, crowd_side) = crowd_walkers(&spread_faces(200, 7), lanes, frames, w, h, 40);
            side = crowd_side;
            walkers
        }
        "together" => spread_faces(3, 200)
            .into_iter()
            .enumerate()
            .map(|(i, face)| {
                let x = 20.0 + i as f32 * (w as f32 - side as f32 - 40.0) / 2.0;
                Walker {
                    face,
                    enter: 0,
                    leave: frames,
                    from: (x, h as f32 * 0.3),
                    to: (x + 10.0, h as f32 * 0.35),
                }
            })
            .collect(),
        _ => {
            let mut walkers = three_walkers();
            let scale = frames as f32 / 64.0;
            for wk in &mut walkers {
                wk.enter = (wk.enter as f32 * scale) as usize;
                wk.leave = (wk.leave as f32 * scale) as usize;
                wk.from = (wk.from.0 * w as f32 / 640.0, wk.from.1 * h as f32 / 360.0);
                wk.to = (wk.to.0 * w as f32 / 640.0, wk.to.1 * h as f32 / 360.0);
            }
            walkers
        }
    };
    let path = std::path::Path::new(out);
    if out.ends_with(".png") || out.ends_with(".jpg") {
        let together: Vec<Walker> = spread_faces(3, 200)
            .into_iter()
            .enumerate()
            .map(|(i, face)| {
                let x = 20.0 + i as f32 * (w as f32 - side as f32 - 40.0) / 2.0;
                Walker { face, enter: 0, leave: 1, from: (x, h as f32 * 0.3), to: (x, h as f32 * 0.3) }
            })
            .collect();
        scripted_clip(&together, 1, w, h, side, false)[0].save(path).expect("write photo");
        eprintln!("{out}: a {w}x{h} photo of three faces");
        return;
    }
    write_clip(path, &scripted_clip(&walkers, frames, w, h, side, true), 10);
    eprintln!("{out}: {frames} frames of {w}x{h}, {mode}, {} people", walkers.len());
}
