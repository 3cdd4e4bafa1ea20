//! Knowledge distillation (`train --teacher RUN|FILE.onnx`): a student learns from its labels
//! and a trained run's readings. The teacher changes what the student learns, a share of 0 is
//! the plain run to the bit, a resumed student reads its teachers' readings back from its run
//! folder, a run's exported file teaches as the run does, and teachers that saw other faces
//! are refused.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use faceage_e2e::*;
use serde_json::Value;

fn train(run: &Path, work: &Path, extra: &[&str]) -> std::process::Output {
    train_small_with("tiny", 2, run, work, extra)
}

fn val_figures(run: &Path) -> Vec<(f64, f64)> {
    let figures =
        |m: &Value| (m["val_age_mae"].as_f64().unwrap(), m["val_gender_accuracy"].as_f64().unwrap());
    run_metrics(run).iter().map(figures).collect()
}

/// A teacher (two epochs, patience 9) and the student it teaches with the default share,
/// trained once for the two tests that need that pair (training is deterministic: the same
/// pair wherever it is trained).
struct Taught {
    teacher: PathBuf,
    student: PathBuf,
    /// The student's `train` output.
    student_out: Output,
}

fn taught() -> &'static Taught {
    static TAUGHT: OnceLock<Taught> = OnceLock::new();
    TAUGHT.get_or_init(|| {
        let work = tempfile::Builder::new().prefix("faceage-taught-").tempdir().unwrap().keep();
        let teacher = work.join("teacher");
        ok(&train(&teacher, &work, &["--patience", "9"]));
        let student = work.join("student");
        let student_out =
            train(&student, &work, &["--patience", "9", "--teacher", teacher.to_str().unwrap()]);
        ok(&student_out);
        Taught { teacher, student, student_out }
    })
}

#[test]
fn a_student_learns_from_its_teacher_and_resumes_with_its_readings() {
    let Taught { teacher, student, student_out: out } = taught();
    let work = tempfile::tempdir().unwrap();
    let t = teacher.to_str().unwrap();

    // Share 0: the labels alone, so exactly the teacher's own (same seed, same settings) run.
    let unweighted = work.path().join("unweighted");
    ok(&train(&unweighted, work.path(), &["--patience", "9", "--teacher", t, "--distil-weight", "0"]));
    assert_eq!(val_figures(&unweighted), val_figures(teacher));

    // The student: `--teacher` with the default share.
    assert!(stderr(out).contains("training crops in"), "the teacher read the crops: {}", stderr(out));
    assert_ne!(val_figures(student), val_figures(teacher), "the teacher's readings change what is learnt");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(student.join("train.json")).unwrap()).unwrap();
    assert_eq!(saved["distil"]["teachers"][0], t, "train.json names the teachers");
    assert_eq!(saved["distil"]["weight"], 0.5);

    // Stopped after one epoch and resumed: the readings come back from the run folder, and the
    // run reads like the straight one.
    let resumed = work.path().join("resumed");
    ok(&train(&resumed, work.path(), &["--patience", "0", "--teacher", t]));
    assert!(resumed.join("teacher-targets.safetensors").exists());
    let out = train(&resumed, work.path(), &["--resume", "--patience", "9"]);
    ok(&out);
    assert!(stderr(&out).contains("teachers' readings of"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("training crops in"), "not read again: {}", stderr(&out));
    assert_eq!(val_figures(&resumed), val_figures(student));
}

/// The shipped file's last step: a wider net (`--net wide`, a teacher the board could not carry)
/// teaches a standard-net student that starts from a file, beside that file's own readings.
#[test]
fn a_wide_teacher_teaches_a_standard_student_started_from_a_file() {
    let work = tempfile::tempdir().unwrap();
    let wide = work.path().join("wide");
    ok(&train_small_with("wide", 1, &wide, work.path(), &[]));
    let wide_json: Value =
        serde_json::from_str(&std::fs::read_to_string(wide.join("train.json")).unwrap()).unwrap();
    assert_eq!(wide_json["net"]["stages"][0][0], 64, "twice the standard net's 32 channels");

    // The file to start from and learn beside: the suite's shared standard-net run, exported
    // (the same faces and split as every small run), not a third training of its own.
    let (f, w) = (tiny_model().to_str().unwrap(), wide.to_str().unwrap());
    let tuned = |name: &str, teachers: &[&str]| {
        let run = work.path().join(name);
        let mut extra = vec!["--init", f, "--lr", "3e-4"];
        teachers.iter().for_each(|t| extra.extend(["--teacher", *t]));
        let out = train_small_with("standard", 1, &run, work.path(), &extra);
        ok(&out);
        (run, out)
    };
    let (by_itself, _) = tuned("by-itself", &[f]);
    let (with_wide, out) = tuned("with-wide", &[f, w]);
    assert_eq!(stderr(&out).matches("training crops in").count(), 2, "both teachers read: {}", stderr(&out));
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(with_wide.join("train.json")).unwrap()).unwrap();
    assert_eq!(saved["distil"]["teachers"][1], w);
    assert_eq!(saved["net"]["stages"][0][0], 32, "the student keeps the board's net");
    assert_ne!(val_figures(&with_wide), val_figures(&by_itself), "the wide teacher changes what is learnt");
}

#[test]
fn teachers_that_saw_other_faces_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let other_split = work.path().join("seed2");
    ok(&train(&other_split, work.path(), &["--seed", "2"]));
    let out = train(&work.path().join("s1"), work.path(), &["--teacher", other_split.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("seed2") && err.contains("--seed 2") && err.contains("split differs"), "{err}");

    let out = train(
        &work.path().join("s3"),
        work.path(),
        &["--teacher", work.path().join("nowhere").to_str().unwrap()],
    );
    assert!(!out.status.success() && stderr(&out).contains("nowhere"), "{}", stderr(&out));
    let out = train(
        &work.path().join("s4"),
        work.path(),
        &["--teacher", other_split.to_str().unwrap(), "--distil-weight", "2"],
    );
    assert!(!out.status.success() && stderr(&out).contains("--distil-weight 2"), "{}", stderr(&out));
}

/// A run's exported file (read through tract, as the board reads) teaches what the run itself
/// teaches, so a student can learn from the shipped file without the runs that made it.
#[test]
fn a_model_file_teaches_as_its_run_does() {
    // The student taught by the run itself is the shared one.
    let Taught { teacher, student: from_run, .. } = taught();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("teacher.onnx");
    ok(&run_host(
        &["export", "--run", teacher.to_str().unwrap(), "--out", file.to_str().unwrap()],
        work.path(),
    ));

    let from_file = work.path().join("from-file");
    let out = train(&from_file, work.path(), &["--patience", "9", "--teacher", file.to_str().unwrap()]);
    ok(&out);
    assert!(stderr(&out).contains("training crops in"), "{}", stderr(&out));
    // tract and candle agree to 1e-3 on each reading (export checks it), not to the bit.
    let (a, b) = (val_figures(from_run), val_figures(&from_file));
    assert_eq!(a.len(), b.len());
    for ((mae_run, acc_run), (mae_file, acc_file)) in a.iter().zip(&b) {
        assert!((mae_run - mae_file).abs() < 0.05 && (acc_run - acc_file).abs() < 2.0, "{a:?} vs {b:?}");
    }
    assert_ne!(b, val_figures(teacher), "the file's readings change what is learnt");

    // A file says which split it was trained on; one from another split, or one that does not
    // say, is refused, as is a net without an age distribution to hand on.
    let refused = |name: &str, edit: &dyn Fn(&mut tract_onnx::pb::ModelProto), why: &str| {
        let edited = work.path().join(name);
        edit_model(&file, &edited, |p| edit(p));
        let out = train(
            &work.path().join(format!("s-{name}")),
            work.path(),
            &["--teacher", edited.to_str().unwrap()],
        );
        assert!(!out.status.success(), "{name}");
        assert!(stderr(&out).contains(name) && stderr(&out).contains(why), "{name}: {}", stderr(&out));
    };
    refused("seed2.onnx", &|p| set_metadata(p, "faceage.train.split_seed", "2"), "split differs");
    // A file from before the seed had its own key says it in words, or not at all.
    let unsaid = |p: &mut tract_onnx::pb::ModelProto| {
        p.metadata_props.retain(|e| e.key != "faceage.train.split_seed");
        set_metadata(p, "faceage.train.data", "UTKFace");
    };
    refused("unsaid.onnx", &unsaid, "does not record the split seed");
    let in_words = |p: &mut tract_onnx::pb::ModelProto| {
        p.metadata_props.retain(|e| e.key != "faceage.train.split_seed");
        set_metadata(p, "faceage.train.data", "UTKFace (240 train / 30 val / 30 test faces, split seed 2)");
    };
    refused("words2.onnx", &in_words, "split differs");
    // A file from elsewhere: the same graph with its distribution under names of its own.
    let rename = |p: &mut tract_onnx::pb::ModelProto| {
        for node in &mut p.graph.as_mut().unwrap().node {
            for name in node.input.iter_mut().chain(node.output.iter_mut()) {
                *name = name.replace("age.probs", "age.p");
            }
        }
    };
    refused("foreign.onnx", &rename, "no age distribution");
}

/// `scripts/train-distilled.sh`, the documented way to retrain the shipped model, on small
/// settings: seven teachers, the student taught by all of them, the student fine-tuned for the
/// camera, its two files; run again, it keeps what is finished.
#[test]
fn the_retraining_script_trains_seven_teachers_then_the_student() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("distilled");
    let script = || {
        run(std::process::Command::new(root().join("scripts/train-distilled.sh"))
            .arg(utkface_dir())
            .arg(&out)
            .env("FACEAGE_HOST", bin("faceage-host"))
            .env("FACEAGE_THREADS", TRAINER_THREADS)
            .env("FACEAGE_TRAIN_ARGS", "--net tiny --limit 300 --epochs 1 --batch 32")
            .env(
                "FACEAGE_HOST_ARGS",
                format!("--detector {} --cache-dir {}", detector().display(), crop_cache().display()),
            ))
    };
    ok(&script());
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("student/train.json")).unwrap()).unwrap();
    let teachers = saved["distil"]["teachers"].as_array().unwrap();
    assert_eq!(teachers.len(), 7);
    for t in teachers {
        assert!(Path::new(t.as_str().unwrap()).join("val-eval.json").exists(), "{t} finished");
    }
    let size80: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("teachers/size80/train.json")).unwrap())
            .unwrap();
    assert_eq!(size80["net"]["input_size"], 80, "each teacher keeps its own recipe");
    for file in ["faceage-f32.onnx", "faceage-int8.onnx"] {
        assert!(out.join(file).exists(), "{file}");
    }
    let camera: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("camera/train.json")).unwrap()).unwrap();
    assert_eq!(camera["init"], out.join("student.onnx").to_str().unwrap(), "fine-tuned from the student");
    assert_eq!(camera["scene_views"], 0.5);
    assert_eq!(camera["epochs"], 1, "the caller's options override the script's");

    let again = script();
    ok(&again);
    assert_eq!(stdout(&again).matches(": done").count(), 9, "{}", stdout(&again));
}
