//! USB and CSI cameras through nokhwa (V4L2 on Linux). Frames are decoded here: MJPEG with
//! the `image` crate, YUYV and NV12 with nokhwa's converters, so no C JPEG library is needed.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use nokhwa::Camera;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};

use super::{Frame, FrameSource};
use crate::imaging::decode_rgb;

pub struct CameraSource {
    camera: Camera,
    index: u32,
    started: Instant,
    frames: u64,
}

impl CameraSource {
    pub fn open(index: u32, resolution: Option<(u32, u32)>, fps: Option<u32>) -> Result<Self> {
        let requested = match (resolution, fps) {
            (None, None) => RequestedFormat::new::<RgbFormat>(RequestedFormatType::AbsoluteHighestFrameRate),
            (res, fps) => {
                let (w, h) = res.unwrap_or((640, 480));
                let format = CameraFormat::new(Resolution::new(w, h), FrameFormat::MJPEG, fps.unwrap_or(30));
                RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(format))
            }
        };
        let mut camera = Camera::new(CameraIndex::Index(index), requested).map_err(|e| {
            anyhow::anyhow!(
                "camera:{index}: cannot open ({e}); is it plugged in? `ls /dev/video*` lists cameras, \
                 and the user needs to be in the `video` group"
            )
        })?;
        camera.open_stream().map_err(|e| anyhow::anyhow!("camera:{index}: cannot start streaming ({e})"))?;
        Ok(Self { camera, index, started: Instant::now(), frames: 0 })
    }
}

impl FrameSource for CameraSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let buffer =
            self.camera.frame().map_err(|e| anyhow::anyhow!("camera:{}: no frame ({e})", self.index))?;
        let res = buffer.resolution();
        let (w, h) = (res.width(), res.height());
        let data = buffer.buffer();
        let image = match buffer.source_frame_format() {
            FrameFormat::MJPEG => {
                decode_rgb(data).with_context(|| format!("camera:{}: corrupt MJPEG frame", self.index))?
            }
            FrameFormat::YUYV => {
                let rgb = nokhwa::utils::yuyv422_to_rgb(data, false)
                    .map_err(|e| anyhow::anyhow!("camera:{}: {e}", self.index))?;
                RgbImage::from_raw(w, h, rgb).context("YUYV frame size")?
            }
            FrameFormat::NV12 => {
                let rgb = nokhwa::utils::nv12_to_rgb(res, data, false)
                    .map_err(|e| anyhow::anyhow!("camera:{}: {e}", self.index))?;
                RgbImage::from_raw(w, h, rgb).context("NV12 frame size")?
            }
            FrameFormat::RAWRGB => RgbImage::from_raw(w, h, data.to_vec()).context("RGB frame size")?,
            FrameFormat::GRAY => {
                let grey = image::GrayImage::from_raw(w, h, data.to_vec()).context("grey frame size")?;
                image::DynamicImage::ImageLuma8(grey).into_rgb8()
            }
            other => bail!("camera:{}: frame format {other:?} is not supported", self.index),
        };
        let index = self.frames;
        self.frames += 1;
        Ok(Some(Frame { image, index, time: self.started.elapsed() }))
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("camera:{}", self.index)
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        let _ = self.camera.stop_stream();
    }
}
