//! `faceage run`'s fleet options: counts to an MQTT broker, health on /metrics. What they
//! start is the library's (`fleet::publisher`, `fleet::metrics`); this module wires it to the
//! run loop.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use faceage_device::counts::Rotation;
use faceage_device::figures::{FpsMeter, InView};
use faceage_device::fleet::broker::Broker;
use faceage_device::fleet::metrics::{MetricsServer, Snapshot, SourceFigures};
use faceage_device::fleet::outbox::LogFiles;
use faceage_device::fleet::publisher::{LiveState, Publisher, PublisherConfig};
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
    fps: Vec<FpsMeter>,
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
        let metrics = match &args.metrics {
            None => None,
            Some(bind) => {
                if !faceage_device::kiosk::is_loopback(bind) {
                    eprintln!("warning: /metrics on {bind} is reachable beyond this machine");
                }
                let snapshot = Snapshot {
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
        Ok(Fleet {
            publisher,
            metrics,
            names: names.to_vec(),
            fps: vec![FpsMeter::default(); n],
            in_view: vec![InView::default(); n],
        })
    }

    /// Lets the publisher send the run's last line (a few seconds at most), then stops it.
    pub fn finish(self) {
        if let Some(publisher) = self.publisher {
            publisher.finish(Duration::from_secs(5));
        }
    }
}

impl Observer for Fleet {
    fn frame(&mut self, _frame: &Frame, report: &FrameReport, live: &Live, elapsed: Duration) -> Result<()> {
        let Some(index) = self.names.iter().position(|n| *n == live.source) else { return Ok(()) };
        let fps = self.fps[index].tick(elapsed);
        let in_view = &mut self.in_view[index];
        in_view.update(report, elapsed);
        if let Some(publisher) = &self.publisher {
            // In view as the kiosk lists them: counted, and a face found within the second.
            let people_in_view =
                report.tracks.iter().filter(|t| t.confirmed && in_view.is_in_view(t.id, elapsed)).count();
            publisher.set_state(LiveState {
                people_today: live.today.people,
                people_in_view: people_in_view as u32,
            });
        }
        if let Some(metrics) = &self.metrics {
            let publisher = self.publisher.as_ref().map(Publisher::status);
            metrics.update(|s| {
                s.sources[index].1 = SourceFigures {
                    people: live.tally_total,
                    frames: live.frames_total,
                    dropped: live.dropped_total(),
                    fps,
                };
                s.publisher = publisher;
            });
        }
        Ok(())
    }
}
