//! Decoding and resampling: the pixel operations both the board and the trainer rely on.

use std::path::Path;

use anyhow::{Context, Result};
use image::{ImageBuffer, ImageReader, Rgb, RgbImage};

use crate::geometry::{Affine, Point};

/// Decodes an image file to RGB; the error names the file and what is wrong with it.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // A JPEG cut short (a copy or download that stopped) still decodes, grey below the cut,
    // and the detector may find a "face" in what is left: refuse it as the broken file it is.
    if bytes.starts_with(&[0xFF, 0xD8]) && !ends_with_jpeg_end(&bytes) {
        anyhow::bail!("{}: truncated JPEG (no end-of-image marker): the file was cut short", path.display());
    }
    let reader = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let image = reader.decode().with_context(|| format!("{}: not a decodable image", path.display()))?;
    Ok(image.into_rgb8())
}

/// Whether a JPEG's end-of-image marker (FF D9) is in its last kilobyte: a whole file ends
/// with it, give or take a few bytes some writers append. (Scan data never holds FF D9, its
/// FF bytes are stuffed; an embedded thumbnail's marker sits near the start.)
fn ends_with_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes an in-memory encoded image (JPEG, PNG, GIF) to RGB.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let image = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read image bytes")?
        .decode()
        .context("not a decodable image")?;
    Ok(image.into_rgb8())
}

/// JPEG bytes of `image` at `quality` (1-100).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity((image.width() * image.height() / 4) as usize);
    let (w, h) = (u16::try_from(image.width())?, u16::try_from(image.height())?);
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(image.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
        .context("JPEG encoding failed")?;
    Ok(out)
}

/// Bilinear sample at `p` (pixel-centre coordinates), clamping to the edge outside the image.
#[inline]
pub fn sample_bilinear<C: std::ops::Deref<Target = [u8]>>(
    src: &ImageBuffer<Rgb<u8>, C>,
    p: Point,
) -> [f32; 3] {
    let (w, h) = (src.width() as i64, src.height() as i64);
    let x = p.x - 0.5;
    let y = p.y - 0.5;
    let x0f = x.floor();
    let y0f = y.floor();
    let fx = x - x0f;
    let fy = y - y0f;
    let clamp_x = |v: i64| v.clamp(0, w - 1) as u32;
    let clamp_y = |v: i64| v.clamp(0, h - 1) as u32;
    let (x0, y0) = (x0f as i64, y0f as i64);
    let (xa, xb, ya, yb) = (clamp_x(x0), clamp_x(x0 + 1), clamp_y(y0), clamp_y(y0 + 1));
    let p00 = src.get_pixel(xa, ya).0;
    let p10 = src.get_pixel(xb, ya).0;
    let p01 = src.get_pixel(xa, yb).0;
    let p11 = src.get_pixel(xb, yb).0;
    let mut out = [0f32; 3];
    for c in 0..3 {
        let top = p00[c] as f32 * (1.0 - fx) + p10[c] as f32 * fx;
        let bottom = p01[c] as f32 * (1.0 - fx) + p11[c] as f32 * fx;
        out[c] = top * (1.0 - fy) + bottom * fy;
    }
    out
}

/// Resamples `src` into a `width x height` image; `dst_to_src` maps output pixel centres to
/// source points. Outside the source the edge pixels are repeated.
pub fn warp_affine(src: &RgbImage, dst_to_src: &Affine, width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let p = dst_to_src.apply(Point::new(x as f32 + 0.5, y as f32 + 0.5));
        let [r, g, b] = sample_bilinear(src, p);
        *pixel = Rgb([round_u8(r), round_u8(g), round_u8(b)]);
    }
    out
}

#[inline]
pub fn round_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// How a frame was placed on a square canvas: `canvas = frame * scale + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub offset_x: f32,
    pub offset_y: f32,
}

impl Letterbox {
    /// The placement that fits a `width x height` frame centred in a `size x size` canvas.
    pub fn fit(width: u32, height: u32, size: u32) -> Letterbox {
        let scale = size as f32 / width.max(height) as f32;
        Letterbox {
            scale,
            offset_x: (size as f32 - width as f32 * scale) / 2.0,
            offset_y: (size as f32 - height as f32 * scale) / 2.0,
        }
    }

    /// Canvas point back to frame coordinates.
    pub fn to_frame(&self, p: Point) -> Point {
        Point::new((p.x - self.offset_x) / self.scale, (p.y - self.offset_y) / self.scale)
    }
}

/// Fits `frame` into a `size x size` canvas (aspect kept, grey borders), area-filtered when
/// shrinking so small faces survive the downscale.
pub fn letterbox(frame: &RgbImage, size: u32) -> (RgbImage, Letterbox) {
    let placement = Letterbox::fit(frame.width(), frame.height(), size);
    let w = ((frame.width() as f32 * placement.scale).round() as u32).clamp(1, size);
    let h = ((frame.height() as f32 * placement.scale).round() as u32).clamp(1, size);
    // Shrinking (a camera frame, a second look's window): the box filter of `thumbnail`, every
    // source pixel counted once, 0.9 ms for 640x480 against the triangle filter's 6 ms of a
    // 24 ms frame (model card, Speed). Enlarging (a small photo): the triangle filter, where
    // `thumbnail` would repeat pixels.
    let resized = if w < frame.width() {
        image::imageops::thumbnail(frame, w, h)
    } else {
        image::imageops::resize(frame, w, h, image::imageops::FilterType::Triangle)
    };
    let mut canvas = RgbImage::from_pixel(size, size, Rgb([128, 128, 128]));
    let (ox, oy) = ((size - w) / 2, (size - h) / 2);
    image::imageops::replace(&mut canvas, &resized, ox as i64, oy as i64);
    // Report the placement actually used (integer offsets, rounded size).
    let placement =
        Letterbox { scale: w as f32 / frame.width() as f32, offset_x: ox as f32, offset_y: oy as f32 };
    (canvas, placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_cut_short_is_refused_by_name_and_a_whole_one_reads() {
        let dir = tempfile::tempdir().unwrap();
        let bytes =
            encode_jpeg(&RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 4, y as u8 * 5, 90])), 80).unwrap();
        let whole = dir.path().join("whole.jpg");
        std::fs::write(&whole, &bytes).unwrap();
        assert_eq!(load_rgb(&whole).unwrap().dimensions(), (64, 48));
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", load_rgb(&cut).unwrap_err());
        assert!(err.contains("cut.jpg") && err.contains("truncated JPEG"), "{err}");
    }

    #[test]
    fn identity_warp_reproduces_the_image() {
        let src = RgbImage::from_fn(7, 5, |x, y| Rgb([x as u8 * 30, y as u8 * 40, 7]));
        let out = warp_affine(&src, &Affine::IDENTITY, 7, 5);
        assert_eq!(out, src);
    }

    #[test]
    fn translation_by_whole_pixels_shifts_and_clamps() {
        let src = RgbImage::from_fn(4, 1, |x, _| Rgb([x as u8 * 10, 0, 0]));
        let out = warp_affine(&src, &Affine::translation(1.0, 0.0), 4, 1);
        let reds: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert_eq!(reds, vec![10, 20, 30, 30]);
    }

    #[test]
    fn letterbox_maps_canvas_points_back_to_the_frame() {
        let frame = RgbImage::new(640, 480);
        let (canvas, placement) = letterbox(&frame, 256);
        assert_eq!(canvas.dimensions(), (256, 256));
        let corner = placement.to_frame(Point::new(placement.offset_x, placement.offset_y));
        assert!(corner.x.abs() < 1e-3 && corner.y.abs() < 1e-3);
        let far = placement.to_frame(Point::new(256.0 - placement.offset_x, 256.0 - placement.offset_y));
        assert!((far.x - 640.0).abs() < 1.0 && (far.y - 480.0).abs() < 1.0);
    }

    #[test]
    fn jpeg_round_trips() {
        let img = RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 100]));
        let back = decode_rgb(&encode_jpeg(&img, 90).unwrap()).unwrap();
        assert_eq!(back.dimensions(), (40, 30));
        assert!((back.get_pixel(20, 15).0[0] as i32 - 120).abs() < 10);
    }

    #[test]
    fn undecodable_bytes_are_an_error() {
        assert!(decode_rgb(b"definitely not an image").is_err());
    }
}
