//! `faceage run` with several `--source`s: each camera counted by its own tracker into its own
//! lines of the one counts log, a camera named twice refused, and a stream that drops out
//! reopened while the other camera counts on. The shipped int8 model reads the faces (these
//! tests are about counting, not about readings).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faceage_e2e::*;
use serde_json::Value;

fn shipped_model() -> PathBuf {
    root().join("models/faceage-int8.onnx")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

fn log_lines(path: &Path) -> Vec<Value> {
    json_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

#[test]
fn each_source_is_counted_by_itself_into_its_own_lines_of_one_log() {
    let work = tempfile::tempdir().unwrap();
    let door = work.path().join("door.avi");
    write_clip(&door, &scripted_clip(&three_walkers(), 64, 640, 360, 110, false), 10);
    // The same faces at the same places would be one person per place if two sources ever
    // shared a tracker; apart, the till sees one and the door three.
    let till = work.path().join("till.avi");
    write_clip(&till, &scripted_clip(&three_walkers()[..1], 64, 640, 360, 110, false), 10);
    let log = work.path().join("counts.jsonl");
    let (d, t) = (format!("door={}", door.display()), format!("till={}", till.display()));
    let out = run_device(
        &[
            "run",
            "--source",
            &d,
            "--source",
            &t,
            "--counts-log",
            log.to_str().unwrap(),
            "--events",
            "--interval",
            ONE_INTERVAL,
        ],
        &shipped_model(),
    );
    ok(&out);
    let events = json_lines(&stdout(&out));
    let people =
        |source: &str| events.iter().filter(|e| e["event"] == "person" && e["source"] == source).count();
    assert_eq!((people("door"), people("till")), (3, 1), "{}", stdout(&out));

    // One partial interval per source, written when its clip ends.
    let lines = log_lines(&log);
    for (source, people) in [("door", 3), ("till", 1)] {
        let own: Vec<&Value> = lines.iter().filter(|l| l["source"] == source).collect();
        assert_eq!(own.len(), 1, "{source}: {lines:?}");
        let sum = |key: &str| own.iter().map(|l| l[key].as_u64().unwrap()).sum::<u64>();
        assert_eq!((sum("people"), sum("frames")), (people, 64), "{source}: {own:?}");
        assert!(own.iter().all(|l| l["schema"] == 4));
        let banded: f64 = own
            .iter()
            .flat_map(|l| {
                ["female", "male"]
                    .map(|g| l[g].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum::<f64>())
            })
            .sum();
        assert!((banded - people as f64).abs() < 0.05, "the bands hold the source's people: {own:?}");
    }
    assert_eq!(lines.len(), lines.iter().filter(|l| l["source"] == "door" || l["source"] == "till").count());

    // `report` sums the sources, and gives each one's people.
    let out = run(Command::new(bin("faceage")).args(["report", log.to_str().unwrap(), "--json"]));
    let report: Value = serde_json::from_str(&stdout(ok(&out))).unwrap();
    assert_eq!(report["people"], 4, "{report}");
    assert_eq!(report["per_source"], serde_json::json!({"door": 3, "till": 1}), "{report}");
}

#[test]
fn a_camera_named_twice_is_refused_before_anything_runs() {
    let work = tempfile::tempdir().unwrap();
    let out = run_device(
        &["run", "--source", "camera:0", "--source", "hall=/dev/video0", "--counts-log", "-"],
        &shipped_model(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/dev/video0") && err.contains("camera:0 is already read"), "{err}");

    let clip = one_walker_clip(work.path(), 10);
    let other_spelling = work.path().join(".").join("one.avi");
    let out = run_device(
        &[
            "run",
            "--source",
            clip.to_str().unwrap(),
            "--source",
            other_spelling.to_str().unwrap(),
            "--counts-log",
            "-",
        ],
        &shipped_model(),
    );
    assert!(!out.status.success() && stderr(&out).contains("is already read"), "{}", stderr(&out));
}

/// A stand-in for an IP camera: serves an MPEG-TS file over HTTP at its own pace to every
/// client, and can be taken down (connections cut, new ones closed at once) and brought back.
struct FakeCamera {
    address: String,
    down: Arc<AtomicBool>,
    served: Arc<Mutex<u32>>,
}

impl FakeCamera {
    fn start(ts: PathBuf, seconds: f64) -> FakeCamera {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(0));
        let bytes = Arc::new(std::fs::read(&ts).unwrap());
        let (d, s) = (Arc::clone(&down), Arc::clone(&served));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (d, s, bytes) = (Arc::clone(&d), Arc::clone(&s), Arc::clone(&bytes));
                std::thread::spawn(move || serve_stream(conn, &bytes, seconds, &d, &s));
            }
        });
        FakeCamera { address, down, served }
    }
}

fn serve_stream(mut conn: TcpStream, bytes: &[u8], seconds: f64, down: &AtomicBool, served: &Mutex<u32>) {
    let mut request = [0u8; 2048];
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.read(&mut request);
    if down.load(Ordering::Relaxed) {
        return; // closed at once: no answer
    }
    *served.lock().unwrap() += 1;
    let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n");
    // Paced like a camera: the file's bytes spread over its length in seconds.
    let chunk = 4096;
    let gap = Duration::from_secs_f64(seconds * chunk as f64 / bytes.len() as f64);
    for part in bytes.chunks(chunk) {
        if down.load(Ordering::Relaxed) || conn.write_all(part).is_err() {
            return;
        }
        std::thread::sleep(gap);
    }
}

#[test]
fn a_stream_that_drops_out_is_reopened_while_the_other_source_counts_on() {
    let work = tempfile::tempdir().unwrap();
    // The camera's picture: 40 s of walkers at 25 fps as MPEG-TS (what IP cameras stream).
    let walkers: Vec<Walker> = (0..10)
        .map(|i| {
            let mut w = three_walkers()[i % 3].clone();
            w.enter += i * 100;
            w.leave += i * 100;
            w
        })
        .collect();
    let avi = work.path().join("cam.avi");
    write_clip(&avi, &scripted_clip(&walkers, 1000, 320, 180, 80, false), 25);
    let ts = work.path().join("cam.ts");
    let ffmpeg = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-i"])
        .arg(&avi)
        .args(["-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts"])
        .arg(&ts)
        .status()
        .expect("ffmpeg missing: install it (scripts/setup.sh does)");
    assert!(ffmpeg.success());
    let camera = FakeCamera::start(ts, 40.0);
    // The other source: a file read in real time, long enough to outlast the test (the same
    // picture, copied rather than composed again: 2 s of the test).
    let door = work.path().join("door.avi");
    std::fs::copy(&avi, &door).unwrap();

    let log = work.path().join("counts.jsonl");
    let cam = format!("cam=http://{}/live.ts", camera.address);
    let door_arg = format!("door={}", door.display());
    let mut child = Command::new(bin("faceage"))
        .args(["run", "--source", &cam, "--source", &door_arg, "--realtime", "--max-fps", "10"])
        .args(["--interval", "1", "--counts-log", log.to_str().unwrap()])
        .arg("--model")
        .arg(shipped_model())
        .arg("--detector")
        .arg(detector())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start faceage");
    let messages = Arc::new(Mutex::new(String::new()));
    let m = Arc::clone(&messages);
    let stderr_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            m.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what} never happened; stderr:\n{}",
                messages.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let frames_of = |source: &str, after: usize| -> u64 {
        log_lines(&log)
            .iter()
            .skip(after)
            .filter(|l| l["source"] == source)
            .map(|l| l["frames"].as_u64().unwrap())
            .sum()
    };

    wait_for("frames from both sources", &|| frames_of("cam", 0) > 0 && frames_of("door", 0) > 0);
    camera.down.store(true, Ordering::Relaxed);
    wait_for("the stream's loss noticed", &|| messages.lock().unwrap().contains("source cam: "));
    let outage_from = log_lines(&log).len();
    std::thread::sleep(Duration::from_secs(3));
    let in_outage = log_lines(&log).len();
    assert!(
        frames_of("door", outage_from) > 0,
        "the door counted on while the camera was down: {:?}\n{}",
        log_lines(&log),
        messages.lock().unwrap()
    );
    assert_eq!(frames_of("cam", outage_from + 2), 0, "no camera frames while it was down");

    camera.down.store(false, Ordering::Relaxed);
    wait_for("the camera back", &|| messages.lock().unwrap().contains("frames again"));
    wait_for("camera frames after the outage", &|| frames_of("cam", in_outage) > 0);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let text = messages.lock().unwrap().clone();
    assert!(status.success(), "a clean stop: {status}\n{text}");
    assert!(text.contains("reopening") || text.contains("retrying"), "{text}");
    assert!(*camera.served.lock().unwrap() >= 2, "the camera was connected to again");
}
