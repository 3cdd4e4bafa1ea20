//! A folder of images, or a glob, read in name order as a 10 fps stream.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Frame, FrameSource};
use crate::imaging::load_rgb;

/// Nominal rate of image sequences, which carry no timing of their own.
const SEQUENCE_FPS: u32 = 10;

pub struct ImageSequence {
    pattern: String,
    files: Vec<PathBuf>,
    next: usize,
}

impl ImageSequence {
    pub fn open(pattern: &str) -> Result<Self> {
        let glob_pattern = if std::path::Path::new(pattern).is_dir() {
            format!("{}/*", pattern.trim_end_matches('/'))
        } else {
            pattern.to_string()
        };
        let mut files: Vec<PathBuf> = glob::glob(&glob_pattern)
            .with_context(|| format!("{pattern}: not a valid file pattern"))?
            .filter_map(|entry| entry.ok())
            .filter(|p| p.is_file() && is_image_name(p))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{pattern}: no images (jpg, png, bmp, gif, webp) found");
        }
        Ok(Self { pattern: pattern.to_string(), files, next: 0 })
    }
}

fn is_image_name(path: &std::path::Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    matches!(ext.as_str(), "jpg" | "jpeg" | "png" | "bmp" | "gif" | "webp")
}

impl FrameSource for ImageSequence {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.files.get(self.next) else { return Ok(None) };
        let index = self.next as u64;
        self.next += 1;
        // A broken file is this frame's error; the next call moves on to the next file.
        let image = load_rgb(path)?;
        Ok(Some(Frame { image, index, time: Duration::from_secs(index) / SEQUENCE_FPS }))
    }

    fn is_live(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("{} ({} images)", self.pattern, self.files.len())
    }
}
