//! Training on several data sets at once, one of them labelled with age groups (FairFace's
//! `20-29`), and `faceage eval` on age groups: a tiny run end to end, bad rows named.

use faceage_e2e::*;

#[test]
fn a_mixed_manifest_and_a_second_source_train_export_and_evaluate() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // One manifest of exact ages (UTKFace chips) and age groups (FairFace faces), with bad
    // rows of every kind; a second source of FairFace faces read half as often.
    let mut mixed = vec!["path,age,gender,race".to_string()];
    for path in spread_faces(80, 11) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fields: Vec<&str> = name.split('_').collect();
        let gender = if fields[1] == "1" { "F" } else { "M" };
        mixed.push(format!("{},{},{gender},{}", path.display(), fields[0], fields[2]));
    }
    mixed.extend(fairface_rows(0, 80));
    let corrupt = dir.join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8 not really a jpeg").unwrap();
    let any_face = fairface_rows(500, 1)[0].split(',').next().unwrap().to_string();
    mixed.extend([
        format!("{any_face},15-5,Male,White"),
        format!("{any_face},20-29,Male,Martian"),
        format!("{},20-29,Female,Black", dir.join("missing.jpg").display()),
        format!("{},30-39,Male,Indian", corrupt.display()),
    ]);
    let mixed_csv = dir.join("mixed.csv");
    std::fs::write(&mixed_csv, mixed.join("\n") + "\n").unwrap();
    let second_csv = dir.join("second.csv");
    let second = [vec!["path,age,gender,race".to_string()], fairface_rows(200, 60)].concat();
    std::fs::write(&second_csv, second.join("\n") + "\n").unwrap();

    let run = dir.join("run");
    let weighted = format!("{}:0.5", second_csv.display());
    let args = ["train", "--net", "tiny", "--size", "32", "--epochs", "1", "--batch", "32"];
    let sources =
        ["--data", mixed_csv.to_str().unwrap(), "--data", &weighted, "--out", run.to_str().unwrap()];
    let trained = run_host(&[&args[..], &sources].concat(), dir);
    ok(&trained);
    let log = stderr(&trained);
    // Every bad row by name and reason, and each source's summary.
    assert!(log.contains("15-5") && log.contains("age group"), "{log}");
    assert!(log.contains("Martian"), "{log}");
    assert!(log.contains("missing.jpg") && log.contains("corrupt.jpg"), "{log}");
    assert!(log.contains("162 labelled images (weight 1), 2 rows unusable"), "{log}");
    assert!(log.contains("60 labelled images (weight 0.5)"), "{log}");
    let rejected = std::fs::read_to_string(run.join("rejected.txt")).unwrap();
    for named in ["15-5", "Martian", "missing.jpg", "corrupt.jpg"] {
        assert!(rejected.contains(named), "rejected.txt names {named}: {rejected}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train.json")).unwrap()).unwrap();
    assert_eq!(config["data"][1]["weight"], 0.5, "{config}");
    let metrics = run_metrics(&run);
    let mae = metrics[0]["val_age_mae"].as_f64().unwrap();
    assert!(mae.is_finite() && mae >= 0.0, "{metrics:?}");

    let model = dir.join("mixed.onnx");
    ok(&run_host(&["export", "--run", run.to_str().unwrap(), "--out", model.to_str().unwrap()], dir));
    let contract = std::fs::read(&model).unwrap();
    let text = String::from_utf8_lossy(&contract);
    assert!(text.contains("FairFace") && text.contains("CC BY 4.0"), "the file credits FairFace");

    // `faceage eval` on the manifest: group figures, race groups of FairFace, rows named.
    let eval = run_device(&["eval", mixed_csv.to_str().unwrap(), "--json"], &model);
    ok(&eval);
    assert!(stderr(&eval).contains("15-5"), "{}", stderr(&eval));
    let json: serde_json::Value = serde_json::from_str(&stdout(&eval)).unwrap();
    let report = &json["report"];
    assert_eq!(json["labels_rejected"], 2);
    let groups = &report["age_groups"];
    let read = groups["faces"].as_u64().unwrap();
    assert!(read >= 70, "most of the 80 FairFace faces read: {groups}");
    let (exact, within) = (groups["exact"].as_f64().unwrap(), groups["within_one"].as_f64().unwrap());
    assert!((0.0..=100.0).contains(&exact) && exact <= within, "{groups}");
    let names: Vec<&str> =
        groups["by_group"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"20-29") && names.contains(&"30-39"), "{names:?}");
    let races: Vec<&str> =
        report["by_race"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert!(races.contains(&"East Asian") && races.contains(&"Latino_Hispanic"), "{races:?}");
    let table = stdout(ok(&run_device(&["eval", second_csv.to_str().unwrap()], &model)));
    assert!(table.contains("age group exact") && table.contains("within one group"), "{table}");
}
