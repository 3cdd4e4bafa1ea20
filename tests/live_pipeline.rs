//! `faceage run` on scripted clips made from UTKFace faces: exact counts, steady readings,
//! and a counts log that survives kill -9 and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use faceage_e2e::*;
use serde_json::Value;

fn events(out: &str, kind: &str) -> Vec<Value> {
    out.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["event"] == kind).collect()
}

fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("unparsable log line {l:?}: {e}")))
        .collect()
}

#[test]
fn a_scripted_clip_gives_exactly_its_number_of_people() {
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("three.avi");
    write_clip(&clip, &scripted_clip(&three_walkers(), 64, 640, 360, 110, false), 10);
    let log = work.path().join("counts.jsonl");
    let out = run_device(
        &[
            "run",
            "--source",
            clip.to_str().unwrap(),
            "--counts-log",
            log.to_str().unwrap(),
            "--events",
            "--interval",
            ONE_INTERVAL,
        ],
        tiny_model(),
    );
    ok(&out);
    let people = events(&stdout(&out), "person");
    assert_eq!(people.len(), 3, "three people walk through: {}", stdout(&out));
    for p in &people {
        assert!(p["age"].as_f64().unwrap() >= 0.0 && p["band"].is_string() && p["gender"].is_string(), "{p}");
        let shares: f64 = p["band_shares"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 0.01, "a person's shares over the bands sum to one: {p}");
    }
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 1, "the partial interval is written at the end of the clip");
    assert_eq!(lines[0]["people"], 3);
    assert_eq!(lines[0]["frames"], 64);
    // Each walker is in view for about 20 frames of a 10 fps clip: three visits under 5 s.
    assert_eq!(lines[0]["schema"], 4);
    assert_eq!(lines[0]["source"], clip.to_str().unwrap(), "an unnamed source goes by its own name");
    assert_eq!(lines[0]["dwell"], serde_json::json!([3, 0, 0, 0]), "{}", lines[0]);
    let median = lines[0]["dwell_median_s"].as_f64().unwrap();
    assert!((1.2..=2.2).contains(&median), "median time in view {median} s");
    let ended: Vec<f64> = events(&stdout(&out), "track_ended")
        .iter()
        .filter(|e| e["confirmed"] == true)
        .map(|e| e["dwell_s"].as_f64().unwrap())
        .collect();
    // The last walker is still in view when the clip ends: the log counts that visit at the
    // end of the run, and no track_ended event is printed for it.
    assert_eq!(ended.len(), 2, "{}", stdout(&out));
    assert!(ended.iter().all(|d| (1.2..=2.2).contains(d)), "times in view {ended:?}");
    let by_band: f64 = ["female", "male"]
        .iter()
        .flat_map(|g| lines[0][g].as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap())
        .sum();
    // Each person's age shares sum to 1 (stored to the hundredth, 12 cells).
    assert!((by_band - 3.0).abs() < 0.07, "every person counts once over the bands: {by_band}");
    // Each band's variance is a sum of p(1-p) over the people: at most a quarter a person.
    for g in ["female_var", "male_var"] {
        let var: Vec<f64> = lines[0][g].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(var.len() == 6 && var.iter().all(|v| (0.0..=0.75).contains(v)), "{g}: {var:?}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("landmarks") && !text.contains("jpeg"), "aggregates only");

    // The same clip as an animated GIF (a shorter cut: one person) needs no ffmpeg either.
    let gif = work.path().join("one.gif");
    let frames = scripted_clip(&three_walkers()[..1], 24, 320, 240, 100, false);
    {
        let file = std::fs::File::create(&gif).unwrap();
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(file, 30);
        for f in frames {
            let rgba = image::DynamicImage::ImageRgb8(f).into_rgba8();
            encoder.encode_frame(image::Frame::new(rgba)).unwrap();
        }
    }
    let out = run_device(
        &["run", "--source", gif.to_str().unwrap(), "--counts-log", "-", "--events"],
        tiny_model(),
    );
    ok(&out);
    assert_eq!(events(&stdout(&out), "person").len(), 1, "{}", stdout(&out));
}

#[test]
fn fused_readings_of_a_still_face_vary_less_than_per_frame_estimates() {
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("still.avi");
    let face = spread_faces(1, 55)[0].clone();
    let walker = Walker { face, enter: 0, leave: 40, from: (250.0, 100.0), to: (250.0, 100.0) };
    write_clip(&clip, &scripted_clip(&[walker], 40, 640, 360, 120, true), 10);
    // Every face read in every frame, so that each frame has its own estimate to compare.
    let args = ["run", "--source", clip.to_str().unwrap(), "--counts-log", "-", "--trace"];
    let out = run_device(&[&args[..], &["--read-every-frame", "--detect-every", "1"]].concat(), tiny_model());
    ok(&out);
    let (mut fused, mut raw) = (Vec::new(), Vec::new());
    for frame in events(&stdout(&out), "frame").iter().skip(5) {
        let tracks = frame["tracks"].as_array().unwrap();
        assert_eq!(tracks.len(), 1, "one still face is one track: {frame}");
        if tracks[0]["seen"] == true {
            fused.push(tracks[0]["age"].as_f64().unwrap());
            raw.push(tracks[0]["frame_age"].as_f64().unwrap());
        }
    }
    let spread = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    assert!(fused.len() > 25, "the face is seen in most frames");
    let (sf, sr) = (spread(&fused), spread(&raw));
    assert!(sr > 0.0, "per-frame estimates move with the flicker");
    assert!(sf < sr, "fused readings are steadier: {sf:.3} vs per-frame {sr:.3}");
}

#[test]
fn each_person_is_read_until_settled_and_still_counted_once() {
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("crowd.avi");
    let (walkers, side) = crowd_walkers(&spread_faces(12, 31), 3, 200, 640, 480, 60);
    write_clip(&clip, &scripted_clip(&walkers, 200, 640, 480, side, true), 10);
    let figures = |extra: &[&str]| {
        let args = ["bench", "--source", clip.to_str().unwrap(), "--frames", "1000"];
        let out = run_device(&[&args[..], extra].concat(), tiny_model());
        ok(&out);
        let text = stdout(&out);
        let number_before = |label: &str| -> f64 {
            let at = text.find(label).unwrap_or_else(|| panic!("{label:?} in {text}"));
            text[..at].split_whitespace().last().unwrap().trim_end_matches(',').parse().unwrap()
        };
        let number_after = |label: &str| -> f64 {
            let at = text.find(label).unwrap_or_else(|| panic!("{label:?} in {text}")) + label.len();
            text[at..]
                .split(|c: char| c == ',' || c.is_whitespace())
                .find(|w| !w.is_empty())
                .unwrap()
                .parse()
                .unwrap()
        };
        let faces_per_frame = number_before("faces in view");
        let reads_per_frame = number_before("read per frame");
        (number_after("people counted:"), number_after("reads per person:"), faces_per_frame, reads_per_frame)
    };
    let (people, reads, _, _) = figures(&[]);
    let (every_people, every_reads, faces_per_frame, reads_per_frame) =
        figures(&["--read-every-frame", "--detect-every", "1"]);
    assert_eq!(every_people, walkers.len() as f64, "every walker counted once, reading every frame");
    assert_eq!(people, every_people, "reading each person counts the same people");
    assert_eq!(reads_per_frame, faces_per_frame, "--read-every-frame reads every face found");
    assert!(reads < every_reads / 2.0, "{reads} reads per person against {every_reads} reading every frame");
}

/// A clip long enough to still be running when it is interrupted.
fn long_clip(work: &std::path::Path) -> std::path::PathBuf {
    let clip = work.join("long.avi");
    let mut walkers = Vec::new();
    let faces = spread_faces(6, 33);
    for (i, face) in faces.iter().enumerate() {
        let enter = i * 30;
        walkers.push(Walker {
            face: face.clone(),
            enter,
            leave: enter + 24,
            from: (40.0 + i as f32 * 20.0, 100.0),
            to: (400.0, 120.0),
        });
    }
    write_clip(&clip, &scripted_clip(&walkers, 180, 640, 360, 110, false), 10);
    clip
}

fn spawn_run(clip: &std::path::Path, log: &std::path::Path, interval: &str) -> std::process::Child {
    let (clip, log) = (clip.to_str().unwrap(), log.to_str().unwrap());
    spawn_device(
        &[
            "run",
            "--source",
            clip,
            "--counts-log",
            log,
            "--interval",
            interval,
            "--max-fps",
            "15",
            "--events",
        ],
        tiny_model(),
    )
}

#[test]
fn kill_dash_9_loses_no_complete_line_and_the_next_run_repairs_the_log() {
    let work = tempfile::tempdir().unwrap();
    let clip = long_clip(work.path());
    let log = work.path().join("counts.jsonl");
    let mut child = spawn_run(&clip, &log, "1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(&log).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL: no chance to write anything more
    child.wait().unwrap();
    let before = log_lines(&log);
    assert!(before.len() >= 3, "intervals were written while running");

    // Power loss in the middle of a write leaves a torn line; the next start cuts it off.
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"start\":\"2026-11-29T10:");
    std::fs::write(&log, text).unwrap();
    let out = run_device(
        &[
            "run",
            "--source",
            clip.to_str().unwrap(),
            "--counts-log",
            log.to_str().unwrap(),
            "--max-frames",
            "20",
        ],
        tiny_model(),
    );
    ok(&out);
    assert!(stderr(&out).contains("removed a torn last line"), "{}", stderr(&out));
    let after = log_lines(&log);
    assert_eq!(&after[..before.len()], &before[..], "every complete line survives");
    // One line for its partial interval, two if its frames straddled a minute boundary (the
    // intervals sit on the clock's grid; a loaded machine makes that likelier).
    let appended = after.len() - before.len();
    assert!((1..=2).contains(&appended), "the new run appended its line: {appended} lines");
}

#[test]
fn sigterm_writes_the_partial_interval() {
    let work = tempfile::tempdir().unwrap();
    let clip = long_clip(work.path());
    let log = work.path().join("counts.csv");
    let (c, l) = (clip.to_str().unwrap(), log.to_str().unwrap());
    let args = [
        "run",
        "--source",
        c,
        "--counts-log",
        l,
        "--log-format",
        "csv",
        "--interval",
        ONE_INTERVAL,
        "--max-fps",
        "15",
        "--events",
    ];
    let mut child = spawn_device(&args, tiny_model());
    // Wait for the first person, then ask the process to stop.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen_person = lines.by_ref().map_while(Result::ok).any(|l| l.contains("\"person\""));
    assert!(seen_person);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "a header and the partial interval: {text}");
    let people: u32 = rows[1].split(',').nth(2).unwrap().parse().unwrap();
    assert!(people >= 1, "{text}");
}

#[test]
fn a_full_disk_is_reported_and_the_counts_kept_in_memory() {
    let work = tempfile::tempdir().unwrap();
    let clip = one_walker_clip(work.path(), 24);
    let out =
        run_device(&["run", "--source", clip.to_str().unwrap(), "--counts-log", "/dev/full"], tiny_model());
    assert!(!out.status.success(), "lines that could not be written make the run fail at exit");
    let err = stderr(&out);
    assert!(err.contains("/dev/full") && err.contains("kept in memory"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

/// The test binaries are built with the opt-in `multithread` feature (scripts/test.sh): `run`
/// and `bench` take `--threads 2`, and count and read as on one thread. (The default build's
/// refusal, a warning for `run` and an error for `bench`, is the library's
/// `more_threads_without_the_feature_is_an_error_naming_it`.)
#[test]
fn two_inference_threads_count_and_read_as_one() {
    let work = tempfile::tempdir().unwrap();
    let clip = one_walker_clip(work.path(), 24);
    let people = |threads: &str| {
        let out = run_device(
            &[
                "run",
                "--source",
                clip.to_str().unwrap(),
                "--counts-log",
                "-",
                "--events",
                "--threads",
                threads,
            ],
            tiny_model(),
        );
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("warning"), "{err}");
        events(&stdout(&out), "person")
    };
    let (one, two) = (people("1"), people("2"));
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(two.len(), one.len(), "{two:?}");
    let age = |p: &serde_json::Value| p["age"].as_f64().unwrap();
    assert!((age(&one[0]) - age(&two[0])).abs() < 0.01, "{one:?} {two:?}");
    assert_eq!(one[0]["gender"], two[0]["gender"]);
    let out = run_device(&["bench", "--threads", "1,2", "--runs", "1"], tiny_model());
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let threads: Vec<&str> = table.lines().skip(1).filter_map(|row| row.split_whitespace().nth(3)).collect();
    assert!(threads.contains(&"1") && threads.contains(&"2"), "a row per thread count: {table}");
}

#[test]
fn sources_that_cannot_be_read_are_clear_errors() {
    let out = run_device(&["run", "--source", "camera:9", "--counts-log", "-"], tiny_model());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("camera:9") && stderr(&out).contains("cannot open"), "{}", stderr(&out));

    let work = tempfile::tempdir().unwrap();
    // An image sequence with a broken file: the frame is skipped with its name, the rest runs.
    let frames = scripted_clip(&three_walkers()[..1], 12, 320, 240, 100, false);
    for (i, f) in frames.iter().enumerate() {
        f.save(work.path().join(format!("frame-{i:03}.png"))).unwrap();
    }
    std::fs::write(work.path().join("frame-005.png"), b"broken").unwrap();
    let out = run_device(
        &["run", "--source", work.path().to_str().unwrap(), "--counts-log", "-", "--events"],
        tiny_model(),
    );
    ok(&out);
    assert!(stderr(&out).contains("frame-005.png"), "{}", stderr(&out));
    assert!(stderr(&out).contains("11 frames"), "{}", stderr(&out));

    let out = run_device(
        &["run", "--source", work.path().join("nothing-*.jpg").to_str().unwrap(), "--counts-log", "-"],
        tiny_model(),
    );
    assert!(!out.status.success() && stderr(&out).contains("no images"), "{}", stderr(&out));
}

#[test]
fn report_summarises_logs_as_table_json_and_chart() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("counts.jsonl");
    let mk = |start: &str, people: u32, f: Value, m: Value| {
        serde_json::json!({"start": start, "end": start, "people": people, "female": f, "male": m, "frames": 10, "dropped": 0}).to_string()
    };
    std::fs::write(
        &log,
        [
            // A line from before band shares: whole numbers.
            mk(
                "2026-11-29T09:00:00+00:00",
                3,
                serde_json::json!([0, 0, 0, 2, 0, 0]),
                serde_json::json!([0, 0, 0, 1, 0, 0]),
            ),
            mk(
                "2026-11-29T09:30:00+00:00",
                1,
                serde_json::json!([0.0, 0.7, 0.3, 0.0, 0.0, 0.0]),
                serde_json::json!([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            ),
            mk(
                "2026-11-29T14:00:00+00:00",
                4,
                serde_json::json!([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
                serde_json::json!([0.0, 0.0, 0.0, 0.0, 0.5, 3.5]),
            ),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let report = |args: &[&str]| run(Command::new(bin("faceage")).arg("report").arg(&log).args(args));
    let table = report(&[]);
    ok(&table);
    assert!(stdout(&table).contains("8 people in 3 intervals"), "{}", stdout(&table));
    // Whole people per band, each with its ±, adding up to the people counted.
    let text = stdout(&table);
    let row = |name: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().skip(1).map(str::to_string).collect()
    };
    let mut whole = 0;
    for g in ["female", "male"] {
        let cells = row(g);
        assert_eq!(cells.len(), 13, "six bands with their ±, and the total: {text}");
        let bands: Vec<u64> = cells[..12].iter().step_by(2).map(|c| c.parse().unwrap()).collect();
        assert!(cells[..12].iter().skip(1).step_by(2).all(|c| c.starts_with('±')), "{text}");
        assert_eq!(bands.iter().sum::<u64>(), cells[12].parse::<u64>().unwrap(), "{text}");
        whole += bands.iter().sum::<u64>();
    }
    assert_eq!(whole, 8, "{text}");
    let json = report(&["--json", "--from", "2026-11-29T09:15:00Z", "--to", "2026-11-29T15:00:00Z"]);
    ok(&json);
    let v: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["people"], 5);
    assert_eq!(v["male"][5], 3.5);
    assert_eq!(v["female"][2], 0.3);
    let whole = |g: &str| {
        v["whole"][g].as_array().unwrap().iter().map(|c| c["people"].as_u64().unwrap()).sum::<u64>()
    };
    assert_eq!((whole("female"), whole("male")), (1, 4), "whole people as counted: {v}");
    assert!(v["male_var"][5].as_f64().unwrap() > 0.0, "old lines get the widest variance they allow: {v}");
    let png = work.path().join("hours.png");
    ok(&report(&["--plot", png.to_str().unwrap()]));
    let chart = image::open(&png).unwrap();
    assert!(chart.width() >= 640 && chart.height() >= 300);
}
