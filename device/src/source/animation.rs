//! Animated GIF and APNG files, decoded frame by frame with their own delays.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use image::{AnimationDecoder, Frames};

use super::{Frame, FrameSource};

pub struct AnimationSource {
    path: PathBuf,
    frames: Frames<'static>,
    index: u64,
    time: Duration,
}

impl AnimationSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let reader = BufReader::new(file);
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let frames = match ext.as_str() {
            "gif" => image::codecs::gif::GifDecoder::new(reader)
                .with_context(|| format!("{}: not a readable GIF", path.display()))?
                .into_frames(),
            "png" | "apng" => {
                let decoder = image::codecs::png::PngDecoder::new(reader)
                    .with_context(|| format!("{}: not a readable PNG", path.display()))?;
                if !decoder.is_apng().unwrap_or(false) {
                    bail!(
                        "{}: a still PNG, not an animation; use a folder of images instead",
                        path.display()
                    );
                }
                decoder.apng().with_context(|| format!("{}: unreadable APNG", path.display()))?.into_frames()
            }
            other => bail!("{}: .{other} is not an animation format", path.display()),
        };
        Ok(Self { path: path.to_path_buf(), frames, index: 0, time: Duration::ZERO })
    }
}

impl FrameSource for AnimationSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(frame) = self.frames.next() else { return Ok(None) };
        let frame =
            frame.with_context(|| format!("{}: frame {} is corrupt", self.path.display(), self.index))?;
        let delay = Duration::from(frame.delay());
        let image = image::DynamicImage::ImageRgba8(frame.into_buffer()).into_rgb8();
        let out = Frame { image, index: self.index, time: self.time };
        self.index += 1;
        self.time += delay;
        Ok(Some(out))
    }

    fn is_live(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
