//! Training runs survive being stopped: a run that stopped early goes on to the end of its
//! schedule with more patience, and a run interrupted by Ctrl-C (SIGINT) mid-epoch continues
//! from its checkpoint. Either way the resumed run reads like one that was never stopped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faceage_e2e::*;
use serde_json::Value;

const EPOCHS: usize = 3;

fn train(run: &Path, work: &Path, extra: &[&str]) -> std::process::Output {
    train_small_with("tiny", EPOCHS, run, work, extra)
}

/// The validation figures of every epoch must match a run that was never stopped, to the bit:
/// training is deterministic for a given thread count.
fn assert_same_validation(resumed: &[Value], straight: &[Value]) {
    assert_eq!(resumed.len(), straight.len(), "one line per epoch");
    for (r, s) in resumed.iter().zip(straight) {
        assert_eq!(r["epoch"], s["epoch"]);
        for key in ["val_age_mae", "val_gender_accuracy"] {
            let (a, b) = (r[key].as_f64().unwrap(), s[key].as_f64().unwrap());
            assert_eq!(a, b, "epoch {}: {key} resumed vs straight", r["epoch"]);
        }
    }
}

fn straight_run() -> &'static Vec<Value> {
    static RUN: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        let run = work.path().join("straight");
        ok(&train(&run, work.path(), &["--patience", "9"]));
        run_metrics(&run)
    })
}

#[test]
fn a_run_that_stopped_early_goes_on_with_more_patience() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    // Patience 0 stops after the first epoch, whatever the data.
    let stopped = train(&run, work.path(), &["--patience", "0"]);
    ok(&stopped);
    assert!(stderr(&stopped).contains("stopping early"), "{}", stderr(&stopped));
    assert_eq!(run_metrics(&run).len(), 1);

    let resumed = train(&run, work.path(), &["--resume", "--patience", "9"]);
    ok(&resumed);
    assert!(stderr(&resumed).contains("resuming at epoch 2"), "{}", stderr(&resumed));
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train.json")).unwrap()).unwrap();
    assert_eq!(saved["patience"], 9, "train.json records the patience the run ended with");
    assert_same_validation(&run_metrics(&run), straight_run());
}

#[test]
fn a_run_interrupted_mid_epoch_continues_from_its_checkpoint() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    // Crops first, so the interruption lands in training rather than in crop building.
    ok(&train(&work.path().join("warm-up"), work.path(), &["--patience", "0"]));

    let child = Command::new(bin("faceage-host"))
        .args([
            "train",
            "--net",
            "tiny",
            "--size",
            "32",
            "--limit",
            "300",
            "--epochs",
            &EPOCHS.to_string(),
            "--batch",
            "32",
        ])
        .args(["--patience", "9", "--out", run.to_str().unwrap(), "--data"])
        .arg(utkface_dir())
        .arg("--detector")
        .arg(detector())
        .arg("--cache-dir")
        .arg(crop_cache())
        .env("FACEAGE_THREADS", TRAINER_THREADS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first epoch is on record, i.e. inside a later one.
    let started = Instant::now();
    while !std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() >= 1) {
        assert!(started.elapsed() < Duration::from_secs(300), "no epoch finished in 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&Command::new("kill").args(["-INT", &child.id().to_string()]).output().unwrap());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Ctrl-C is a clean stop: {err}");
    assert!(err.contains("interrupted at epoch"), "the signal came inside a later epoch: {err}");
    assert!(run_metrics(&run).len() < 3, "{err}");
    assert!(run.join("checkpoint.safetensors").exists());

    let resumed = train(&run, work.path(), &["--resume"]);
    ok(&resumed);
    assert!(stderr(&resumed).contains("resuming at epoch"), "{}", stderr(&resumed));
    assert_same_validation(&run_metrics(&run), straight_run());
}

#[test]
fn a_run_with_a_weight_average_judges_the_average_and_resumes_exactly() {
    let work = tempfile::tempdir().unwrap();
    let refused = train(&work.path().join("bad"), work.path(), &["--ema", "1.5"]);
    assert!(!refused.status.success() && stderr(&refused).contains("--ema 1.5"), "{}", stderr(&refused));

    let straight = work.path().join("straight");
    ok(&train(&straight, work.path(), &["--patience", "9", "--ema", "0.9"]));
    let averaged = run_metrics(&straight);
    let last = averaged.len() - 1;
    assert_ne!(
        averaged[last]["val_age_mae"],
        straight_run()[last]["val_age_mae"],
        "the same run without the average: the average must be what is judged"
    );

    // The average lives in the checkpoint: stopping and resuming changes nothing.
    let run = work.path().join("run");
    ok(&train(&run, work.path(), &["--patience", "0", "--ema", "0.9"]));
    ok(&train(&run, work.path(), &["--resume", "--patience", "9"]));
    assert_same_validation(&run_metrics(&run), &averaged);
}

#[test]
fn a_run_with_momentum_statistics_reads_differently_once_they_are_estimated_again() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("momentum");
    ok(&train(&run, work.path(), &["--bn-stats", "momentum"]));
    let run_s = run.to_str().unwrap();
    let eval =
        |extra: &[&str]| stdout(ok(&run_host(&[&["eval", "--run", run_s][..], extra].concat(), work.path())));
    let (kept, recalibrated) = (eval(&[]), eval(&["--recalibrate-bn"]));
    assert_ne!(kept, recalibrated, "training's momentum average is not the statistics of the plain crops");
    assert_eq!(recalibrated, eval(&["--recalibrate-bn"]), "the estimate is the same every time");
}
