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

/// Width, height and frame rate of the first video stream, as ffprobe reports them.
fn probe(url: &str) -> Result<(u32, u32, f64)> {
    let out = Command::new("ffprobe")
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
    let fps = match fields[2].split_once('/') {
        Some((n, d)) => n.parse::<f64>().unwrap_or(0.0) / d.parse::<f64>().unwrap_or(1.0).max(1e-9),
        None => fields[2].parse().unwrap_or(0.0),
    };
    Ok((width, height, if fps.is_finite() && fps > 0.0 { fps } else { 25.0 }))
}

impl FfmpegSource {
    /// Opens `url`; `live` streams are read as they come (RTSP over TCP), files as fast as
    /// they decode (`--realtime` paces them: `source::RealTime`).
    pub fn open(url: &str, live: bool) -> Result<Self> {
        let (width, height, fps) = probe(url)?;
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-loglevel", "error"]);
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
