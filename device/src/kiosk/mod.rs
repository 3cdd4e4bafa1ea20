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
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tiny_http::{Header, Method, Response, Server};

use crate::newest::Newest;

pub mod publisher;
pub use publisher::KioskPublisher;
use publisher::TracksView;

const PAGE: &str = include_str!("page.html");
const BOUNDARY: &str = "faceage-frame";
/// Viewers streaming at once; more are turned away rather than costing memory and threads.
const MAX_STREAMS: usize = 16;

/// One source's picture and readings.
struct SourceView {
    name: String,
    /// The newest JPEG; viewers remember the generation they sent last.
    frame: Newest<Arc<Vec<u8>>>,
    tracks: Mutex<TracksView>,
    streams: AtomicUsize,
    /// Set when someone asked for a picture recently: encode frames only then.
    wanted: AtomicUsize,
}

/// What the pipeline publishes and the server hands out: a picture and the people in view
/// per source (`?source=N` on the picture and tracks endpoints, 0 when absent), the counts of
/// all of them.
pub struct KioskState {
    sources: Vec<SourceView>,
    counts_json: Mutex<String>,
    /// Streams open over all sources (capped at [`MAX_STREAMS`]).
    streams: AtomicUsize,
    /// The clock of [`KioskState::now`].
    started: Instant,
}

impl KioskState {
    fn new(names: &[String]) -> Self {
        let sources = names
            .iter()
            .map(|name| SourceView {
                name: name.clone(),
                frame: Newest::new(),
                tracks: Mutex::new(TracksView { source: name.clone(), ..Default::default() }),
                streams: AtomicUsize::new(0),
                wanted: AtomicUsize::new(0),
            })
            .collect();
        Self {
            sources,
            counts_json: Mutex::new("{}".into()),
            streams: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    /// The kiosk's clock: the time the publisher stamps frames and faces with, and requests
    /// read them at.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether anyone is watching source `source` (a stream open, or a still asked for in
    /// its last frames): the pipeline skips drawing and encoding otherwise.
    pub fn has_viewers(&self, source: usize) -> bool {
        self.sources
            .get(source)
            .is_some_and(|v| v.streams.load(Ordering::Relaxed) > 0 || v.wanted.load(Ordering::Relaxed) > 0)
    }

    pub fn publish_frame(&self, source: usize, jpeg: Vec<u8>) {
        let Some(view) = self.sources.get(source) else { return };
        view.frame.put(Arc::new(jpeg));
        let _ = view.wanted.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(1)));
    }

    pub fn publish_tracks(&self, source: usize, tracks: TracksView) {
        if let Some(view) = self.sources.get(source) {
            *lock(&view.tracks) = tracks;
        }
    }

    pub fn publish_counts(&self, counts_json: String) {
        *lock(&self.counts_json) = counts_json;
    }

    /// The source names, in `--source` order.
    pub fn names(&self) -> Vec<String> {
        self.sources.iter().map(|v| v.name.clone()).collect()
    }
}

impl SourceView {
    /// The newest frame newer than `seen`, waiting up to `timeout`.
    fn frame_after(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<Vec<u8>>)> {
        self.frame.newer_than(seen, timeout).filter(|(_, jpeg)| !jpeg.is_empty())
    }
}

/// A publisher that panicked left whole values, not a broken invariant.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct KioskServer {
    pub state: Arc<KioskState>,
    pub address: SocketAddr,
}

impl KioskServer {
    /// Serves the sources named `names` on `bind` (loopback unless the user says otherwise).
    pub fn start(bind: &str, names: &[String]) -> Result<KioskServer> {
        let server =
            Server::http(bind).map_err(|e| anyhow::anyhow!("kiosk: cannot listen on {bind}: {e}"))?;
        let address = server.server_addr().to_ip().context("kiosk: not an IP listener")?;
        let state = Arc::new(KioskState::new(names));
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

/// The source a request asks for: `?source=N`, 0 when absent; `None` when there is no such
/// source.
fn requested_source<'a>(state: &'a KioskState, url: &str) -> Option<&'a SourceView> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let index = match query.split('&').find_map(|kv| kv.strip_prefix("source=")) {
        Some(n) => n.parse::<usize>().ok()?,
        None => 0,
    };
    state.sources.get(index)
}

fn json_response(body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

fn handle(state: &Arc<KioskState>, request: tiny_http::Request) {
    if request.method() != &Method::Get {
        let _ = request.respond(Response::from_string("GET only").with_status_code(405));
        return;
    }
    let path = request.url().split('?').next().unwrap_or("/").to_string();
    let source = requested_source(state, request.url());
    let no_store = header("Cache-Control", "no-store");
    let result = match (path.as_str(), source) {
        ("/" | "/index.html", _) => request.respond(
            Response::from_string(PAGE).with_header(header("Content-Type", "text/html; charset=utf-8")),
        ),
        ("/api/sources", _) => {
            request.respond(json_response(serde_json::json!({ "sources": state.names() }).to_string()))
        }
        ("/api/counts", _) => request.respond(json_response(lock(&state.counts_json).clone())),
        ("/api/tracks", Some(view)) => {
            let body = lock(&view.tracks).json(state.now()).to_string();
            request.respond(json_response(body))
        }
        ("/frame.jpg", Some(view)) => {
            // Frames are encoded only while someone watches: ask for a fresh one and wait for
            // it, falling back to the last one if the pipeline is stalled.
            let current = view.frame.generation();
            view.wanted.store(3, Ordering::Relaxed);
            match view
                .frame_after(current, Duration::from_secs(2))
                .or_else(|| view.frame_after(0, Duration::ZERO))
            {
                Some((_, jpeg)) => request.respond(
                    Response::from_data(jpeg.as_slice())
                        .with_header(header("Content-Type", "image/jpeg"))
                        .with_header(no_store),
                ),
                None => request.respond(Response::from_string("no frame yet").with_status_code(503)),
            }
        }
        ("/stream.mjpg", Some(view)) => {
            if state.streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
                state.streams.fetch_sub(1, Ordering::Relaxed);
                let _ = request.respond(Response::from_string("too many viewers").with_status_code(503));
                return;
            }
            view.streams.fetch_add(1, Ordering::Relaxed);
            // Written by hand on the raw connection so that every frame is flushed as soon as
            // it is written (tiny_http would buffer the body).
            let result = stream_frames(view, request.into_writer());
            view.streams.fetch_sub(1, Ordering::Relaxed);
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
///
/// The first frame is one drawn after the viewer came (the pipeline draws only while someone
/// watches, so the newest one already there may be minutes old: an empty scene beside a list
/// of the people in view now); the old one only if no new frame comes within 2 s.
fn stream_frames(view: &SourceView, mut out: Box<dyn Write + Send>) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()?;
    let current = view.frame.generation();
    let mut next = view
        .frame_after(current, Duration::from_secs(2))
        .or_else(|| view.frame_after(0, Duration::ZERO))
        .or_else(|| view.frame_after(0, Duration::from_secs(28)));
    while let Some((generation, jpeg)) = next {
        write!(out, "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len())?;
        out.write_all(&jpeg)?;
        out.write_all(b"\r\n")?;
        out.flush()?;
        next = view.frame_after(generation, Duration::from_secs(30));
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
        let server = KioskServer::start("127.0.0.1:0", &["door".into(), "till".into()]).unwrap();
        let (head, body) = get(server.address, "/");
        assert!(head.lines().next().is_some_and(|l| l.contains(" 200")), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("stream.mjpg"));
        assert!(!String::from_utf8_lossy(&body).contains("http"), "no external assets");

        let tracks = |body: Vec<u8>| -> serde_json::Value { serde_json::from_slice(&body).unwrap() };
        assert_eq!(tracks(get(server.address, "/api/tracks").1)["tracks"], serde_json::json!([]));
        let published =
            |source: &str, frame: u64| TracksView { source: source.into(), frame, ..Default::default() };
        server.state.publish_tracks(0, published("door", 1));
        server.state.publish_tracks(1, published("till", 2));
        server.state.publish_counts("{\"people\":2}".into());
        let door = tracks(get(server.address, "/api/tracks").1);
        assert_eq!(
            (door["source"].as_str(), door["frame"].as_u64()),
            (Some("door"), Some(1)),
            "source 0 by default"
        );
        assert_eq!(tracks(get(server.address, "/api/tracks?source=1").1)["frame"], 2);
        assert_eq!(get(server.address, "/api/counts").1, b"{\"people\":2}");
        assert_eq!(get(server.address, "/api/sources").1, br#"{"sources":["door","till"]}"#);
        assert!(get(server.address, "/nope").0.contains("404"));
        assert!(get(server.address, "/api/tracks?source=2").0.contains("404"), "no third source");
        assert!(get(server.address, "/frame.jpg?source=x").0.contains("404"));

        // A stream client sees parts as frames are published. (No wall-clock deadlines: this
        // also runs under qemu on a busy machine.)
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(stream, "GET /stream.mjpg?source=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        while !server.state.has_viewers(1) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!server.state.has_viewers(0), "nobody watches the other source: it is not encoded");
        server.state.publish_frame(0, b"JPEG-DOOR".to_vec());
        server.state.publish_frame(1, b"JPEG-ONE".to_vec());
        server.state.publish_frame(1, b"JPEG-TWO".to_vec());
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
        assert!(seen.contains("JPEG-TWO") && !seen.contains("JPEG-DOOR"), "{seen}");
        assert!(get(server.address, "/frame.jpg?source=1").1 == b"JPEG-TWO");
        assert!(get(server.address, "/frame.jpg").1 == b"JPEG-DOOR");

        // A new viewer of the door is sent a frame drawn after it came, not the old one.
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(stream, "GET /stream.mjpg?source=0 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        while server.state.sources[0].streams.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.state.publish_frame(0, b"JPEG-NOW".to_vec());
        let mut reader = BufReader::new(stream);
        let mut seen = String::new();
        while !seen.contains("JPEG-") {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
        }
        assert!(seen.contains("JPEG-NOW") && !seen.contains("JPEG-DOOR"), "{seen}");
    }

    #[test]
    fn loopback_addresses_are_recognised() {
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("[::1]:8080"));
        assert!(!is_loopback("0.0.0.0:8080"));
        assert!(!is_loopback("192.168.1.10:80"));
    }
}
