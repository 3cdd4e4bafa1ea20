//! Video files and network streams (RTSP IP cameras, HTTP) through an `ffmpeg` child process
//! that decodes anything it can read into raw RGB frames on a pipe.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use image::RgbImage;

use super::{Frame, FrameSource};

pub struct FfmpegSource {
    url: String,
    child: Child,
    stdout: ChildStdout,
    width: u32,
    height: u32,
    frame_duration: Duration,
    live: bool,
    started: Instant,
    index: u64,
}

fn ffmpeg_missing(tool: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{tool} not found: install ffmpeg (apt-get install ffmpeg) to read videos and streams, \
         or use a folder of images, a GIF or an MJPEG AVI as --source"
    )
}

/// How much of a live stream ffprobe and ffmpeg read before they settle its format: 1 s, not
/// their default 5 s. Each opening of a network camera is a probe and a decoder, each of which
/// waited the whole window on an MPEG-TS stream (10 s before the first frame, on every reconnect
/// after an outage; ffprobe took 1.35 s with this window). A stream whose picture size is not known within it
/// (a long keyframe interval) is probed again with ffmpeg's default window.
const LIVE_ANALYZE_WINDOW: [&str; 2] = ["-analyzeduration", "1000000"];

/// ffmpeg's options that set the analysis window (empty: its default).
type AnalyzeWindow = &'static [&'static str];

/// Width, height and frame rate of the first video stream, as ffprobe reports them, reading
/// `window` of it (empty: ffmpeg's default).
fn probe(url: &str, window: &[&str]) -> Result<(u32, u32, f64)> {
    let out = Command::new("ffprobe")
        .args(window)
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,r_frame_rate",
            "-of",
            "csv=p=0",
        ])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound { ffmpeg_missing("ffprobe") } else { e.into() }
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let fields: Vec<&str> = line.trim().split(',').collect();
    if !out.status.success() || fields.len() < 3 {
        let why = String::from_utf8_lossy(&out.stderr);
        bail!("{url}: no readable video stream ({})", why.trim());
    }
    let width: u32 = fields[0].parse().context("width")?;
    let height: u32 = fields[1].parse().context("height")?;
    // 0x0: the stream is listed but none of its picture was read (see LIVE_ANALYZE_WINDOW).
    if width == 0 || height == 0 {
        bail!("{url}: no picture size found in the part of the stream read");
    }
    let fps = match fields[2].split_once('/') {
        Some((n, d)) => n.parse::<f64>().unwrap_or(0.0) / d.parse::<f64>().unwrap_or(1.0).max(1e-9),
        None => fields[2].parse().unwrap_or(0.0),
    };
    Ok((width, height, if fps.is_finite() && fps > 0.0 { fps } else { 25.0 }))
}

/// The analysis window for `url` (for ffprobe and then ffmpeg) and what the probe found in it:
/// the short one for a live stream where that is enough, else ffmpeg's default (empty).
fn settle(url: &str, live: bool) -> Result<(AnalyzeWindow, (u32, u32, f64))> {
    if live && let Ok(found) = probe(url, &LIVE_ANALYZE_WINDOW) {
        return Ok((&LIVE_ANALYZE_WINDOW, found));
    }
    Ok((&[], probe(url, &[])?))
}

impl FfmpegSource {
    /// Opens `url`; `live` streams are read as they come (RTSP over TCP), files as fast as
    /// they decode (`--realtime` paces them: `source::RealTime`).
    pub fn open(url: &str, live: bool) -> Result<Self> {
        let (window, (width, height, fps)) = settle(url, live)?;
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-loglevel", "error"]).args(window);
        if url.starts_with("rtsp://") {
            cmd.args(["-rtsp_transport", "tcp"]);
        }
        cmd.arg("-i").arg(url).args(["-an", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound { ffmpeg_missing("ffmpeg") } else { e.into() }
            })?;
        let stdout = child.stdout.take().context("ffmpeg stdout")?;
        Ok(Self {
            url: url.to_string(),
            child,
            stdout,
            width,
            height,
            frame_duration: Duration::from_secs_f64(1.0 / fps),
            live,
            started: Instant::now(),
            index: 0,
        })
    }

    fn failure(&mut self) -> anyhow::Error {
        let mut why = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut why);
        }
        anyhow::anyhow!("{}: ffmpeg stopped ({})", self.url, why.trim())
    }
}

impl FrameSource for FfmpegSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let mut buffer = vec![0u8; (self.width * self.height * 3) as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match self.stdout.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("{}: reading ffmpeg output", self.url)),
            }
        }
        if filled < buffer.len() {
            // End of the stream: a clean end for files, a failure for live streams.
            let status = self.child.wait()?;
            if status.success() && !self.live {
                return Ok(None);
            }
            return Err(self.failure());
        }
        let image = RgbImage::from_raw(self.width, self.height, buffer).context("frame size")?;
        let index = self.index;
        self.index += 1;
        let time = if self.live { self.started.elapsed() } else { self.frame_duration * index as u32 };
        Ok(Some(Frame { image, index, time }))
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn describe(&self) -> String {
        format!("{} ({}x{} via ffmpeg)", self.url, self.width, self.height)
    }
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MPEG-2 video in MPEG-TS (what IP cameras stream), made by ffmpeg in `dir` from `args`
    /// (its inputs and their mapping).
    fn mpeg_ts(dir: &std::path::Path, name: &str, args: &[&str]) -> std::path::PathBuf {
        let ts = dir.join(name);
        let made = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error"])
            .args(args)
            .args(["-c:v", "mpeg2video", "-f", "mpegts"])
            .arg(&ts)
            .status()
            .expect("ffmpeg missing: install it (scripts/setup.sh does)");
        assert!(made.success());
        ts
    }

    /// A stream whose picture starts 2 s in (audio before it): the short window of a live
    /// opening finds no picture size, and the opening falls back to ffmpeg's default window.
    #[test]
    fn a_live_stream_whose_picture_starts_late_is_probed_again_with_the_default_window() {
        let dir = tempfile::tempdir().unwrap();
        let late_picture = ["-f", "lavfi", "-i", "sine=d=4", "-itsoffset", "2", "-f", "lavfi", "-i"];
        let mapped = ["testsrc=d=2:size=160x120:rate=10", "-map", "0:a", "-map", "1:v", "-c:a", "mp2"];
        let ts = mpeg_ts(dir.path(), "late.ts", &[&late_picture[..], &mapped].concat());
        let url = ts.to_str().unwrap();
        let short = probe(url, &LIVE_ANALYZE_WINDOW).unwrap_err().to_string();
        assert!(short.contains("no picture size") && short.contains("late.ts"), "{short}");

        assert_eq!(settle(url, true).unwrap(), (&[][..], (160, 120, 10.0)), "the default window");
        let mut live = FfmpegSource::open(url, true).unwrap();
        let frame = live.next_frame().unwrap().expect("a frame");
        assert_eq!(frame.image.dimensions(), (160, 120));
    }

    #[test]
    fn a_file_is_read_with_the_default_window_and_a_stream_with_the_short_one() {
        let dir = tempfile::tempdir().unwrap();
        let ts = mpeg_ts(dir.path(), "clip.ts", &["-f", "lavfi", "-i", "testsrc=d=1:size=96x64:rate=10"]);
        let url = ts.to_str().unwrap();
        for live in [false, true] {
            let window = if live { &LIVE_ANALYZE_WINDOW[..] } else { &[] };
            assert_eq!(settle(url, live).unwrap(), (window, (96, 64, 10.0)));
            let mut source = FfmpegSource::open(url, live).unwrap();
            let mut frames = 0;
            while let Ok(Some(_)) = source.next_frame() {
                frames += 1;
            }
            assert_eq!(frames, 10, "live: {live}");
        }
    }
}
