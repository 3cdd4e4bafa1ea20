//! `faceage run`'s fleet options: counts to an MQTT broker, health on /metrics. What they
//! start is the library's (`fleet::publisher`, `fleet::metrics`); this module wires it to the
//! run loop.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use faceage_device::counts::Rotation;
use faceage_device::figures::InView;
use faceage_device::fleet::broker::Broker;
use faceage_device::fleet::metrics::{MetricsServer, Snapshot, SourceFigures};
use faceage_device::fleet::outbox::LogFiles;
use faceage_device::fleet::publisher::{LiveFeed, Publisher, PublisherConfig};
use faceage_device::fleet::{check_name, default_device_id};
use faceage_device::live::{FrameReport, Live};
use faceage_device::run_loop::Observer;
use faceage_device::source::Frame;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct FleetArgs {
    /// Publish every counts-log line to this MQTT broker (QoS 1, nothing lost or sent twice to
    /// a store keyed by the line's key): mqtt://[USER[:PASSWORD]@]HOST[:PORT].
    #[arg(long, env = "FACEAGE_MQTT")]
    pub mqtt: Option<String>,
    /// CA certificates (PEM) an mqtts:// broker's certificate must chain to [default: the
    /// system's roots].
    #[arg(long, env = "FACEAGE_MQTT_CA")]
    pub mqtt_ca: Option<std::path::PathBuf>,
    /// The site (shop, venue) this board belongs to: a topic level.
    #[arg(long, env = "FACEAGE_SITE", default_value = "default")]
    pub site: String,
    /// This board's name [default: the machine id, else the host name].
    #[arg(long, env = "FACEAGE_DEVICE_ID")]
    pub device_id: Option<String>,
    /// Publish Home Assistant discovery configs: people counted today and people in view.
    #[arg(long)]
    pub ha_discovery: bool,
    /// Serve Prometheus metrics on this address (/metrics). Loopback unless you say otherwise.
    #[arg(long, env = "FACEAGE_METRICS")]
    pub metrics: Option<String>,
}

/// The fleet side of a run: the publisher and the metrics server, both optional.
pub struct Fleet {
    publisher: Option<Publisher>,
    metrics: Option<MetricsServer>,
    names: Vec<String>,
    /// The origin of the fleet's wall clock: frame times and faces found, read when the
    /// page is scraped or the state sent.
    started: Instant,
    in_view: Vec<InView>,
}

impl Fleet {
    /// Starts what the arguments ask for. `log` is the counts log the publisher sends.
    pub fn start(
        args: &FleetArgs,
        log: Option<(&Path, Rotation)>,
        names: &[String],
        model_file: &Path,
        model_name: &str,
    ) -> Result<Fleet> {
        let publisher = match &args.mqtt {
            None => None,
            Some(url) => {
                let broker = Broker::parse(url)?.with_ca(args.mqtt_ca.clone())?;
                let Some((log, rotation)) = log else {
                    bail!("--mqtt sends the counts log: give --counts-log a file, not -");
                };
                let device = args.device_id.clone().unwrap_or_else(default_device_id);
                check_name("--site", &args.site)?;
                check_name("--device-id", &device)?;
                eprintln!("mqtt: publishing to {broker} as site {}, device {device}", args.site);
                Some(Publisher::start(PublisherConfig {
                    broker,
                    site: args.site.clone(),
                    device,
                    files: LogFiles::new(log, rotation),
                    log: log.to_path_buf(),
                    ha_discovery: args.ha_discovery,
                })?)
            }
        };
        if args.ha_discovery && publisher.is_none() {
            bail!("--ha-discovery publishes to the broker: give --mqtt too");
        }
        let started = Instant::now();
        let metrics = match &args.metrics {
            None => None,
            Some(bind) => {
                if !faceage_device::kiosk::is_loopback(bind) {
                    eprintln!("warning: /metrics on {bind} is reachable beyond this machine");
                }
                let snapshot = Snapshot {
                    started,
                    sources: names.iter().map(|n| (n.clone(), SourceFigures::default())).collect(),
                    publisher: None,
                    model_file: model_file.display().to_string(),
                    model_name: model_name.to_string(),
                };
                let server = MetricsServer::start(bind, snapshot)?;
                eprintln!("metrics: http://{}/metrics", server.address);
                Some(server)
            }
        };
        let n = names.len();
        Ok(Fleet { publisher, metrics, names: names.to_vec(), started, in_view: vec![InView::default(); n] })
    }

    /// Lets the publisher send the run's last line (a few seconds at most), then stops it.
    pub fn finish(self) {
        if let Some(publisher) = self.publisher {
            publisher.finish(Duration::from_secs(5));
        }
    }
}

impl Observer for Fleet {
    fn frame(&mut self, _frame: &Frame, report: &FrameReport, live: &Live, _elapsed: Duration) -> Result<()> {
        let Some(index) = self.names.iter().position(|n| *n == live.source) else { return Ok(()) };
        // The fleet's own wall clock, not the run's `elapsed`: the figures are read against it
        // later, when scraped or sent.
        let now = self.started.elapsed();
        let in_view = &mut self.in_view[index];
        in_view.update(report, now);
        if let Some(publisher) = &self.publisher {
            // In view as the kiosk lists them: counted, and a face found within the second
            // of the time the state is sent.
            let faces_found = report
                .tracks
                .iter()
                .filter(|t| t.confirmed)
                .filter_map(|t| in_view.last_found(t.id))
                .map(|found| self.started + found)
                .collect();
            publisher.set_state(LiveFeed { people_today: live.today.people, faces_found });
        }
        if let Some(metrics) = &self.metrics {
            let publisher = self.publisher.as_ref().map(Publisher::status);
            metrics.update(|s| {
                let figures = &mut s.sources[index].1;
                figures.people = live.tally_total;
                figures.frames = live.frames_total;
                figures.dropped = live.dropped_total();
                figures.frame_times.tick(now);
                s.publisher = publisher;
            });
        }
        Ok(())
    }
}
