//! int8 export: both forms load and run in tract through the board's code, stay close to the
//! f32 model on real faces, and broken files are refused with the reason. `verify` measures
//! files on a run's split, or without the run on the split a file records.

use std::path::Path;

use faceage_e2e::*;
use serde_json::Value;

/// `faceage-host export` of the shared tiny run to `f32_out` and an int8 file `int8_out`
/// (calibrated on few crops: quick), with `extra` options.
fn export_tiny(f32_out: &Path, int8_out: &Path, extra: &[&str]) -> std::process::Output {
    let run = tiny_run();
    let run_folder = run.dir.join("run");
    let args = [
        "export",
        "--run",
        run_folder.to_str().unwrap(),
        "--out",
        f32_out.to_str().unwrap(),
        "--quantize",
        "int8",
        "--int8-out",
        int8_out.to_str().unwrap(),
        "--calibration-crops",
        "64",
    ];
    run_host(&[&args[..], extra].concat(), &run.dir)
}

fn export_int8(format: &str) -> std::path::PathBuf {
    let run = tiny_run();
    let f32_out = run.dir.join(format!("q-{format}-f32.onnx"));
    let out = run.dir.join(format!("q-{format}.onnx"));
    let exported = export_tiny(&f32_out, &out, &["--quant-format", format]);
    ok(&exported);
    assert!(
        stdout(&exported).contains(&format!("int8-{}", if format == "qdq" { "qdq" } else { "qoperator" })),
        "{}",
        stdout(&exported)
    );
    out
}

fn readings(model: &Path, photo: &Path) -> Vec<(f64, f64)> {
    let out = run_device(&["classify", "--json", photo.to_str().unwrap()], model);
    ok(&out);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    v[0]["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["age"].as_f64().unwrap(), f["female"].as_f64().unwrap()))
        .collect()
}

#[test]
fn both_int8_forms_run_in_tract_close_to_f32_on_real_faces() {
    let work = tempfile::tempdir().unwrap();
    let (scene, _) = compose_scene(&spread_faces(4, 301), 900, 400, 150);
    let photo = work.path().join("group.png");
    scene.save(&photo).unwrap();
    let reference = readings(tiny_model(), &photo);
    assert_eq!(reference.len(), 4);
    let f32_size = std::fs::metadata(tiny_model()).unwrap().len();
    for format in ["qdq", "qoperator"] {
        let model = export_int8(format);
        let size = std::fs::metadata(&model).unwrap().len();
        assert!(size < f32_size, "{format}: {size} bytes, f32 {f32_size}");
        let got = readings(&model, &photo);
        assert_eq!(got.len(), reference.len());
        for ((a, p), (qa, qp)) in reference.iter().zip(&got) {
            // Stated tolerance per face: 1.5 years of age, 0.05 of probability.
            assert!(
                (a - qa).abs() <= 1.5 && (p - qp).abs() <= 0.05,
                "{format}: f32 ({a:.2}, {p:.3}) vs int8 ({qa:.2}, {qp:.3})"
            );
        }
        // The file says how it was quantized, and `verify` measures it on the test split.
        let verify = run_host(
            &[
                "verify",
                tiny_model().to_str().unwrap(),
                model.to_str().unwrap(),
                "--run",
                tiny_run().dir.join("run").to_str().unwrap(),
            ],
            &tiny_run().dir,
        );
        let text = stdout(&verify);
        assert!(text.contains("uint8 activations per tensor") && text.contains("against"), "{text}");
    }
}

#[test]
fn a_corrupt_scale_or_a_foreign_op_is_refused_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let photo = one_face_photo(work.path(), "p.png", 9);
    let int8 = export_int8("qdq");

    let corrupt = work.path().join("corrupt-scale.onnx");
    edit_model(&int8, &corrupt, |m| {
        let graph = m.graph.as_mut().unwrap();
        let scale =
            graph.initializer.iter_mut().find(|t| t.name == "conv2.weight.scale").expect("a weight scale");
        scale.raw_data = scale.raw_data.chunks(4).flat_map(|_| f32::NAN.to_le_bytes()).collect();
    });
    let out = run_device(&["classify", photo.to_str().unwrap()], &corrupt);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("corrupt-scale.onnx") && err.contains("corrupt weights or quantization scales"),
        "{err}"
    );

    let foreign = work.path().join("foreign-op.onnx");
    edit_model(&int8, &foreign, |m| {
        let node = m.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
        node.op_type = "FancyActivation".into();
    });
    let out = run_device(&["classify", photo.to_str().unwrap()], &foreign);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("foreign-op.onnx")
            && err.contains("tract cannot load")
            && err.contains("FancyActivation"),
        "{err}"
    );
}

/// A CSV manifest of `n` UTKFace images (absolute paths: nothing is copied), labels from the names.
fn utkface_manifest(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut text = String::from("path,age,gender\n");
    for face in spread_faces(n, 3) {
        let name = face.file_name().unwrap().to_str().unwrap();
        let mut labels = name.split('_');
        let (age, gender) = (labels.next().unwrap(), labels.next().unwrap());
        text += &format!("{},{age},{gender}\n", face.display());
    }
    let manifest = dir.join("faces.csv");
    std::fs::write(&manifest, text).unwrap();
    manifest
}

/// The figures, without the lines that name the file and say how the split was chosen.
fn figures(verify: &std::process::Output) -> String {
    let text = stdout(verify);
    text.lines().filter(|l| !l.contains("split") && !l.starts_with("## ")).collect::<Vec<_>>().join("\n")
}

#[test]
fn verify_measures_a_file_on_the_split_it_records_without_its_run() {
    let work = tempfile::tempdir().unwrap();
    let manifest = utkface_manifest(work.path(), 160);
    let manifest_arg = manifest.to_str().unwrap();
    let run = work.path().join("run");
    let model = work.path().join("m.onnx");
    let (run_arg, model_arg) = (run.to_str().unwrap(), model.to_str().unwrap());
    let args =
        ["train", "--net", "tiny", "--size", "32", "--epochs", "1", "--batch", "32", "--data", manifest_arg];
    ok(&run_host(&[&args[..], &["--out", run_arg]].concat(), work.path()));
    ok(&run_host(&["export", "--run", run_arg, "--out", model_arg], work.path()));

    let with_run = run_host(&["verify", model_arg, "--run", run_arg], work.path());
    let with_data = run_host(&["verify", model_arg, "--data", manifest_arg], work.path());
    ok(&with_run);
    ok(&with_data);
    // The same faces, cropped the same way: the same figures to the last digit.
    assert!(figures(&with_data).contains("age MAE"), "{}", stdout(&with_data));
    assert_eq!(figures(&with_data), figures(&with_run));
    // The size of the test split the exporter measured, as the file records it.
    let contract = faceage_device::AgeGenderModel::load(&model).unwrap().contract().clone();
    let test_faces = contract.metrics["test.faces"] as u64;
    assert!(
        stdout(&with_data).contains(&format!("Test split: {test_faces} faces")),
        "{}",
        stdout(&with_data)
    );

    // Another seed is another split, and says it is not the one the file was measured on.
    let other_seed = run_host(&["verify", model_arg, "--data", manifest_arg, "--seed", "5"], work.path());
    ok(&other_seed);
    assert_ne!(figures(&other_seed), figures(&with_run));

    // A file that does not record its seed needs one given; one cropped otherwise is refused.
    let unrecorded = work.path().join("unrecorded.onnx");
    edit_model(&model, &unrecorded, |p| {
        p.metadata_props.retain(|e| e.key != "faceage.train.split_seed");
        set_metadata(p, "faceage.train.data", "somewhere");
    });
    let refused = run_host(&["verify", unrecorded.to_str().unwrap(), "--data", manifest_arg], work.path());
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unrecorded.onnx") && stderr(&refused).contains("--seed"),
        "{}",
        stderr(&refused)
    );
    let seeded = run_host(
        &["verify", unrecorded.to_str().unwrap(), "--data", manifest_arg, "--seed", "1"],
        work.path(),
    );
    assert_eq!(figures(ok(&seeded)), figures(&with_run));
    let wider = work.path().join("wider.onnx");
    edit_model(&model, &wider, |p| set_metadata(p, "faceage.crop.scale", "1.4"));
    let refused =
        run_host(&["verify", model_arg, wider.to_str().unwrap(), "--data", manifest_arg], work.path());
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("wider.onnx") && stderr(&refused).contains("crops"),
        "{}",
        stderr(&refused)
    );
    // Neither a run nor data: told what to give.
    let neither = run_host(&["verify", model_arg], work.path());
    assert!(!neither.status.success() && stderr(&neither).contains("--run"), "{}", stderr(&neither));
}

/// `export --run-out` writes `run`'s file beside the others: int8, each face read once (no
/// mirrored view in its graph, where the f32 file has one), measured against its own
/// one-reading f32 step, which is not left behind.
#[test]
fn export_writes_runs_one_reading_file_on_request() {
    let run = tiny_run();
    let folder = run.dir.join("once");
    std::fs::create_dir_all(&folder).unwrap();
    let (f32_out, int8_out, run_out) =
        (folder.join("m-f32.onnx"), folder.join("m-int8.onnx"), folder.join("m-run-int8.onnx"));
    let exported = export_tiny(&f32_out, &int8_out, &["--run-out", run_out.to_str().unwrap()]);
    let said = stdout(ok(&exported));
    assert!(said.contains("m-run-int8.onnx") && said.contains("read once"), "{said}");
    // Both int8 files are measured against an f32 reading of their own.
    assert_eq!(said.matches("vs f32").count(), 2, "{said}");
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["m-f32.onnx", "m-int8.onnx", "m-run-int8.onnx"], "no scratch file left");
    let nodes = |file: &Path| -> Vec<(String, String)> {
        use prost::Message;
        let bytes = std::fs::read(file).unwrap();
        let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
        proto.graph.unwrap().node.into_iter().map(|n| (n.name, n.op_type)).collect()
    };
    let mirrored = |file: &Path| nodes(file).iter().any(|(name, op)| name == "mirror" && op == "Slice");
    assert!(mirrored(&f32_out) && mirrored(&int8_out), "the shipped reading is mirrored");
    assert!(!mirrored(&run_out), "run's file reads each face once");
    assert!(nodes(&run_out).iter().any(|(_, op)| op == "QuantizeLinear"), "and is int8");
    // The board loads it and reads a real face.
    let photo = one_face_photo(&run.dir, "once.png", 5);
    assert_eq!(readings(&run_out, &photo).len(), 1);

    let refused = run_host(
        &["export", "--run", run.dir.join("run").to_str().unwrap(), "--run-out", "x.onnx"],
        &run.dir,
    );
    assert!(!refused.status.success() && stderr(&refused).contains("--quantize"), "{}", stderr(&refused));
}
