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
pub use latest::{LatestFrame, Next};
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

/// Opens the source `spec` names.
pub fn open(spec: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let source: Box<dyn FrameSource> = match SourceSpec::parse(spec)? {
        SourceSpec::Camera(index) => open_camera(index, options)?,
        SourceSpec::Stream(url) => Box::new(FfmpegSource::open(&url, true)?),
        SourceSpec::Video(path) => Box::new(FfmpegSource::open(&path.to_string_lossy(), options.realtime)?),
        SourceSpec::Animation(path) => Box::new(AnimationSource::open(&path)?),
        SourceSpec::MjpegAvi(path) => Box::new(MjpegAviSource::open(&path)?),
        SourceSpec::Images(pattern) => Box::new(ImageSequence::open(&pattern)?),
    };
    Ok(source)
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
}
