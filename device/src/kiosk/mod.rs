//! The kiosk view: a small HTTP server with one page (the live picture with readings drawn on
//! it, today's counts, the frame rate) and JSON endpoints for screens and scripts.
//!
//! Frames are JPEG-encoded once, by the pipeline, and shared: every viewer reads the newest
//! one, so a slow viewer skips frames instead of queueing them, and viewers never slow the
//! pipeline. Nothing is fetched from the internet: the page is one self-contained file.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tiny_http::{Header, Method, Response, Server};

use crate::newest::Newest;

pub mod publisher;
pub use publisher::KioskPublisher;

const PAGE: &str = include_str!("page.html");
const BOUNDARY: &str = "faceage-frame";
/// Viewers streaming at once; more are turned away rather than costing memory and threads.
const MAX_STREAMS: usize = 16;

/// What the pipeline publishes and the server hands out.
pub struct KioskState {
    /// The newest JPEG; viewers remember the generation they sent last.
    frame: Newest<Arc<Vec<u8>>>,
    tracks_json: Mutex<String>,
    counts_json: Mutex<String>,
    streams: AtomicUsize,
    /// Set when someone asked for a picture recently: encode frames only then.
    wanted: AtomicUsize,
}

impl KioskState {
    fn new() -> Self {
        Self {
            frame: Newest::new(),
            tracks_json: Mutex::new("{\"tracks\":[]}".into()),
            counts_json: Mutex::new("{}".into()),
            streams: AtomicUsize::new(0),
            wanted: AtomicUsize::new(0),
        }
    }

    /// Whether anyone is watching (a stream open, or a still asked for in the last frames):
    /// the pipeline skips drawing and encoding otherwise.
    pub fn has_viewers(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0 || self.wanted.load(Ordering::Relaxed) > 0
    }

    pub fn publish_frame(&self, jpeg: Vec<u8>) {
        self.frame.put(Arc::new(jpeg));
        let _ = self.wanted.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(1)));
    }

    pub fn publish_data(&self, tracks_json: String, counts_json: String) {
        *self.tracks_json.lock().unwrap() = tracks_json;
        *self.counts_json.lock().unwrap() = counts_json;
    }

    /// The newest frame newer than `seen`, waiting up to `timeout`.
    fn frame_after(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<Vec<u8>>)> {
        self.frame.newer_than(seen, timeout).filter(|(_, jpeg)| !jpeg.is_empty())
    }
}

pub struct KioskServer {
    pub state: Arc<KioskState>,
    pub address: SocketAddr,
}

impl KioskServer {
    /// Serves on `bind` (loopback unless the user says otherwise).
    pub fn start(bind: &str) -> Result<KioskServer> {
        let server =
            Server::http(bind).map_err(|e| anyhow::anyhow!("kiosk: cannot listen on {bind}: {e}"))?;
        let address = server.server_addr().to_ip().context("kiosk: not an IP listener")?;
        let state = Arc::new(KioskState::new());
        let s = Arc::clone(&state);
        std::thread::Builder::new().name("kiosk".into()).spawn(move || {
            for request in server.incoming_requests() {
                let s = Arc::clone(&s);
                // One short-lived thread per request; streams are capped at MAX_STREAMS.
                let _ = std::thread::Builder::new()
                    .name("kiosk-request".into())
                    .spawn(move || handle(&s, request));
            }
        })?;
        Ok(KioskServer { state, address })
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn handle(state: &Arc<KioskState>, request: tiny_http::Request) {
    if request.method() != &Method::Get {
        let _ = request.respond(Response::from_string("GET only").with_status_code(405));
        return;
    }
    let path = request.url().split('?').next().unwrap_or("/").to_string();
    let no_store = header("Cache-Control", "no-store");
    let result = match path.as_str() {
        "/" | "/index.html" => request.respond(
            Response::from_string(PAGE).with_header(header("Content-Type", "text/html; charset=utf-8")),
        ),
        "/api/tracks" => {
            let body = state.tracks_json.lock().unwrap().clone();
            request.respond(
                Response::from_string(body)
                    .with_header(header("Content-Type", "application/json"))
                    .with_header(no_store),
            )
        }
        "/api/counts" => {
            let body = state.counts_json.lock().unwrap().clone();
            request.respond(
                Response::from_string(body)
                    .with_header(header("Content-Type", "application/json"))
                    .with_header(no_store),
            )
        }
        "/frame.jpg" => {
            // Frames are encoded only while someone watches: ask for a fresh one and wait for
            // it, falling back to the last one if the pipeline is stalled.
            let current = state.frame.generation();
            state.wanted.store(3, Ordering::Relaxed);
            match state
                .frame_after(current, Duration::from_secs(2))
                .or_else(|| state.frame_after(0, Duration::ZERO))
            {
                Some((_, jpeg)) => request.respond(
                    Response::from_data(jpeg.as_slice())
                        .with_header(header("Content-Type", "image/jpeg"))
                        .with_header(no_store),
                ),
                None => request.respond(Response::from_string("no frame yet").with_status_code(503)),
            }
        }
        "/stream.mjpg" => {
            if state.streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
                state.streams.fetch_sub(1, Ordering::Relaxed);
                let _ = request.respond(Response::from_string("too many viewers").with_status_code(503));
                return;
            }
            // Written by hand on the raw connection so that every frame is flushed as soon as
            // it is written (tiny_http would buffer the body).
            let result = stream_frames(state, request.into_writer());
            state.streams.fetch_sub(1, Ordering::Relaxed);
            result
        }
        _ => request.respond(Response::from_string("not found").with_status_code(404)),
    };
    let _ = result;
}

/// Sends the newest frame each time there is one newer than the last sent, until the viewer
/// goes away or no frame comes for 30 s (the page then reconnects). Frames that came and went
/// meanwhile are never sent: a slow viewer skips frames and holds no queue.
fn stream_frames(state: &KioskState, mut out: Box<dyn Write + Send>) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()?;
    let mut seen = 0;
    while let Some((generation, jpeg)) = state.frame_after(seen, Duration::from_secs(30)) {
        seen = generation;
        write!(out, "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len())?;
        out.write_all(&jpeg)?;
        out.write_all(b"\r\n")?;
        out.flush()?;
    }
    Ok(())
}

/// True for addresses that only this machine can reach.
pub fn is_loopback(bind: &str) -> bool {
    bind.parse::<SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or_else(|_| bind.starts_with("localhost:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    fn get(address: SocketAddr, path: &str) -> (String, Vec<u8>) {
        let mut stream = TcpStream::connect(address).unwrap();
        // HTTP/1.0: a plain body, never chunked.
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8_lossy(&bytes[..split]).into_owned(), bytes[split + 4..].to_vec())
    }

    #[test]
    fn serves_the_page_data_and_frames_and_streams_only_new_frames() {
        let server = KioskServer::start("127.0.0.1:0").unwrap();
        let (head, body) = get(server.address, "/");
        assert!(head.lines().next().is_some_and(|l| l.contains(" 200")), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("stream.mjpg"));
        assert!(!String::from_utf8_lossy(&body).contains("http"), "no external assets");

        server.state.publish_data("{\"tracks\":[1]}".into(), "{\"people\":2}".into());
        assert_eq!(get(server.address, "/api/tracks").1, b"{\"tracks\":[1]}");
        assert_eq!(get(server.address, "/api/counts").1, b"{\"people\":2}");
        assert!(get(server.address, "/nope").0.contains("404"));

        // A stream client sees parts as frames are published. (No wall-clock deadlines: this
        // also runs under qemu on a busy machine.)
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(stream, "GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        while !server.state.has_viewers() {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.state.publish_frame(b"JPEG-ONE".to_vec());
        server.state.publish_frame(b"JPEG-TWO".to_vec());
        let mut reader = BufReader::new(stream);
        let mut seen = String::new();
        while !seen.contains("JPEG-TWO") {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
        }
        assert!(seen.contains("multipart/x-mixed-replace"), "{seen}");
        assert!(seen.contains("JPEG-TWO"), "{seen}");
        assert!(get(server.address, "/frame.jpg").1 == b"JPEG-TWO");
    }

    #[test]
    fn loopback_addresses_are_recognised() {
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("[::1]:8080"));
        assert!(!is_loopback("0.0.0.0:8080"));
        assert!(!is_loopback("192.168.1.10:80"));
    }
}
