//! A fleet against a real broker: Debian's `mosquitto`, started by each test on a free loopback
//! port with persistence in a temporary folder. `faceage run --mqtt` publishes its counts log,
//! `faceage collect` keeps one log per board; whatever happens to the broker, the network or
//! the board, every line of the board's log reaches the collector exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faceage_e2e::*;
use serde_json::Value;

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("{name} not found: install Debian's mosquitto and mosquitto-clients (scripts/setup.sh does)")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Started as root, mosquitto switches to its own user, which cannot write a test's private
/// temporary folder: its persistence would silently fail. The tests' broker stays root then.
fn stay_root() -> &'static str {
    let uid =
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.is_ok_and(|u| u == "0") { "user root\n" } else { "" }
}

/// A mosquitto on loopback, persistent in `dir`, that can be killed and started again on the
/// same port with the same data.
struct Broker {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
}

impl Broker {
    fn start(dir: &Path, extra: &str) -> Broker {
        Self::on_port(dir, free_port(), extra)
    }

    fn on_port(dir: &Path, port: u16, extra: &str) -> Broker {
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join("mosquitto.conf");
        // Saved after every change, so a killed broker loses nothing it acknowledged.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n\
                 autosave_interval 1\nautosave_on_changes true\n{}{extra}\n",
                data.display(),
                stay_root()
            ),
        )
        .unwrap();
        let mut broker = Broker { child: None, port, config };
        broker.up();
        broker
    }

    fn up(&mut self) {
        let child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down("-KILL");
    }
}

/// A running `faceage` whose stderr is gathered as it comes.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut faceage = Command::new(bin("faceage"));
        faceage.args(args);
        Self::spawn_command(faceage)
    }

    fn spawn_command(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start faceage");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Running { child, stderr }
    }

    fn text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !ok(&self.text()) {
            assert!(Instant::now() < deadline, "{what} never happened:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100)); // the last stderr lines
        (status, self.text())
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        (status, self.text())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collector(broker: &str, out: &Path) -> Running {
    Running::spawn(&["collect", "--mqtt", broker, "--out", out.to_str().unwrap()])
}

fn model_args() -> Vec<String> {
    [
        "--model",
        root().join("models/faceage-int8.onnx").to_str().unwrap(),
        "--detector",
        detector().to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// `faceage run` on `clip` into `log`, one line a second, published to `broker`.
fn board(clip: &Path, log: &Path, broker: &str, extra: &[&str]) -> Running {
    Running::spawn(&board_args(clip, log, broker, extra).iter().map(String::as_str).collect::<Vec<_>>())
}

fn board_args(clip: &Path, log: &Path, broker: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--source",
        clip.to_str().unwrap(),
        "--counts-log",
        log.to_str().unwrap(),
        "--interval",
        "1",
        "--mqtt",
        broker,
        "--site",
        "shop-1",
        "--device-id",
        "pi-7",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(model_args());
    args
}

/// A clip of `frames` frames (10 fps, 320x240) with a person walking through now and then.
fn clip(dir: &Path, frames: usize) -> PathBuf {
    let path = dir.join("walkers.avi");
    let walkers: Vec<Walker> = (0..frames / 40)
        .map(|i| {
            let mut w = three_walkers()[i % 3].clone();
            w.enter = i * 40 + 2;
            w.leave = i * 40 + 30;
            w.from = (10.0, 60.0);
            w.to = (200.0, 70.0);
            w
        })
        .collect();
    write_clip(&path, &scripted_clip(&walkers, frames, 320, 240, 90, false), 10);
    path
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {l:?}: {e}", path.display())))
        .collect()
}

/// The collector's copy of the board's log: `shop-1/pi-7.jsonl`.
fn collected(out: &Path) -> Vec<Value> {
    json_lines(&out.join("shop-1").join("pi-7.jsonl"))
}

/// Waits until the collector holds as many lines as the board's log, then checks that it holds
/// each of them exactly once, with the same counts.
fn assert_collected_once(log: &Path, out: &Path) {
    let board = json_lines(log);
    assert!(board.len() >= 3, "the board wrote {} lines", board.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while collected(out).len() < board.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = collected(out);
    let keys: Vec<&str> = got.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "a line twice: {keys:?}");
    assert_eq!(got.len(), board.len(), "lines lost:\nboard {board:?}\ncollected {got:?}");
    let starts = |lines: &[Value]| {
        lines.iter().map(|l| l["start"].as_str().unwrap().to_string()).collect::<HashSet<_>>()
    };
    assert_eq!(starts(&got), starts(&board));
    let totals = |lines: &[Value]| -> Vec<f64> {
        (0..6)
            .flat_map(|b| {
                ["female", "male"].map(|g| lines.iter().map(|l| l[g][b].as_f64().unwrap()).sum::<f64>())
            })
            .map(|v| (v * 100.0).round() / 100.0)
            .collect()
    };
    assert_eq!(totals(&got), totals(&board), "per-band totals");
    assert!(got.iter().all(|l| l["site"] == "shop-1" && l["device"] == "pi-7"));
}

#[test]
fn every_line_arrives_once_though_the_broker_is_killed_and_stopped_mid_run() {
    let work = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(work.path(), "allow_anonymous true");
    let out = work.path().join("fleet");
    let collect = collector(&broker.url(), &out);
    let log = work.path().join("counts.jsonl");
    let run = board(
        &clip(work.path(), 240),
        &log,
        &broker.url(),
        &["--max-fps", "15", "--metrics", "127.0.0.1:0", "--ha-discovery"],
    );
    run.wait_for("the first lines", |_| json_lines(&log).len() >= 2);

    // Health while it runs.
    run.wait_for("the metrics address", |t| t.contains("metrics: http://"));
    let text = run.text();
    let address = text.split("metrics: http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    let metrics = http_get(&address, "/metrics");
    for family in [
        "faceage_frames_total{source=",
        "faceage_people_total{",
        "faceage_broker_connected 1",
        "faceage_outbox_backlog_lines",
        "faceage_model_info{",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }

    broker.down("-KILL");
    run.wait_for("the broker's loss", |t| t.contains("connection lost") || t.contains("nothing listens"));
    std::thread::sleep(Duration::from_millis(1500));
    broker.up();
    run.wait_for("a reconnection", |t| t.matches("mqtt: connected").count() >= 2);
    std::thread::sleep(Duration::from_millis(1500));
    broker.down("-TERM");
    std::thread::sleep(Duration::from_millis(1500));
    broker.up();
    let (status, text) = run.finish();
    assert!(status.success(), "{text}");
    // The log says what waits and when the broker last acknowledged a line.
    assert!(text.contains("line(s) waiting, last acknowledgement"), "{text}");
    assert_collected_once(&log, &out);

    // Home Assistant's discovery configs and the board's status are retained at the broker.
    let retained = Command::new(tool("mosquitto_sub"))
        .args(["-p", &broker.port.to_string(), "-v", "--retained-only", "-W", "2"])
        .args(["-t", "homeassistant/#", "-t", "faceage/v1/+/+/status"])
        .output()
        .unwrap();
    let retained = String::from_utf8_lossy(&retained.stdout);
    assert!(retained.contains("faceage/v1/shop-1/pi-7/status offline"), "{retained}");
    assert!(retained.contains("homeassistant/sensor/faceage_shop_1_pi_7/people_today/config"), "{retained}");
    let (status, text) = collect.stop();
    assert!(status.success() && text.contains("line(s) written"), "{text}");
}

fn http_get(address: &str, path: &str) -> String {
    let mut s = TcpStream::connect(address).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn a_backlog_left_by_a_killed_run_arrives_once_when_the_broker_comes() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = work.path().join("counts.jsonl");
    let clip = clip(work.path(), 240);
    // No broker yet: counting goes on, the broker is named in a clear error.
    let url = format!("mqtt://127.0.0.1:{port}");
    let run = board(&clip, &log, &url, &["--max-fps", "15"]);
    run.wait_for("lines in the log", |_| json_lines(&log).len() >= 3);
    let text = run.text();
    assert!(text.contains(&format!("broker mqtt://127.0.0.1:{port}: nothing listens there")), "{text}");
    drop(run); // kill -9: the backlog stays in the log

    // Now a broker on that port, and a collector; the next run sends the backlog first.
    let broker = Broker::on_port(work.path(), port, "allow_anonymous true");
    let out = work.path().join("fleet");
    let collect = collector(&broker.url(), &out);
    let (status, text) = board(&clip, &log, &broker.url(), &["--max-frames", "15"]).finish();
    assert!(status.success(), "{text}");
    assert_collected_once(&log, &out);
    collect.stop();
}

/// A TCP proxy to the broker that, while `swallow` is set, passes the board's packets on but
/// not the broker's answers, and cuts every connection when `cut` is set: the broker has the
/// lines, the board never hears that it has.
fn proxy(broker_port: u16, swallow: Arc<AtomicBool>, cut: Arc<AtomicBool>) -> u16 {
    slow_proxy(broker_port, swallow, cut, Duration::ZERO)
}

/// [`proxy`], each chunk held `delay` on its way (a broker far away).
fn slow_proxy(broker_port: u16, swallow: Arc<AtomicBool>, cut: Arc<AtomicBool>, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(("127.0.0.1", broker_port)) else { continue };
            let pump = |mut from: TcpStream,
                        mut to: TcpStream,
                        gate: Option<Arc<AtomicBool>>,
                        cut: Arc<AtomicBool>| {
                std::thread::spawn(move || {
                    from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut buf = [0u8; 8192];
                    loop {
                        if cut.load(Ordering::Relaxed) {
                            let _ = from.shutdown(std::net::Shutdown::Both);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        match from.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                std::thread::sleep(delay);
                                if !gate.as_ref().is_some_and(|g| g.load(Ordering::Relaxed))
                                    && to.write_all(&buf[..n]).is_err()
                                {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                })
            };
            pump(client.try_clone().unwrap(), server.try_clone().unwrap(), None, Arc::clone(&cut));
            pump(server, client, Some(Arc::clone(&swallow)), Arc::clone(&cut));
        }
    });
    port
}

#[test]
fn a_line_sent_again_after_a_lost_acknowledgement_is_kept_once() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(work.path(), "allow_anonymous true");
    let out = work.path().join("fleet");
    let collect = collector(&broker.url(), &out);
    let (swallow, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let proxy_port = proxy(broker.port, Arc::clone(&swallow), Arc::clone(&cut));
    let log = work.path().join("counts.jsonl");
    let run =
        board(&clip(work.path(), 200), &log, &format!("mqtt://127.0.0.1:{proxy_port}"), &["--max-fps", "15"]);
    run.wait_for("the first lines", |_| collected(&out).len() >= 2);
    // The broker gets lines; their acknowledgements get lost; then the connection drops.
    swallow.store(true, Ordering::Relaxed);
    let before = json_lines(&log).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while json_lines(&log).len() < before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    cut.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    swallow.store(false, Ordering::Relaxed);
    cut.store(false, Ordering::Relaxed);
    let (status, text) = run.finish();
    assert!(status.success(), "{text}");
    assert!(text.matches("mqtt: connected").count() >= 2, "the board reconnected:\n{text}");
    assert_collected_once(&log, &out);
    let (_, collect_text) = collect.stop();
    let duplicates: u64 = collect_text
        .split("line(s) written, ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary:\n{collect_text}"));
    assert!(duplicates >= 1, "a line really was delivered twice (and kept once):\n{collect_text}");
}

#[test]
fn an_unwritable_or_corrupt_cursor_is_reported_and_nothing_is_lost() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(work.path(), "allow_anonymous true");
    let out = work.path().join("fleet");
    let collect = collector(&broker.url(), &out);
    let log = work.path().join("counts.jsonl");
    let clip = clip(work.path(), 80);
    // The cursor's place is taken by a folder: every write fails, is reported once, retried.
    let cursor = work.path().join("counts.jsonl.cursor");
    std::fs::create_dir(&cursor).unwrap();
    let (status, text) = board(&clip, &log, &broker.url(), &["--max-fps", "30"]).finish();
    assert!(status.success(), "{text}");
    assert_eq!(text.matches("mqtt: cursor:").count(), 1, "reported once, retried quietly:\n{text}");
    assert!(text.contains("is a folder"), "{text}");
    assert_collected_once(&log, &out);

    // A corrupt cursor: named, and everything is sent again (the collector keeps one copy).
    std::fs::remove_dir(&cursor).unwrap();
    std::fs::write(&cursor, b"{\"file\":\"counts.js").unwrap();
    let (status, text) = board(&clip, &log, &broker.url(), &["--max-frames", "12"]).finish();
    assert!(status.success(), "{text}");
    assert!(text.contains("corrupt") && text.contains("sending the whole log again"), "{text}");
    assert_collected_once(&log, &out);
    let (_, collect_text) = collect.stop();
    assert!(
        !collect_text.contains(" 0 duplicate(s)"),
        "the resent lines were dropped as duplicates:\n{collect_text}"
    );
}

/// `faceage run` as [`board`] runs it, in a mount namespace of its own (`unshare`, as an
/// unprivileged user too) where `setup` (shell, `$DIR` the log's folder, `$LOG` the real log
/// file) first changes what the folder is: the board's log stays a real file on disk, bound
/// into the folder, while the cursor beside it meets whatever `setup` made of the folder.
fn board_on(setup: &str, dir: &Path, real_log: &Path, clip: &Path, broker: &str, extra: &[&str]) -> Running {
    let mut unshare = Command::new(tool("unshare"));
    unshare
        .args(["--map-root-user", "--mount", "sh", "-c"])
        .arg(format!("set -e\n{setup}\nexec \"$@\""))
        .arg("sh")
        .arg(bin("faceage"))
        .args(board_args(clip, &dir.join("counts.jsonl"), broker, extra))
        .env("DIR", dir)
        .env("LOG", real_log);
    Running::spawn_command(unshare)
}

#[test]
fn a_full_or_read_only_disk_under_the_cursor_is_reported_and_retried() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(work.path(), "allow_anonymous true");
    let out = work.path().join("fleet");
    let collect = collector(&broker.url(), &out);
    let log = work.path().join("counts.jsonl");
    std::fs::write(&log, b"").unwrap();
    let dir = work.path().join("board");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("counts.jsonl"), b"").unwrap(); // where the real log is bound
    let clip = clip(work.path(), 200);
    let unshare_failed = |text: &str| {
        assert!(
            !text.contains("unshare:") && !text.contains("mount:"),
            "this test needs mount namespaces (util-linux's unshare; unprivileged user namespaces \
             enabled, as Debian has them by default):\n{text}"
        );
    };

    // A full disk: a 256 KiB tmpfs filled up, emptied once the log has three lines (each
    // published and acknowledged by then, so the cursor has failed at least once). Counting and
    // publishing go on; the failure is reported once, and the cursor written once there is room.
    let full = "mount -t tmpfs -o size=256k faceage-test \"$DIR\"\n\
                : > \"$DIR/counts.jsonl\"\n\
                mount --bind \"$LOG\" \"$DIR/counts.jsonl\"\n\
                dd if=/dev/zero of=\"$DIR/filler\" bs=4096 2>/dev/null || true\n\
                (i=0; while [ \"$(wc -l < \"$LOG\")\" -lt 3 ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done\n\
                 rm \"$DIR/filler\") &";
    let (status, text) = board_on(full, &dir, &log, &clip, &broker.url(), &["--max-fps", "20"]).finish();
    unshare_failed(&text);
    assert!(status.success(), "{text}");
    assert_eq!(text.matches("mqtt: cursor:").count(), 1, "reported once, retried quietly:\n{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("written again"), "the cursor is written once there is room:\n{text}");
    assert_collected_once(&log, &out);

    // A read-only file system: the folder bound onto itself read-only, the log still writable.
    // (The tmpfs, and the cursor on it, went with the namespace: everything is sent again, and
    // the collector keeps one copy.)
    let read_only = "mount --bind \"$DIR\" \"$DIR\"\n\
                     mount -o remount,bind,ro \"$DIR\"\n\
                     mount --bind \"$LOG\" \"$DIR/counts.jsonl\"";
    let (status, text) =
        board_on(read_only, &dir, &log, &clip, &broker.url(), &["--max-frames", "40"]).finish();
    unshare_failed(&text);
    assert!(status.success(), "{text}");
    assert_eq!(text.matches("mqtt: cursor:").count(), 1, "reported once, retried quietly:\n{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert_collected_once(&log, &out);
    assert!(!dir.join("counts.jsonl.cursor").exists());
    collect.stop();
}

#[test]
fn a_wrong_password_is_a_clear_error_and_counting_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let passwords = work.path().join("passwords");
    let made = Command::new(tool("mosquitto_passwd"))
        .args(["-c", "-b", passwords.to_str().unwrap(), "board", "right-one"])
        .status()
        .unwrap();
    assert!(made.success());
    let broker =
        Broker::start(work.path(), &format!("allow_anonymous false\npassword_file {}", passwords.display()));
    let log = work.path().join("counts.jsonl");
    let clip = clip(work.path(), 60);
    let wrong = format!("mqtt://board:wrong@127.0.0.1:{}", broker.port);
    let (status, text) = board(&clip, &log, &wrong, &["--max-fps", "30"]).finish();
    assert!(status.success(), "counting goes on: {text}");
    let named = format!("broker mqtt://127.0.0.1:{}: ", broker.port);
    assert!(
        text.contains(&format!("{named}not authorised"))
            || text.contains(&format!("{named}wrong user name or password")),
        "{text}"
    );
    assert!(!text.contains("wrong@"), "the password is never printed:\n{text}");
    assert!(json_lines(&log).len() >= 2, "the lines are in the log");

    let out = work.path().join("fleet");
    let right = format!("mqtt://board:right-one@127.0.0.1:{}", broker.port);
    let collect = collector(&right, &out);
    let (status, text) = board(&clip, &log, &right, &["--max-frames", "5"]).finish();
    assert!(status.success() && text.contains("mqtt: connected"), "{text}");
    assert_collected_once(&log, &out);
    collect.stop();
}

#[test]
fn a_broker_several_round_trips_away_is_reached() {
    // 250 ms each way: connecting takes longer than the client's polling step.
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(work.path(), "allow_anonymous true");
    let out = work.path().join("fleet");
    let collect = collector(&broker.url(), &out);
    let off = || Arc::new(AtomicBool::new(false));
    let far = slow_proxy(broker.port, off(), off(), Duration::from_millis(250));
    let log = work.path().join("counts.jsonl");
    let (status, text) =
        board(&clip(work.path(), 60), &log, &format!("mqtt://127.0.0.1:{far}"), &["--max-fps", "15"])
            .finish();
    assert!(status.success() && text.contains("mqtt: connected"), "{text}");
    assert_collected_once(&log, &out);
    collect.stop();
}

/// A CA and a server certificate for `localhost` (openssl), in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out =
            Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (Debian's openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=faceage test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// The binaries of scripts/test.sh are built with `--features faceage-device/mqtt-tls`.
#[test]
fn tls_checks_the_brokers_name_and_counting_goes_on_when_it_is_wrong() {
    let work = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(work.path());
    let tls = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous true",
        ca.display(),
        cert.display(),
        key.display()
    );
    let broker = Broker::start(work.path(), &tls);
    let log = work.path().join("counts.jsonl");
    let clip = clip(work.path(), 60);
    let ca_arg = ["--mqtt-ca", ca.to_str().unwrap()];
    // The certificate names localhost, not 127.0.0.1: refused, the broker named, counting on.
    let by_address = format!("mqtts://127.0.0.1:{}", broker.port);
    let (status, text) =
        board(&clip, &log, &by_address, &[&ca_arg[..], &["--max-fps", "30"]].concat()).finish();
    assert!(status.success(), "{text}");
    assert!(text.contains(&format!("broker {by_address}: TLS")), "{text}");
    assert!(text.contains("NotValidForName") || text.contains("not valid for name"), "{text}");
    assert!(json_lines(&log).len() >= 2, "the lines are in the log");

    // By its name, through TLS, to a collector that also speaks TLS.
    let by_name = format!("mqtts://localhost:{}", broker.port);
    let out = work.path().join("fleet");
    let collect = Running::spawn(&[
        "collect",
        "--mqtt",
        &by_name,
        "--mqtt-ca",
        ca.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (status, text) =
        board(&clip, &log, &by_name, &[&ca_arg[..], &["--max-frames", "5"]].concat()).finish();
    assert!(status.success() && text.contains(&format!("mqtt: connected to {by_name}")), "{text}");
    assert_collected_once(&log, &out);
    collect.stop();
}
