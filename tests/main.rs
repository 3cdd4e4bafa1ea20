//! The end-to-end tests, one test binary: each file in tests/ is a module here. One binary
//! links once rather than once a file, its tests share one pool of test threads (a slow file no
//! longer runs alone on one core at the end), and the fixtures in `faceage_e2e` (the tiny model
//! trained once per process) are made once for every file rather than once a file.
//! `Cargo.toml` sets `autotests = false`, so a new file in tests/ runs only once it is listed
//! below or given a `[[test]]` of its own there (`every_test_file_is_a_module_here` checks it).

mod bad_input;
mod distil;
mod eval;
mod fine_tune;
mod fleet;
mod kiosk;
mod live_pipeline;
mod mixed_sources;
mod quantize;
mod resume;
mod train_export_classify;

#[test]
fn every_test_file_is_a_module_here() {
    let listed = include_str!("main.rs");
    let cargo_toml = include_str!("../Cargo.toml");
    let dir = faceage_e2e::root().join("tests");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.extension().is_some_and(|e| e == "rs") && stem != "main" {
            let own_binary = cargo_toml.contains(&format!("path = \"tests/{stem}.rs\""));
            assert!(
                listed.contains(&format!("\nmod {stem};\n")) || own_binary,
                "tests/{stem}.rs is neither a module of tests/main.rs nor a [[test]] in Cargo.toml"
            );
        }
    }
}

/// The binaries are built without test harnesses (`test = false` in their Cargo.toml: no
/// second compile of their modules by `cargo test`), so a test put in a binary's own modules
/// would never run: their tests belong in the libraries.
#[test]
fn the_binaries_own_modules_hold_no_tests() {
    let root = faceage_e2e::root();
    let mut files = Vec::new();
    for crate_src in ["host/src", "device/src"] {
        let src = root.join(crate_src);
        let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
        files.push(src.join("main.rs"));
        for line in main.lines() {
            let Some(name) = line.trim().strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) else {
                continue;
            };
            if src.join(name).is_dir() {
                let mut dir: Vec<_> =
                    std::fs::read_dir(src.join(name)).unwrap().map(|e| e.unwrap().path()).collect();
                dir.sort();
                files.extend(dir);
            } else {
                files.push(src.join(format!("{name}.rs")));
            }
        }
    }
    assert!(files.len() > 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("#[test]") && !text.contains("cfg(test)"),
            "{}: tests in a binary's module",
            file.display()
        );
    }
}
