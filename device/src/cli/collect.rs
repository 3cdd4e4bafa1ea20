//! `faceage collect`: every board's counts from the broker into one log per board.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use faceage_device::fleet::broker::Broker;
use faceage_device::fleet::collect::collect;

#[derive(clap::Args)]
pub struct Args {
    /// The broker: mqtt://[USER[:PASSWORD]@]HOST[:PORT].
    #[arg(long, env = "FACEAGE_MQTT")]
    mqtt: String,
    /// CA certificates (PEM) for an mqtts:// broker [default: the system's roots].
    #[arg(long, env = "FACEAGE_MQTT_CA")]
    mqtt_ca: Option<PathBuf>,
    /// Where the logs go: OUT/<site>/<device>.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// The collector's session name at the broker: the broker keeps what arrives for it
    /// while it is down. One per collector.
    #[arg(long, default_value = "faceage-collect")]
    client_id: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let broker = Broker::parse(&args.mqtt)?.with_ca(args.mqtt_ca)?;
    let stop = faceage_device::signals::stop_flag()?;
    let stats = collect(&broker, &args.client_id, &args.out, &stop)?;
    eprintln!(
        "collect: {} line(s) written, {} duplicate(s) dropped, {} message(s) refused",
        stats.written, stats.duplicates, stats.rejected
    );
    Ok(ExitCode::SUCCESS)
}
