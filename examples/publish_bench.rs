//! What publishing costs, measured against a real broker: how fast a backlog of counts-log
//! lines drains (lines per second, from the first send to the last acknowledgement in the
//! cursor), and the CPU the publisher takes while the log grows by one line a minute.
//!
//!   mosquitto -p 18830 &
//!   scripts/build.sh && target/release/examples/publish_bench mqtt://127.0.0.1:18830 [LINES] [IDLE_SECONDS]
//!
//! Defaults: 100000 lines, 60 s idle. A benchmark, not a test: the figures depend on the machine.

use std::io::Write;
use std::time::{Duration, Instant};

use faceage_device::counts::Rotation;
use faceage_device::fleet::broker::Broker;
use faceage_device::fleet::outbox::LogFiles;
use faceage_device::fleet::publisher::{Publisher, PublisherConfig};

fn line(i: usize) -> String {
    let (minute, second) = (i / 60, i % 60);
    format!(
        r#"{{"schema":3,"source":"camera:0","start":"2026-12-03T{:02}:{:02}:{second:02}+00:00","end":"2026-12-03T{:02}:{:02}:{second:02}+00:00","people":2,"female":[0.0,0.1,0.0,0.9,0.0,0.0],"male":[0.0,0.0,0.0,0.6,0.4,0.0],"frames":600,"dropped":0,"dwell":[1,1,0,0],"dwell_median_s":6.5}}"#,
        (minute / 60) % 24,
        minute % 60,
        (minute / 60) % 24,
        minute % 60,
    )
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let broker = Broker::parse(args.get(1).map_or("mqtt://127.0.0.1:1883", String::as_str))?;
    let lines: usize = args.get(2).map_or(Ok(100_000), |n| n.parse())?;
    let idle_secs: u64 = args.get(3).map_or(Ok(60), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("counts.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&log)?);
    for i in 0..lines {
        writeln!(file, "{}", line(i))?;
    }
    drop(file);
    let device = format!("bench-{}", std::process::id());
    let config = PublisherConfig {
        broker,
        site: "bench".into(),
        device,
        files: LogFiles::new(&log, Rotation::None),
        log: log.clone(),
        ha_discovery: false,
    };
    let started = Instant::now();
    let publisher = Publisher::start(config)?;
    while publisher.status().acknowledged < lines as u64 {
        std::thread::sleep(Duration::from_millis(20));
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "backlog not drained in 10 minutes");
    }
    let drain = started.elapsed().as_secs_f64();
    println!("backlog of {lines} lines drained in {drain:.2} s: {:.0} lines/s", lines as f64 / drain);

    // Idle: one line a minute (one at the start of the window), the publisher polling the log.
    let cpu_before = cpu_seconds();
    let window = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)?
        .write_all(format!("{}\n", line(lines)).as_bytes())?;
    std::thread::sleep(Duration::from_secs(idle_secs));
    let cpu = cpu_seconds() - cpu_before;
    let wall = window.elapsed().as_secs_f64();
    println!(
        "idle at one line a minute: {cpu:.2} CPU s in {wall:.0} s ({:.2}% of one core), {} acknowledged",
        100.0 * cpu / wall,
        publisher.status().acknowledged
    );
    publisher.finish(Duration::from_secs(2));
    Ok(())
}
