//! `faceage run --kiosk`: the kiosk's arguments and start; what it publishes for every frame
//! is the library's (`kiosk::publisher`).

use anyhow::Result;
use faceage_device::kiosk::{KioskPublisher, KioskServer, is_loopback};

#[derive(clap::Args, Clone, Debug)]
pub struct KioskArgs {
    /// Serve the kiosk page (live picture, readings, today's counts).
    #[arg(long)]
    pub kiosk: bool,
    /// Address of the kiosk page. Anything but loopback shows the camera picture to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
}

/// Starts the kiosk for the sources named `names` (one picture each on the page).
pub fn start(args: &KioskArgs, names: &[String]) -> Result<Option<KioskPublisher>> {
    if !args.kiosk {
        return Ok(None);
    }
    if !is_loopback(&args.bind) {
        eprintln!(
            "warning: the kiosk on {} shows the live camera picture to anyone who can reach this address",
            args.bind
        );
    }
    let server = KioskServer::start(&args.bind, names)?;
    eprintln!("kiosk: http://{}/", server.address);
    Ok(Some(KioskPublisher::new(server)))
}
