//! Fine-tuning (`train --init FILE.onnx`): a run starts from a model file's weights, its batch
//! norms unfolded so that it reads exactly as the file does, and a file that does not fit the
//! run (another split, another net, not a model) is refused by name before any training.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use faceage_e2e::*;
use serde_json::Value;

/// `(val_age_mae, val_gender_accuracy)` of an epoch's metrics line.
fn figures(line: &Value) -> (f64, f64) {
    (line["val_age_mae"].as_f64().unwrap(), line["val_gender_accuracy"].as_f64().unwrap())
}

/// The figures of the run's kept epoch: the best validation score, which export writes out.
fn best_figures(run: &Path) -> (f64, f64) {
    let lines = run_metrics(run);
    let best = lines
        .iter()
        .min_by(|a, b| a["val_score"].as_f64().unwrap().total_cmp(&b["val_score"].as_f64().unwrap()))
        .unwrap();
    figures(best)
}

#[test]
fn a_run_started_from_a_file_reads_as_the_file_does() {
    let tiny = tiny_run();
    let model = tiny.f32_model.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();

    // A learning rate too small to move a weight: the first validation must be the one of the
    // epoch the file was exported from. Were --init ignored, it would be a fresh net's.
    let still = out.path().join("still");
    let trained = train_small_with("standard", 1, &still, &tiny.dir, &["--init", model, "--lr", "1e-12"]);
    ok(&trained);
    assert!(stderr(&trained).contains("reading as the file does"), "{}", stderr(&trained));
    let (source, first) = (best_figures(&tiny.dir.join("run")), figures(&run_metrics(&still)[0]));
    assert!(
        (first.0 - source.0).abs() < 0.02 && (first.1 - source.1).abs() < 0.01,
        "started from the file {first:?}, the file's own run {source:?}"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(still.join("train.json")).unwrap()).unwrap();
    assert_eq!(saved["init"], model, "train.json names the file the run started from");

    // Fine-tuning proper moves the weights away from the file.
    let tuned = out.path().join("tuned");
    ok(&train_small_with("standard", 1, &tuned, &tiny.dir, &["--init", model, "--lr", "3e-3"]));
    assert_ne!(figures(&run_metrics(&tuned)[0]), first, "a real learning rate changes the readings");
}

#[test]
fn a_file_that_does_not_fit_the_run_is_refused_by_name() {
    let tiny = tiny_run();
    let out = tempfile::tempdir().unwrap();
    let refused = |file: &Path, extra: &[&str], why: &str| {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let args = [&["--init", file.to_str().unwrap()][..], extra].concat();
        let result =
            train_small_with("standard", 1, &out.path().join(format!("run-{name}")), &tiny.dir, &args);
        assert!(!result.status.success(), "{name} was accepted");
        let err = stderr(&result);
        assert!(err.contains(&name) && err.contains(why), "{name}: {err}");
        assert!(
            !out.path().join(format!("run-{name}")).join("metrics.jsonl").exists(),
            "{name}: no training"
        );
    };

    let seed2 = out.path().join("seed2.onnx");
    edit_model(&tiny.f32_model, &seed2, |p| set_metadata(p, "faceage.train.split_seed", "2"));
    refused(&seed2, &[], "split differs");

    // The file's net pools by average; a run with learned pooling has weights it lacks.
    let plain = out.path().join("average-pooled.onnx");
    std::fs::copy(&tiny.f32_model, &plain).unwrap();
    refused(&plain, &["--pooling", "learned"], "pool.weight");

    let truncated = out.path().join("truncated.onnx");
    let bytes = std::fs::read(&tiny.f32_model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    refused(&truncated, &[], "not a readable ONNX model");
}

/// One epoch of fine-tuning from the tiny run's file into `out/name`, with `extra` flags.
fn fine_tune(out: &Path, name: &str, extra: &[&str]) -> (PathBuf, Output) {
    let tiny = tiny_run();
    let run = out.join(name);
    let args = [&["--init", tiny.f32_model.to_str().unwrap()], extra].concat();
    let trained = train_small_with("standard", 1, &run, &tiny.dir, &args);
    (run, trained)
}

/// The validation figures of one plain fine-tuning epoch, made once for the tests that set an
/// option against it.
fn plain_figures() -> (f64, f64) {
    static PLAIN: OnceLock<(f64, f64)> = OnceLock::new();
    *PLAIN.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        let (run, trained) = fine_tune(out.path(), "plain", &[]);
        ok(&trained);
        let saved = std::fs::read_to_string(run.join("train.json")).unwrap();
        for option in ["scene_views", "band_balance"] {
            assert!(!saved.contains(option), "runs without {option} keep the train.json they had");
        }
        figures(&run_metrics(&run)[0])
    })
}

/// A run with `flag value`: it trains, reads other figures than the plain run, and its
/// `train.json` records `key: value`. The same flag out of range is refused by name.
fn option_changes_the_epoch(flag: &str, value: &str, key: &str, out_of_range: &str) -> Output {
    let out = tempfile::tempdir().unwrap();
    let (run, trained) = fine_tune(out.path(), "with", &[flag, value]);
    ok(&trained);
    assert_ne!(figures(&run_metrics(&run)[0]), plain_figures(), "{flag} {value} changes what is learnt");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train.json")).unwrap()).unwrap();
    assert_eq!(saved[key], value.parse::<f64>().unwrap());

    let (_, refused) = fine_tune(out.path(), "refused", &[flag, out_of_range]);
    let named = format!("{flag} {out_of_range}");
    assert!(!refused.status.success() && stderr(&refused).contains(&named), "{}", stderr(&refused));
    trained
}

/// Training for the camera (`--scene-views`): a share of the training faces is read from the
/// same photo placed small on a 640x480 frame and found there by the board's detector, as
/// `faceage eval --scene` reads it.
#[test]
fn scene_views_train_on_faces_found_in_a_camera_sized_frame() {
    let trained = option_changes_the_epoch("--scene-views", "0.5", "scene_views", "2");
    let err = stderr(&trained);
    let line = err.lines().find(|l| l.starts_with("scene views: ")).unwrap_or_else(|| panic!("{err}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (found, of): (usize, usize) = (words[2].parse().unwrap(), words[4].parse().unwrap());
    assert!(of > 200 && found * 10 >= of * 9, "most faces are found in the frame too: {line}");
}

/// `--band-balance`: each epoch draws its faces weighted toward the rarer age bands (which
/// faces, `data::epoch_order`'s unit test).
#[test]
fn band_balance_changes_what_an_epoch_reads_and_is_recorded() {
    option_changes_the_epoch("--band-balance", "1", "band_balance", "2");
}
