//! Bad input gets a clear error naming the file and the problem, and nothing else is lost.

use std::path::Path;

use faceage_e2e::*;

fn truncated_copy(src: &Path, dst: &Path, keep: f32) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..(bytes.len() as f32 * keep) as usize]).unwrap();
}

#[test]
fn classify_names_an_unreadable_photo_and_still_reads_the_others() {
    let work = tempfile::tempdir().unwrap();
    let broken = work.path().join("broken.jpg");
    truncated_copy(&spread_faces(1, 0)[0], &broken, 0.3);
    let not_an_image = work.path().join("notes.jpg");
    std::fs::write(&not_an_image, "shopping list").unwrap();
    let good = one_face_photo(work.path(), "good.png", 3);

    let out = run_device(
        &[
            "classify",
            not_an_image.to_str().unwrap(),
            good.to_str().unwrap(),
            work.path().join("missing.jpg").to_str().unwrap(),
        ],
        tiny_model(),
    );
    assert!(!out.status.success(), "a failed photo makes the exit status non-zero");
    let err = stderr(&out);
    assert!(err.contains("notes.jpg") && err.contains("not a decodable image"), "{err}");
    assert!(err.contains("missing.jpg") && err.contains("cannot open"), "{err}");
    assert!(stdout(&out).contains("good.png: 1 face"), "the good photo still runs: {}", stdout(&out));

    // A truncated JPEG is named as broken (it would decode grey below the cut, and the
    // detector could find a "face" in what is left); it never crashes.
    let out = run_device(&["classify", broken.to_str().unwrap()], tiny_model());
    assert!(out.status.code().is_some(), "no crash on a truncated JPEG");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("broken.jpg") && stderr(&out).contains("truncated JPEG"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let work = tempfile::tempdir().unwrap();
    let photo = one_face_photo(work.path(), "photo.png", 3);
    // `faceage classify photo.png | head -c 0`: the reader is gone before the first line.
    let mut child = spawn_device(&["classify", "--json", photo.to_str().unwrap()], tiny_model());
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE like any Unix tool: {:?}", out.status);
}

#[test]
fn truncated_and_foreign_model_files_are_refused_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let photo = one_face_photo(work.path(), "p.png", 5);

    let truncated = work.path().join("truncated.onnx");
    truncated_copy(tiny_model(), &truncated, 0.5);
    let out = run_device(&["classify", photo.to_str().unwrap()], &truncated);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("truncated.onnx") && err.contains("not a readable ONNX model"), "{err}");

    // A valid ONNX file that is not a faceage model: the detector itself.
    let out = run_device(&["classify", photo.to_str().unwrap()], &detector());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not a faceage model") && err.contains("faceage.schema"), "{err}");

    let empty = work.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let err = stderr(&run_device(&["classify", photo.to_str().unwrap()], &empty));
    assert!(err.contains("empty.onnx") && err.contains("empty file"), "{err}");

    let missing = work.path().join("nowhere.onnx");
    let err = stderr(&run_device(&["classify", photo.to_str().unwrap()], &missing));
    assert!(err.contains("nowhere.onnx"), "{err}");
}

#[test]
fn training_reports_unparsable_names_and_broken_images_and_carries_on() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("faces");
    std::fs::create_dir(&data).unwrap();
    for src in spread_faces(120, 11) {
        std::fs::copy(&src, data.join(src.file_name().unwrap())).unwrap();
    }
    let donor = spread_faces(1, 2)[0].clone();
    std::fs::copy(&donor, data.join("abc.jpg")).unwrap();
    std::fs::copy(&donor, data.join("39_1_20170116174525125.jpg.chip.jpg")).unwrap();
    truncated_copy(&donor, &data.join("30_1_0_20170116174525125.jpg.chip.jpg"), 0.1);
    std::fs::write(data.join("25_0_1_20170116174525126.jpg.chip.jpg"), "not a jpeg").unwrap();

    let run_dir = work.path().join("run");
    let out = run(std::process::Command::new(bin("faceage-host"))
        .args(["train", "--net", "tiny", "--size", "32", "--epochs", "1", "--batch", "16", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run_dir)
        .arg("--detector")
        .arg(detector())
        .arg("--cache-dir")
        .arg(work.path().join("cache")));
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("abc.jpg: unparsable label"), "{err}");
    assert!(err.contains("39_1_20170116174525125.jpg.chip.jpg: unparsable label"), "{err}");
    assert!(err.contains("25_0_1_20170116174525126.jpg.chip.jpg"), "{err}");
    let listed = std::fs::read_to_string(run_dir.join("rejected.txt")).unwrap();
    assert!(listed.lines().count() >= 4, "every skipped input is listed with its reason:\n{listed}");
    assert!(listed.contains("abc.jpg: unparsable label: name has 1 '_' fields"), "{listed}");
}

#[test]
fn training_on_a_missing_folder_says_how_to_get_the_data() {
    let work = tempfile::tempdir().unwrap();
    let out = run(std::process::Command::new(bin("faceage-host"))
        .args(["train", "--data"])
        .arg(work.path().join("UTKFace"))
        .arg("--out")
        .arg(work.path().join("run")));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("UTKFace") && stderr(&out).contains("no such folder"), "{}", stderr(&out));
}
