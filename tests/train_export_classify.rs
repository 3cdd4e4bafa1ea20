//! The whole chain on real faces: train a small model on a few hundred UTKFace images, export
//! it, and classify a composed photo of several people with the board's binary. It uses the
//! separable net (depthwise, pointwise and strided convolutions), so that export path is
//! checked end to end; the other tests' shared model is the shipped plain design.

use faceage_e2e::*;

#[test]
fn small_model_trains_exports_and_finds_every_face_in_a_group_photo() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    let run_s = run.to_str().unwrap();

    let trained = train_small("separable", 2, &run, work.path());
    ok(&trained);
    for file in [
        "best.safetensors",
        "checkpoint.safetensors",
        "train.json",
        "curves.png",
        "gallery.png",
        "val-eval.md",
        "age-map.json",
    ] {
        assert!(run.join(file).exists(), "training should write {file}");
    }
    let lines = run_metrics(&run);
    assert_eq!(lines.len(), 2, "one metrics line per epoch");
    for l in &lines {
        let mae = l["val_age_mae"].as_f64().unwrap();
        let acc = l["val_gender_accuracy"].as_f64().unwrap();
        assert!(mae.is_finite() && mae > 0.0 && (0.0..=100.0).contains(&acc), "{l}");
    }
    assert!(stdout(&trained).contains("age MAE"), "train prints the test evaluation");

    let model = work.path().join("model.onnx");
    let exported = run_host(&["export", "--run", run_s, "--out", model.to_str().unwrap()], work.path());
    ok(&exported);
    assert!(stdout(&exported).contains("tract vs candle"), "{}", stdout(&exported));

    // With the age map written into the graph, tract still reads what candle reads (export
    // fails above 1e-3), and the file reads ages differently from the plain one.
    let mapped = work.path().join("model-mapped.onnx");
    ok(&run_host(&["export", "--run", run_s, "--age-map", "--out", mapped.to_str().unwrap()], work.path()));
    let single = one_face_photo(work.path(), "one.jpg", 3);
    let age_of = |model: &std::path::Path| -> f64 {
        let out = run_device(&["classify", "--json", single.to_str().unwrap()], model);
        let json: serde_json::Value = serde_json::from_str(&stdout(ok(&out))).unwrap();
        json[0]["faces"][0]["age"].as_f64().expect("one face read")
    };
    let map = std::fs::read_to_string(run.join("age-map.json")).unwrap();
    assert!((age_of(&model) - age_of(&mapped)).abs() > 1e-3, "the map changes the reading: {map}");

    // The run kept batch-norm statistics re-estimated on plain training crops (`--bn-stats
    // precise`, the default): estimating them again changes no reading.
    let eval =
        |extra: &[&str]| stdout(ok(&run_host(&[&["eval", "--run", run_s][..], extra].concat(), work.path())));
    assert_eq!(eval(&[]), eval(&["--recalibrate-bn"]));

    // The second training run finds every crop in the cache, though it names the data
    // folder another way.
    let data = utkface_dir();
    let respelled = data.join("..").join(data.file_name().unwrap());
    let run2 = work.path().join("run2");
    let args = ["train", "--net", "separable", "--size", "32", "--limit", "300", "--epochs", "1"];
    let place = ["--data", respelled.to_str().unwrap(), "--out", run2.to_str().unwrap()];
    let again = run_host(&[&args[..], &place].concat(), work.path());
    ok(&again);
    assert!(stderr(&again).contains("from cache"), "{}", stderr(&again));

    // Three people in one photo.
    let faces = spread_faces(3, 7);
    let (scene, placed) = compose_scene(&faces, 800, 480, 150);
    let photo = work.path().join("group.jpg");
    scene.save(&photo).unwrap();
    let out = run_device(&["classify", "--json", photo.to_str().unwrap()], &model);
    ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("classify --json prints JSON");
    let found = json[0]["faces"].as_array().expect("faces array");
    assert_eq!(found.len(), 3, "every face is found: {json}");
    for p in &placed {
        let truth = (p.x as f32, p.y as f32, (p.x + p.side) as f32, (p.y + p.side) as f32);
        let best = found
            .iter()
            .map(|f| {
                let (x, y, w, h) = (
                    f["x"].as_f64().unwrap() as f32,
                    f["y"].as_f64().unwrap() as f32,
                    f["w"].as_f64().unwrap() as f32,
                    f["h"].as_f64().unwrap() as f32,
                );
                iou(truth, (x, y, x + w, y + h))
            })
            .fold(0.0, f32::max);
        assert!(best > 0.4, "a detection overlaps the face placed at {p:?} (best IoU {best})");
    }
    for f in found {
        let age = f["age"].as_f64().unwrap();
        let female = f["female"].as_f64().unwrap();
        assert!((0.0..=120.0).contains(&age), "age in years: {f}");
        assert!((0.0..=1.0).contains(&female), "probability: {f}");
        assert_eq!(f["gender"].as_str().unwrap(), if female >= 0.5 { "F" } else { "M" });
        assert!(f["age_std"].as_f64().unwrap() >= 0.0);
        assert!(f["score"].as_f64().unwrap() >= 0.5);
    }

    // The table form says the same.
    let table = run_device(&["classify", photo.to_str().unwrap()], &model);
    ok(&table);
    assert!(stdout(&table).contains("3 faces"), "{}", stdout(&table));

    // Asked for a map the run does not have, eval says which command makes one.
    std::fs::remove_file(run.join("age-map.json")).unwrap();
    let refused = run_host(&["eval", "--run", run_s, "--age-map"], work.path());
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("fit-age-map"), "{}", stderr(&refused));
}

#[test]
fn a_photo_without_faces_says_so() {
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("wall.png");
    image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
        .save(&empty)
        .unwrap();
    let out = run_device(&["classify", empty.to_str().unwrap()], tiny_model());
    ok(&out);
    assert!(stdout(&out).contains("no face found"), "{}", stdout(&out));
}

#[test]
fn learned_pooling_exports_to_f32_and_both_int8_forms() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    let run_s = run.to_str().unwrap();
    let args =
        ["train", "--net", "standard", "--size", "32", "--limit", "300", "--epochs", "1", "--batch", "32"];
    ok(&run_host(&[&args[..], &["--pooling", "learned", "--out", run_s]].concat(), work.path()));
    let config = std::fs::read_to_string(run.join("train.json")).unwrap();
    assert!(config.contains("\"pooling\": \"learned\""), "{config}");

    let f32_model = work.path().join("f32.onnx");
    for format in ["qdq", "qoperator"] {
        let int8_model = work.path().join(format!("{format}.onnx"));
        let exported = run_host(
            &[
                "export",
                "--run",
                run_s,
                "--out",
                f32_model.to_str().unwrap(),
                "--quantize",
                "int8",
                "--quant-format",
                format,
                "--int8-out",
                int8_model.to_str().unwrap(),
                "--calibration-crops",
                "64",
            ],
            work.path(),
        );
        // Export fails when tract and candle disagree on the f32 file by more than 1e-3.
        ok(&exported);
        let text = stdout(&exported);
        assert!(text.contains("tract vs candle") && text.contains(&format!("int8-{format}")), "{text}");
        // The board reads both files.
        let photo = one_face_photo(work.path(), "one.png", 0);
        for model in [&f32_model, &int8_model] {
            let out = run_device(&["classify", "--json", photo.to_str().unwrap()], model);
            ok(&out);
            assert!(stdout(&out).contains("\"age\""), "{}", stdout(&out));
        }
    }
}
