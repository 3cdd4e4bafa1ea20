//! `faceage run --metrics ADDR`: health in Prometheus' text format on `/metrics` (loopback by
//! default, like the kiosk): people counted by source, gender and age band, frames, dropped
//! frames, the frame rate, the outbox backlog, the broker connection and its last
//! acknowledgement, and the model.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

use super::publisher::PublisherStatus;
use crate::age_gender::Gender;
use crate::bands::AGE_BANDS;
use crate::counts::BandTally;
use crate::figures::FpsMeter;

/// One source's figures since the process started.
#[derive(Clone, Debug, Default)]
pub struct SourceFigures {
    pub people: BandTally,
    pub frames: u64,
    pub dropped: u64,
    /// The recent frames' times since [`Snapshot::started`]: the rate is read when scraped,
    /// so a source that stalls reads 0 a window later instead of its last rate for ever.
    pub frame_times: FpsMeter,
}

/// What `/metrics` shows, updated by the run loop.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The origin of the frame times' clock.
    pub started: Instant,
    /// By source name, in `--source` order.
    pub sources: Vec<(String, SourceFigures)>,
    /// Present when publishing to a broker.
    pub publisher: Option<PublisherStatus>,
    pub model_file: String,
    pub model_name: String,
}

/// `name{labels} value` lines with their HELP and TYPE.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A label value, escaped as the text format wants.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The text exposition of `snapshot` at `now`.
pub fn render(snapshot: &Snapshot, now: Instant) -> String {
    let mut out = String::new();
    let (mut people, mut variance) = (Vec::new(), Vec::new());
    for (source, figures) in &snapshot.sources {
        for gender in [Gender::Female, Gender::Male] {
            let name = if gender == Gender::Female { "female" } else { "male" };
            let var = figures.people.variance(gender);
            for (b, (band, _, _)) in AGE_BANDS.iter().enumerate() {
                let labels = format!("source=\"{}\",gender=\"{name}\",band=\"{band}\"", label(source));
                people.push((labels.clone(), (figures.people.of(gender)[b] * 100.0).round() / 100.0));
                variance.push((labels, (var[b] * 100.0).round() / 100.0));
            }
        }
    }
    family(
        &mut out,
        "faceage_people_total",
        "counter",
        "People counted since start (expected counts per age band).",
        &people,
    );
    family(
        &mut out,
        "faceage_people_variance_total",
        "counter",
        "Variance of each people count (sum over people of p(1-p), p their share of the band); \
         variances add over sources and boards: 2 x the square root of the sum is a count's 95% ±.",
        &variance,
    );
    let since_start = now.saturating_duration_since(snapshot.started);
    let per_source = |f: &dyn Fn(&SourceFigures) -> f64| -> Vec<(String, f64)> {
        snapshot.sources.iter().map(|(s, figures)| (format!("source=\"{}\"", label(s)), f(figures))).collect()
    };
    family(
        &mut out,
        "faceage_frames_total",
        "counter",
        "Frames processed since start.",
        &per_source(&|f| f.frames as f64),
    );
    family(
        &mut out,
        "faceage_dropped_frames_total",
        "counter",
        "Frames the source dropped (newest frame wins).",
        &per_source(&|f| f.dropped as f64),
    );
    family(
        &mut out,
        "faceage_fps",
        "gauge",
        "Frames processed per second: the frames of the last 3 s over 3 s, at the time of the scrape.",
        &per_source(&|f| (f.frame_times.rate(since_start) * 10.0).round() / 10.0),
    );
    if let Some(p) = &snapshot.publisher {
        family(
            &mut out,
            "faceage_broker_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            &[(String::new(), f64::from(u8::from(p.connected)))],
        );
        family(
            &mut out,
            "faceage_outbox_backlog_lines",
            "gauge",
            "Counts-log lines the broker has not acknowledged.",
            &[(String::new(), p.backlog as f64)],
        );
        family(
            &mut out,
            "faceage_broker_acknowledged_total",
            "counter",
            "Counts-log lines the broker acknowledged since start.",
            &[(String::new(), p.acknowledged as f64)],
        );
        if let Some(at) = p.last_ack {
            let seconds = now.saturating_duration_since(at).as_secs_f64();
            family(
                &mut out,
                "faceage_seconds_since_broker_ack",
                "gauge",
                "Seconds since the broker last acknowledged a line.",
                &[(String::new(), (seconds * 10.0).round() / 10.0)],
            );
        }
    }
    let model = format!("file=\"{}\",name=\"{}\"", label(&snapshot.model_file), label(&snapshot.model_name));
    family(&mut out, "faceage_model_info", "gauge", "The model file in use.", &[(model, 1.0)]);
    out
}

/// The `/metrics` server and the snapshot it serves.
pub struct MetricsServer {
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub address: SocketAddr,
}

impl MetricsServer {
    pub fn start(bind: &str, snapshot: Snapshot) -> Result<MetricsServer> {
        let server = tiny_http::Server::http(bind)
            .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {bind}: {e}"))?;
        let address = server.server_addr().to_ip().context("metrics: not an IP listener")?;
        let snapshot = Arc::new(Mutex::new(snapshot));
        let shared = Arc::clone(&snapshot);
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let body = render(&shared.lock().unwrap_or_else(|p| p.into_inner()), Instant::now());
                    let header = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4")
                        .expect("valid header");
                    tiny_http::Response::from_string(body).with_header(header)
                } else {
                    tiny_http::Response::from_string("see /metrics").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })?;
        Ok(MetricsServer { snapshot, address })
    }

    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.snapshot.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_text_format_holds_every_family_with_labels() {
        let mut people = BandTally::default();
        people.add_person(Gender::Female, &[0.0, 0.0, 0.0, 0.5, 0.5, 0.0]);
        people.add_person(Gender::Female, &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        people.add_person(Gender::Female, &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        let started = Instant::now();
        // 15 fps handed over in bursts of three, for 10 s; scraped right after the last.
        let mut frame_times = FpsMeter::default();
        for burst in 0..50 {
            for k in 0..3 {
                frame_times.tick(Duration::from_millis(burst * 200 + k));
            }
        }
        let now = started + Duration::from_millis(9_900);
        let snapshot = Snapshot {
            started,
            sources: vec![(
                "door \"A\"".into(),
                SourceFigures { people, frames: 120, dropped: 3, frame_times },
            )],
            publisher: Some(PublisherStatus {
                connected: true,
                backlog: 7,
                last_ack: now.checked_sub(std::time::Duration::from_secs(3)),
                acknowledged: 40,
            }),
            model_file: "/opt/faceage/models/faceage-int8.onnx".into(),
            model_name: "faceage-cnn64".into(),
        };
        let text = render(&snapshot, now);
        assert!(
            text.contains(
                "faceage_people_total{source=\"door \\\"A\\\"\",gender=\"female\",band=\"20-39\"} 2.5"
            ),
            "{text}"
        );
        assert!(text.contains("faceage_frames_total{source=\"door \\\"A\\\"\"} 120"), "{text}");
        assert!(
            text.contains(
                "faceage_people_variance_total{source=\"door \\\"A\\\"\",gender=\"female\",band=\"20-39\"} 0.25"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE faceage_people_variance_total counter"), "{text}");
        assert!(text.contains("faceage_fps{source=\"door \\\"A\\\"\"} 15"), "{text}");
        assert!(
            text.contains("faceage_outbox_backlog_lines 7\n")
                && text.contains("faceage_broker_connected 1\n"),
            "{text}"
        );
        assert!(text.contains("faceage_seconds_since_broker_ack 3\n"), "{text}");
        assert!(text.contains("# TYPE faceage_people_total counter"));
        assert!(text.contains(
            "faceage_model_info{file=\"/opt/faceage/models/faceage-int8.onnx\",name=\"faceage-cnn64\"} 1"
        ));
        // Every sample line is `name{labels} number`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        let stalled = render(&snapshot, now + FpsMeter::WINDOW);
        assert!(
            stalled.contains("faceage_fps{source=\"door \\\"A\\\"\"} 0\n"),
            "a stalled source reads 0: {stalled}"
        );
        let without = render(&Snapshot { publisher: None, ..snapshot }, now);
        assert!(!without.contains("broker"), "no broker figures without a broker");
    }
}
