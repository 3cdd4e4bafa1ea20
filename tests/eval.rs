//! `faceage eval`: labelled photos read through `classify`'s path, figures and counts per band,
//! bad rows named and skipped; and the framing that lets a face filling the picture be read
//! like a face in a room.

use std::path::{Path, PathBuf};
use std::process::Command;

use faceage_device::labels::{Split, split_of};
use faceage_e2e::*;
use serde_json::Value;

/// The shipped reference model: real readings, so the figures mean something.
fn shipped_model() -> PathBuf {
    root().join("models/faceage-f32.onnx")
}

/// `n` UTKFace images of the test split of seed 1, spread over the set.
fn test_split_faces(n: usize) -> Vec<PathBuf> {
    let all: Vec<PathBuf> = utkface_images().into_iter().filter(|p| split_of(p, 1) == Split::Test).collect();
    let step = (all.len() / n).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

fn label(path: &Path) -> (f32, &'static str) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut parts = name.split('_');
    let age: f32 = parts.next().unwrap().parse().unwrap();
    let gender = if parts.next().unwrap() == "1" { "F" } else { "M" };
    (age, gender)
}

fn manifest(dir: &Path, faces: &[PathBuf], extra_rows: &str) -> PathBuf {
    let mut text = String::from("path,age,gender\n");
    for f in faces {
        let (age, gender) = label(f);
        text.push_str(&format!("{},{age},{gender}\n", f.display()));
    }
    text.push_str(extra_rows);
    let path = dir.join("faces.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn eval_json(args: &[&str]) -> Value {
    let out = ok(&run_device(&[&["eval", "--json"], args].concat(), &shipped_model())).clone();
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)))
}

#[test]
fn eval_reads_a_manifest_names_bad_rows_and_counts_per_band() {
    let work = tempfile::tempdir().unwrap();
    let faces = test_split_faces(30);
    let corrupt = work.path().join("corrupt.jpg");
    std::fs::write(&corrupt, "not a jpeg").unwrap();
    let rows = format!(
        "{},30,F\n{},40,M\n{},old,F\n",
        work.path().join("missing.jpg").display(),
        corrupt.display(),
        faces[0].display()
    );
    let csv = manifest(work.path(), &faces, &rows);

    let out = run_device(&["eval", csv.to_str().unwrap()], &shipped_model());
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    assert!(err.contains("missing.jpg") && err.contains("cannot open"), "{err}");
    assert!(err.contains("corrupt.jpg") && err.contains("not a decodable image"), "{err}");
    assert!(err.contains("age \"old\" is neither a number of years nor an age group"), "{err}");
    assert!(text.contains("32 images") && text.contains("2 unreadable"), "{text}");
    assert!(text.contains("1 entries skipped for unusable labels"), "{text}");
    assert!(text.contains("age MAE") && text.contains("20-39") && text.contains("off by"), "{text}");

    let readings = work.path().join("readings.csv");
    let json = eval_json(&[csv.to_str().unwrap(), "--readings", readings.to_str().unwrap()]);
    let report = &json["report"];
    assert_eq!(report["images"], 32);
    assert_eq!(report["unreadable"].as_array().unwrap().len(), 2);
    assert_eq!(json["labels_rejected"], 1);
    let read = report["overall"]["faces"].as_u64().unwrap();
    assert_eq!(read + report["no_face"].as_u64().unwrap(), 30);
    assert!(read >= 29, "a face filling the picture is found: {read} of 30");
    // Real readings of the shipped model on faces it never trained on.
    let mae = report["overall"]["age_mae"].as_f64().unwrap();
    let gender = report["overall"]["gender_accuracy"].as_f64().unwrap();
    assert!(mae < 9.0 && gender > 75.0, "MAE {mae}, gender {gender}%");
    let counts = &report["counts"];
    let truth: u64 = counts["truth"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    let counted: f64 = counts["counted"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
    assert_eq!(truth, read);
    assert!((counted - read as f64).abs() < 0.1, "every face counts once in all: {counted} of {read}");
    // Calibration of the band shares on the faces read; too few for groups of 50.
    let calibration = &report["calibration"];
    assert_eq!(calibration["faces"], read);
    assert_eq!(calibration["bands"].as_array().unwrap().len(), 6);
    let ece = calibration["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece), "{calibration}");
    assert!(calibration["coverage"].is_null(), "{read} faces are fewer than a group of 50");
    assert!(text.contains("band shares") && text.contains("reliability"), "{text}");

    // The readings file: a row per image, the summary's figures recomputed from its rows.
    let mut rows = csv::Reader::from_path(&readings).unwrap();
    let rows: Vec<csv::StringRecord> = rows.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 32, "every image, read or not");
    let outcome = |r: &csv::StringRecord| r[4].to_string();
    assert_eq!(rows.iter().filter(|r| outcome(r) == "unreadable").count(), 2);
    let errors: Vec<f64> = rows
        .iter()
        .filter(|r| outcome(r) == "read")
        .map(|r| r[5].parse::<f64>().unwrap() - r[1].parse::<f64>().unwrap())
        .collect();
    assert_eq!(errors.len() as u64, read);
    let n = errors.len() as f64;
    let mae_rows = errors.iter().map(|e| e.abs()).sum::<f64>() / n;
    let bias_rows = errors.iter().sum::<f64>() / n;
    assert!((mae_rows - mae).abs() < 0.01, "{mae_rows} against {mae}");
    let bias = report["overall"]["age_bias"].as_f64().unwrap();
    assert!((bias_rows - bias).abs() < 0.01, "{bias_rows} against {bias}");
}

#[test]
fn eval_takes_the_models_split_and_reads_the_same_faces_in_a_scene() {
    let work = tempfile::tempdir().unwrap();
    let faces = test_split_faces(40);
    let csv = manifest(work.path(), &faces, "");
    let tight = eval_json(&[csv.to_str().unwrap(), "--split", "test"]);
    assert_eq!(tight["split"]["seed"], 1, "the seed the model file records");
    assert_eq!(tight["report"]["images"], 40, "all of them are test faces");
    let scene = eval_json(&[csv.to_str().unwrap(), "--split", "test", "--scene"]);
    let figure = |v: &Value, k: &str| v["report"]["overall"][k].as_f64().unwrap();
    assert!(scene["report"]["no_face"].as_u64().unwrap() <= 1, "{scene}");
    let (mae_t, mae_s) = (figure(&tight, "age_mae"), figure(&scene, "age_mae"));
    assert!((mae_t - mae_s).abs() < 2.0, "a face at kiosk distance reads like the photo: {mae_t} vs {mae_s}");

    // None of these is a training face, so the train split is empty: said, not a zero report.
    let out = run_device(&["eval", csv.to_str().unwrap(), "--split", "train"], &shipped_model());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no labelled images to read in this split"), "{}", stderr(&out));
}

#[test]
fn a_face_filling_the_picture_is_framed_like_the_same_face_with_room_around_it() {
    use faceage_device::detect::{Framing, load_board_detector};
    use faceage_device::{Face, FaceDetector};
    use image::{Rgb, RgbImage};

    let mut board = load_board_detector(&detector(), 0.5).unwrap();
    let mut plain = load_board_detector(&detector(), 0.5).unwrap();
    plain.framing = Framing::off();
    // Eye gap between two findings of one face, in face sides; `shift` moves `a` into `b`'s frame.
    let gap = |a: &Face, b: &Face, shift: f32| -> f32 {
        (0..2)
            .map(|k| {
                let (p, q) = (a.landmarks[k], b.landmarks[k]);
                ((p.x + shift - q.x).powi(2) + (p.y + shift - q.y).powi(2)).sqrt() / b.bbox.w
            })
            .fold(0.0, f32::max)
    };
    let (mut framed_gaps, mut plain_gaps, mut plain_missed) = (Vec::new(), Vec::new(), 0);
    for path in spread_faces(40, 17) {
        let chip = image::open(&path).unwrap().to_rgb8();
        // The same chip with room around it, where BlazeFace places landmarks well: the reference.
        let pad = chip.width() / 2;
        let mut roomy =
            RgbImage::from_pixel(chip.width() + 2 * pad, chip.height() + 2 * pad, Rgb([128, 128, 128]));
        image::imageops::replace(&mut roomy, &chip, pad as i64, pad as i64);
        let reference = plain.detect(&roomy).unwrap().first().cloned().expect("a face with room is found");
        let framed = board.detect(&chip).unwrap().first().cloned().expect("the board finds the tight face");
        framed_gaps.push(gap(&framed, &reference, pad as f32));
        match plain.detect(&chip).unwrap().first() {
            Some(f) => plain_gaps.push(gap(f, &reference, pad as f32)),
            None => plain_missed += 1,
        }
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (framed_mean, plain_mean) = (mean(&framed_gaps), mean(&plain_gaps));
    let (framed_median, plain_median) = (median(&mut framed_gaps), median(&mut plain_gaps));
    eprintln!(
        "eye gap to the padded chip's, face sides: framed median {framed_median:.3} mean {framed_mean:.3}; \
         plain median {plain_median:.3} mean {plain_mean:.3}, missed {plain_missed}"
    );
    assert!(framed_median < 0.03, "framed eyes land {framed_median:.3} face sides from the reference");
    assert!(
        framed_mean < plain_mean / 2.0,
        "framing brings the eyes closer: {framed_mean:.3} vs {plain_mean:.3}"
    );
}

/// A model file as the exporter wrote it before the `age_bands` output (the shipped files were).
fn without_band_output(dir: &Path) -> PathBuf {
    let old = dir.join("old.onnx");
    edit_model(&shipped_model(), &old, |proto| {
        let graph = proto.graph.as_mut().unwrap();
        graph.output.retain(|o| o.name != "age_bands");
        graph.node.retain(|n| n.output.iter().all(|o| o != "age_bands"));
        graph.initializer.retain(|t| t.name != "age.band_matrix");
        graph.node.retain(|n| !n.name.starts_with("age.map"));
        let age =
            graph.node.iter_mut().find(|n| n.output.first().map(String::as_str) == Some("age")).unwrap();
        age.input[0] = "age.median".into();
        proto.metadata_props.retain(|p| !p.key.starts_with("faceage.output.age_bands"));
    });
    old
}

#[test]
fn upgrade_gives_an_old_file_band_shares_and_an_age_map_fitted_on_board_crops() {
    let work = tempfile::tempdir().unwrap();
    let old = without_band_output(work.path());
    let new = work.path().join("new.onnx");
    let out = ok(&run_host(
        &[
            "upgrade",
            old.to_str().unwrap(),
            "--out",
            new.to_str().unwrap(),
            "--age-map-data",
            utkface_dir().to_str().unwrap(),
            "--limit",
            "300",
        ],
        work.path(),
    ))
    .clone();
    let text = stdout(&out);
    assert!(text.contains("age_bands output added"), "{text}");
    let fitted: usize = text
        .split("age map fitted on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no age map line: {text}"));
    assert!(fitted >= 15, "the validation split of 300 images: {fitted} faces");

    let faces = test_split_faces(30);
    let csv = manifest(work.path(), &faces, "");
    let read = |model: &Path| -> Value {
        let out = ok(&run_device(&["eval", "--json", csv.to_str().unwrap()], model)).clone();
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let (before, after) = (read(&old), read(&new));
    assert_eq!(before["report"]["counts"]["model_gives_shares"], false, "{before}");
    assert_eq!(after["report"]["counts"]["model_gives_shares"], true, "{after}");
    // The gender output is untouched; the counts now come from the shares, not the readings.
    let figure = |v: &Value, k: &str| v["report"]["overall"][k].as_f64().unwrap();
    assert_eq!(figure(&before, "gender_accuracy"), figure(&after, "gender_accuracy"));
    let counted = |v: &Value| -> Vec<f64> {
        v["report"]["counts"]["counted"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    assert!(counted(&after).iter().any(|c| c.fract() != 0.0), "expected counts: {:?}", counted(&after));
    assert!(counted(&before).iter().all(|c| c.fract() == 0.0), "whole faces: {:?}", counted(&before));

    // Once is enough: a second upgrade without a map has nothing to do and says so.
    let again = run_host(&["upgrade", new.to_str().unwrap()], work.path());
    assert!(!again.status.success());
    assert!(stderr(&again).contains("nothing to do"), "{}", stderr(&again));

    // A band temperature (what `eval --split val` fits) goes into the file and the board
    // reads the shares through it: sharper, the same gender and people.
    let tempered = work.path().join("tempered.onnx");
    let out = ok(&run_host(
        &["upgrade", new.to_str().unwrap(), "--out", tempered.to_str().unwrap(), "--band-temperature", "0.5"],
        work.path(),
    ))
    .clone();
    assert!(stdout(&out).contains("band temperature none -> 0.500"), "{}", stdout(&out));
    let sharp = read(&tempered);
    assert_eq!(figure(&sharp, "gender_accuracy"), figure(&after, "gender_accuracy"));
    let total = |c: Vec<f64>| c.iter().sum::<f64>();
    // The report gives each band's count to a tenth: six roundings apart at most.
    let (people, before) = (total(counted(&sharp)), total(counted(&after)));
    assert!((people - before).abs() <= 0.3 + 1e-9, "the same people: {people} and {before}");
    assert_ne!(counted(&sharp), counted(&after), "the shares went through the temperature");
    let bad = run_host(&["upgrade", old.to_str().unwrap(), "--band-temperature=-1"], work.path());
    assert!(!bad.status.success() && stderr(&bad).contains("positive"), "{}", stderr(&bad));

    // Band weights (also fitted by `eval --split val`) move shares between bands: 60+ weighed
    // eight times holds more of the same people, and the temperature stays as it was. Two
    // data sets' fits go in as their geometric mean (4 and 16: 8).
    let weighted = work.path().join("weighted.onnx");
    let out = ok(&run_host(
        &[
            "upgrade",
            tempered.to_str().unwrap(),
            "--out",
            weighted.to_str().unwrap(),
            "--band-weights",
            "1,1,1,1,1,4",
            "--band-weights",
            "1,1,1,1,1,16",
        ],
        work.path(),
    ))
    .clone();
    let said = stdout(&out);
    assert!(
        said.contains("band temperature 0.500 -> 0.500")
            && said.contains("-> 1.000,1.000,1.000,1.000,1.000,8.000"),
        "{said}"
    );
    let heavy = read(&weighted);
    assert!(counted(&heavy)[5] > counted(&sharp)[5], "60+: {:?} -> {:?}", counted(&sharp), counted(&heavy));
    assert!((total(counted(&heavy)) - people).abs() <= 0.3 + 1e-9, "the same people");
    for bad_weights in ["1,1,1,1,1", "1,1,1,1,1,0"] {
        let bad =
            run_host(&["upgrade", tempered.to_str().unwrap(), "--band-weights", bad_weights], work.path());
        assert!(!bad.status.success() && stderr(&bad).contains(bad_weights), "{}", stderr(&bad));
    }
}

/// `run` reads faces with its own file unless told otherwise: the shipped net, int8, each face
/// read once (a track fuses a person's readings over frames, where the mirrored second reading
/// buys nothing). Read alone, face by face, it stays close to the reference file.
#[test]
fn run_reads_with_its_one_reading_file_which_reads_faces_close_to_the_reference() {
    let work = tempfile::tempdir().unwrap();
    let csv = manifest(work.path(), &test_split_faces(40), "");
    let read = |model: &Path, name: &str| -> Vec<(f64, f64)> {
        let readings = work.path().join(name);
        ok(&run_device(&["eval", csv.to_str().unwrap(), "--readings", readings.to_str().unwrap()], model));
        let mut rows = csv::Reader::from_path(&readings).unwrap();
        rows.records()
            .map(|r| r.unwrap())
            .filter(|r| &r[4] == "read")
            .map(|r| (r[5].parse().unwrap(), r[7].parse().unwrap()))
            .collect()
    };
    let reference = read(&shipped_model(), "mirrored.csv");
    let run_file = root().join("models").join("faceage-run-int8.onnx");
    let once = read(&run_file, "once.csv");
    assert_eq!(once.len(), reference.len());
    assert!(reference.len() >= 39, "{} of 40 faces read", reference.len());
    let n = once.len() as f64;
    let age_apart = once.iter().zip(&reference).map(|(a, b)| (a.0 - b.0).abs()).sum::<f64>() / n;
    let same_gender = once.iter().zip(&reference).filter(|(a, b)| (a.1 > 0.5) == (b.1 > 0.5)).count();
    assert!(age_apart <= 1.5, "one reading is {age_apart:.2} years from the mirrored reading on average");
    assert!(same_gender as f64 >= 0.9 * n, "the same gender for {same_gender} of {n} faces");

    // `run` without --model (nor FACEAGE_MODEL) reads with it.
    let clip = one_walker_clip(work.path(), 20);
    let out = ok(&run(Command::new(bin("faceage"))
        .current_dir(root())
        .env_remove("FACEAGE_MODEL")
        .args(["run", "--source", clip.to_str().unwrap(), "--counts-log", "-", "--detector"])
        .arg(detector())))
    .clone();
    let said = stderr(&out);
    assert!(said.contains("reading faces with models/faceage-run-int8.onnx"), "{said}");
    assert!(said.contains("1 people counted"), "{said}");
}
