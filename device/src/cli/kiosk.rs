//! `faceage run --kiosk`: publishes every frame's picture and readings to the kiosk server.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use faceage_device::age_gender::gender_certainty;
use faceage_device::draw;
use faceage_device::kiosk::{KioskServer, is_loopback};
use faceage_device::live::{FrameReport, Live};
use faceage_device::source::Frame;
use serde::Serialize;

#[derive(clap::Args, Clone, Debug)]
pub struct KioskArgs {
    /// Serve the kiosk page (live picture, readings, today's counts).
    #[arg(long)]
    pub kiosk: bool,
    /// Address of the kiosk page. Anything but loopback shows the camera picture to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
}

pub struct Kiosk {
    server: KioskServer,
    fps: Mutex<(f64, Option<Duration>)>,
}

pub fn start(args: &KioskArgs) -> Result<Option<Kiosk>> {
    if !args.kiosk {
        return Ok(None);
    }
    if !is_loopback(&args.bind) {
        eprintln!(
            "warning: the kiosk on {} shows the live camera picture to anyone who can reach this address",
            args.bind
        );
    }
    let server = KioskServer::start(&args.bind)?;
    eprintln!("kiosk: http://{}/", server.address);
    Ok(Some(Kiosk { server, fps: Mutex::new((0.0, None)) }))
}

#[derive(Serialize)]
struct TrackJson {
    id: u64,
    label: String,
    gender: faceage_device::Gender,
    age: f32,
    age_spread: f32,
    /// How sure the gender reading is, 0 (a coin toss) to 1.
    confidence: f32,
    confirmed: bool,
    x: f32,
    y: f32,
    w: f32,
    h: f32,
}

impl Kiosk {
    pub fn publish(&self, frame: &Frame, report: &FrameReport, live: &Live, elapsed: Duration) {
        let fps = {
            let mut f = self.fps.lock().unwrap();
            if let Some(previous) = f.1 {
                let dt = elapsed.saturating_sub(previous).as_secs_f64();
                if dt > 0.0 {
                    f.0 = if f.0 == 0.0 { 1.0 / dt } else { 0.9 * f.0 + 0.1 / dt };
                }
            }
            f.1 = Some(elapsed);
            f.0
        };
        let tracks: Vec<TrackJson> = report
            .tracks
            .iter()
            .filter(|t| t.seen_now)
            .map(|t| {
                let r = &t.reading;
                TrackJson {
                    id: t.id,
                    label: draw::reading_label(r.gender, r.age),
                    gender: r.gender,
                    age: r.age,
                    age_spread: r.age_spread,
                    confidence: gender_certainty(r.female),
                    confirmed: t.confirmed,
                    x: t.bbox.x0(),
                    y: t.bbox.y0(),
                    w: t.bbox.w,
                    h: t.bbox.h,
                }
            })
            .collect();
        let tracks_json = serde_json::json!({
            "frame": frame.index,
            "fps": fps,
            "dropped": live.dropped_total(),
            "tracks": tracks,
        });
        let counts_json = serde_json::json!({
            "today": live.today,
            "since_start": { "people": live.people_total, "frames": live.frames_total },
        });
        self.server.state.publish_data(tracks_json.to_string(), counts_json.to_string());
        if self.server.state.has_viewers() {
            let mut picture = frame.image.clone();
            for t in &tracks {
                let bbox = faceage_device::geometry::BBox {
                    cx: t.x + t.w / 2.0,
                    cy: t.y + t.h / 2.0,
                    w: t.w,
                    h: t.h,
                };
                if t.confirmed {
                    draw::overlay_face(&mut picture, &bbox, t.gender, t.age, t.confidence);
                } else {
                    draw::rect_outline(&mut picture, &bbox, draw::GREY, 1);
                }
            }
            // The same encoder `faceage bench` times (SIMD, several times the image crate's speed).
            match faceage_device::imaging::encode_jpeg(&picture, 80) {
                Ok(jpeg) => self.server.state.publish_frame(jpeg),
                Err(e) => eprintln!("kiosk: frame {} not encoded: {e:#}", frame.index),
            }
        }
    }
}
