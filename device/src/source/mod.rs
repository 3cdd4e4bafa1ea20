//! Where frames come from: cameras, video files and network streams, image sequences,
//! animated images and MJPEG AVI clips, all behind one trait.
//!
//! `--source` names one of them:
//!
//! | source | reads with |
//! |---|---|
//! | `camera:0`, `/dev/video0` | nokhwa (V4L2), feature `camera` |
//! | `rtsp://…`, `http://…`, `clip.mp4` (any other file ffmpeg can read) | an `ffmpeg` child process |
//! | a folder, or a glob like `frames/*.jpg` | the `image` crate, in name order |
//! | `clip.gif`, `clip.png` (APNG) | the `image` crate's frame decoders |
//! | `clip.avi` (MJPEG) | a small RIFF chunk reader here, no ffmpeg needed |

mod animation;
#[cfg(feature = "camera")]
mod camera;
mod ffmpeg;
mod images;
mod latest;
mod mjpeg_avi;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use image::RgbImage;

pub use animation::AnimationSource;
#[cfg(feature = "camera")]
pub use camera::CameraSource;
pub use ffmpeg::FfmpegSource;
pub use images::ImageSequence;
pub use latest::{LatestFrame, Next, backoff};
pub use mjpeg_avi::{MjpegAviSource, write_mjpeg_avi};

/// One frame and where it sits in its stream.
#[derive(Clone, Debug)]
pub struct Frame {
    pub image: RgbImage,
    /// Position in the stream (0-based, counting frames the source produced).
    pub index: u64,
    /// Time since the start of the stream: media time for files, arrival time for live
    /// sources.
    pub time: Duration,
}

/// A stream of frames. `Ok(None)` is the end of a finite stream; an error is a frame or a
/// device that failed (the caller decides whether to retry).
pub trait FrameSource {
    fn next_frame(&mut self) -> Result<Option<Frame>>;
    /// Live sources produce frames whether or not anyone reads them (cameras, streams):
    /// reading them must drop stale frames rather than queue them.
    fn is_live(&self) -> bool;
    /// Human-readable name for messages.
    fn describe(&self) -> String;
}

/// Options for opening a source.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Requested camera resolution (width, height).
    pub resolution: Option<(u32, u32)>,
    /// Requested camera frame rate.
    pub fps: Option<u32>,
    /// Treat a file like a live source: read it in real time and drop what falls behind.
    pub realtime: bool,
}

/// What a `--source` string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Camera(u32),
    Stream(String),
    Video(PathBuf),
    Animation(PathBuf),
    MjpegAvi(PathBuf),
    Images(String),
}

impl SourceSpec {
    pub fn parse(spec: &str) -> Result<SourceSpec> {
        if let Some(n) = spec.strip_prefix("camera:") {
            let n = n
                .parse()
                .map_err(|_| anyhow::anyhow!("{spec}: camera index must be a number, e.g. camera:0"))?;
            return Ok(SourceSpec::Camera(n));
        }
        if let Some(Ok(n)) = spec.strip_prefix("/dev/video").map(str::parse) {
            return Ok(SourceSpec::Camera(n));
        }
        if spec.contains("://") {
            return Ok(SourceSpec::Stream(spec.to_string()));
        }
        if spec.contains('*') || spec.contains('?') || Path::new(spec).is_dir() {
            return Ok(SourceSpec::Images(spec.to_string()));
        }
        let path = PathBuf::from(spec);
        if !path.exists() {
            bail!(
                "{spec}: no such file, folder or camera (use camera:N, a video, a folder of images or a URL)"
            );
        }
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        Ok(match ext.as_str() {
            "gif" | "png" | "apng" => SourceSpec::Animation(path),
            "avi" if mjpeg_avi::is_mjpeg_avi(&path) => SourceSpec::MjpegAvi(path),
            "jpg" | "jpeg" | "bmp" | "webp" => SourceSpec::Images(spec.to_string()),
            _ => SourceSpec::Video(path),
        })
    }
}

/// One `--source` of a run: the name its counts and kiosk picture go by, and what it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSource {
    pub name: String,
    pub spec: String,
}

impl NamedSource {
    /// `NAME=SPEC` (NAME of letters, digits, `_`, `-` and `.`), or a bare SPEC named after
    /// itself with any password and query of a URL left out (the name is written to the
    /// counts log, and a camera URL's credentials must not be).
    pub fn parse(arg: &str) -> NamedSource {
        if let Some((name, spec)) = arg.split_once('=') {
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if !name.is_empty() && name.chars().all(plain) && !spec.is_empty() {
                return NamedSource { name: name.into(), spec: spec.into() };
            }
        }
        NamedSource { name: default_name(arg), spec: arg.into() }
    }
}

/// `rtsp://user:secret@cam.local:554/live?token=x` is named `rtsp://cam.local:554/live`;
/// commas (the CSV log's separator) and control characters become `_`.
fn default_name(spec: &str) -> String {
    let mut name = spec.to_string();
    if let Some((scheme, rest)) = spec.split_once("://") {
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        name = format!("{scheme}://{host}{path}");
    }
    name.chars().map(|c| if c == ',' || c == '"' || c.is_control() { '_' } else { c }).collect()
}

/// Checks the `--source` arguments of a run: every name once, every camera, stream and file
/// once (two readers of one camera fail or count everyone twice).
pub fn parse_sources(args: &[String]) -> Result<Vec<NamedSource>> {
    if args.is_empty() {
        bail!("no --source given");
    }
    let mut sources: Vec<(NamedSource, String)> = Vec::new();
    for arg in args {
        let source = NamedSource::parse(arg);
        let device = SourceSpec::parse(&source.spec)?.device_key();
        if let Some((earlier, _)) = sources.iter().find(|(_, d)| *d == device) {
            bail!("--source {arg}: {} is already read by --source {}", device, earlier.spec);
        }
        if sources.iter().any(|(s, _)| s.name == source.name) {
            bail!("--source {arg}: the name {:?} is given to two sources", source.name);
        }
        sources.push((source, device));
    }
    Ok(sources.into_iter().map(|(s, _)| s).collect())
}

impl SourceSpec {
    /// What two specs share when they read the same thing: `camera:0` and `/dev/video0` are
    /// one camera, `clip.avi` and `./clip.avi` one file.
    pub fn device_key(&self) -> String {
        let path_key =
            |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
        match self {
            SourceSpec::Camera(n) => format!("camera:{n}"),
            SourceSpec::Stream(url) => url.clone(),
            SourceSpec::Video(p) | SourceSpec::Animation(p) | SourceSpec::MjpegAvi(p) => path_key(p),
            SourceSpec::Images(pattern) if Path::new(pattern).is_dir() => path_key(Path::new(pattern)),
            SourceSpec::Images(pattern) => pattern.clone(),
        }
    }
}

/// Opens the source `spec` names.
pub fn open(spec: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let source: Box<dyn FrameSource> = match SourceSpec::parse(spec)? {
        SourceSpec::Camera(index) => open_camera(index, options)?,
        SourceSpec::Stream(url) => Box::new(FfmpegSource::open(&url, true)?),
        SourceSpec::Video(path) => Box::new(FfmpegSource::open(&path.to_string_lossy(), false)?),
        SourceSpec::Animation(path) => Box::new(AnimationSource::open(&path)?),
        SourceSpec::MjpegAvi(path) => Box::new(MjpegAviSource::open(&path)?),
        SourceSpec::Images(pattern) => Box::new(ImageSequence::open(&pattern)?),
    };
    if options.realtime && !source.is_live() {
        return Ok(Box::new(RealTime { inner: source, start: None }));
    }
    Ok(source)
}

/// A file read like a camera (`--realtime`): each frame is handed out no earlier than its
/// media time after the first, whatever the format, so a reader that falls behind drops
/// frames as it would live. Its end is the end of the stream.
pub struct RealTime {
    inner: Box<dyn FrameSource>,
    /// When media time 0 was (the first frame's arrival less its media time).
    start: Option<std::time::Instant>,
}

impl FrameSource for RealTime {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let frame = self.inner.next_frame()?;
        if let Some(frame) = &frame {
            let now = std::time::Instant::now();
            let start = *self.start.get_or_insert_with(|| now.checked_sub(frame.time).unwrap_or(now));
            std::thread::sleep((start + frame.time).saturating_duration_since(now));
        }
        Ok(frame)
    }
    fn is_live(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(feature = "camera")]
fn open_camera(index: u32, options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Ok(Box::new(CameraSource::open(index, options.resolution, options.fps)?))
}

#[cfg(not(feature = "camera"))]
fn open_camera(index: u32, _options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    bail!("camera:{index}: this faceage was built without the `camera` feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_are_recognised() {
        assert_eq!(SourceSpec::parse("camera:2").unwrap(), SourceSpec::Camera(2));
        assert_eq!(SourceSpec::parse("/dev/video1").unwrap(), SourceSpec::Camera(1));
        assert_eq!(
            SourceSpec::parse("rtsp://cam.local/stream").unwrap(),
            SourceSpec::Stream("rtsp://cam.local/stream".into())
        );
        assert_eq!(SourceSpec::parse("frames/*.jpg").unwrap(), SourceSpec::Images("frames/*.jpg".into()));
        assert!(SourceSpec::parse("camera:x").unwrap_err().to_string().contains("camera index"));
        assert!(SourceSpec::parse("/nonexistent/clip.mp4").unwrap_err().to_string().contains("no such file"));
    }

    /// Ten frames 40 ms apart in media time, as fast as it can read them.
    struct Instant10(u64);
    impl FrameSource for Instant10 {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            self.0 += 1;
            let time = Duration::from_millis(40 * (self.0 - 1));
            Ok((self.0 <= 10).then(|| Frame { image: RgbImage::new(2, 2), index: self.0 - 1, time }))
        }
        fn is_live(&self) -> bool {
            false
        }
        fn describe(&self) -> String {
            "ten.avi".into()
        }
    }

    #[test]
    fn a_file_read_in_real_time_takes_its_media_time() {
        let mut source = RealTime { inner: Box::new(Instant10(0)), start: None };
        let started = std::time::Instant::now();
        let mut frames = 0;
        while source.next_frame().unwrap().is_some() {
            frames += 1;
        }
        // The last frame is due 360 ms after the first (sleeps never end early).
        assert_eq!(frames, 10);
        assert!(started.elapsed() >= Duration::from_millis(360), "{:?}", started.elapsed());
        assert!(!source.is_live() && source.describe() == "ten.avi");
    }

    #[test]
    fn sources_are_named_without_credentials_and_each_device_is_read_once() {
        let named = NamedSource::parse("door=camera:1");
        assert_eq!((named.name.as_str(), named.spec.as_str()), ("door", "camera:1"));
        let url = NamedSource::parse("rtsp://admin:secret@cam.local:554/live?token=abc");
        assert_eq!(url.name, "rtsp://cam.local:554/live", "no password or token in the log");
        assert_eq!(url.spec, "rtsp://admin:secret@cam.local:554/live?token=abc");
        // A URL with '=' in its query is not a name.
        assert_eq!(NamedSource::parse("http://x/feed?a=b").spec, "http://x/feed?a=b");
        assert_eq!(NamedSource::parse("/data/a,b.avi").name, "/data/a_b.avi");

        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let error = parse_sources(&args(&["camera:0", "hall=/dev/video0"])).unwrap_err().to_string();
        assert!(error.contains("camera:0 is already read by --source camera:0"), "{error}");
        let error = parse_sources(&args(&["a=camera:0", "a=camera:1"])).unwrap_err().to_string();
        assert!(error.contains("\"a\" is given to two sources"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip.gif");
        std::fs::write(&clip, b"GIF89a").unwrap();
        let relative = format!(
            "{}/../{}/clip.gif",
            dir.path().display(),
            dir.path().file_name().unwrap().to_str().unwrap()
        );
        let error = parse_sources(&args(&[clip.to_str().unwrap(), &format!("b={relative}")])).unwrap_err();
        assert!(error.to_string().contains("is already read"), "{error}");
        let two = parse_sources(&args(&["camera:0", "camera:1"])).unwrap();
        assert_eq!(two.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["camera:0", "camera:1"]);
        assert!(parse_sources(&[]).is_err());
    }
}
