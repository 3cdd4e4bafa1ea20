//! MJPEG in AVI: a RIFF file whose `movi` list holds one JPEG per `##dc` chunk. Many USB
//! cameras and `ffmpeg -c:v mjpeg` write it; reading it needs no ffmpeg.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use image::RgbImage;

use super::{Frame, FrameSource};
use crate::imaging::decode_rgb;

fn read_fourcc(r: &mut impl Read) -> std::io::Result<[u8; 4]> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    Ok(u32::from_le_bytes(read_fourcc(r)?))
}

/// True when `path` is an AVI whose video stream is Motion-JPEG.
pub fn is_mjpeg_avi(path: &Path) -> bool {
    MjpegAviSource::open(path).is_ok()
}

pub struct MjpegAviSource {
    path: PathBuf,
    reader: BufReader<File>,
    /// Where the next chunk of the `movi` list starts, and where the list ends.
    next_chunk: u64,
    movi_end: u64,
    frame_duration: Duration,
    index: u64,
}

impl MjpegAviSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut r = BufReader::new(file);
        let bad = || format!("{}: not an AVI file", path.display());
        ensure!(&read_fourcc(&mut r).with_context(bad)? == b"RIFF", "{}", bad());
        let _riff_len = read_u32(&mut r).with_context(bad)?;
        ensure!(&read_fourcc(&mut r).with_context(bad)? == b"AVI ", "{}", bad());

        let mut micros_per_frame = 100_000u32;
        let mut mjpeg = false;
        let mut movi: Option<(u64, u64)> = None;
        let mut pos = 12u64;
        // Walk the top-level chunks and the header lists; stop at `movi`.
        while pos + 8 <= file_len && movi.is_none() {
            r.seek(SeekFrom::Start(pos))?;
            let id = read_fourcc(&mut r)?;
            let len = read_u32(&mut r)? as u64;
            let body = pos + 8;
            if &id == b"LIST" {
                let kind = read_fourcc(&mut r)?;
                match &kind {
                    b"movi" => movi = Some((body + 4, (body + len).min(file_len))),
                    b"hdrl" | b"strl" => {
                        // Descend: continue with the list's first child.
                        pos = body + 4;
                        continue;
                    }
                    _ => {}
                }
            } else if &id == b"avih" && len >= 4 {
                micros_per_frame = read_u32(&mut r)?;
            } else if &id == b"strh" && len >= 8 {
                let kind = read_fourcc(&mut r)?;
                let handler = read_fourcc(&mut r)?;
                if &kind == b"vids" && handler.eq_ignore_ascii_case(b"MJPG") {
                    mjpeg = true;
                }
            } else if &id == b"strf" && len >= 20 {
                let mut header = [0u8; 20];
                r.read_exact(&mut header)?;
                if header[16..20].eq_ignore_ascii_case(b"MJPG") {
                    mjpeg = true;
                }
            }
            pos = body + len + (len & 1);
        }
        let Some((movi_start, movi_end)) = movi else { bail!("{}: AVI without a movi list", path.display()) };
        if !mjpeg {
            bail!("{}: AVI video is not Motion-JPEG; read it through ffmpeg instead", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader: r,
            next_chunk: movi_start,
            movi_end,
            frame_duration: Duration::from_micros(micros_per_frame.max(1) as u64),
            index: 0,
        })
    }
}

impl FrameSource for MjpegAviSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.next_chunk + 8 > self.movi_end {
                return Ok(None);
            }
            self.reader.seek(SeekFrom::Start(self.next_chunk))?;
            let id = read_fourcc(&mut self.reader)?;
            let len = read_u32(&mut self.reader)? as u64;
            let body = self.next_chunk + 8;
            if &id == b"LIST" {
                // `rec ` lists group chunks: step inside.
                self.next_chunk = body + 4;
                continue;
            }
            self.next_chunk = body + len + (len & 1);
            if body + len > self.movi_end {
                // A clip cut short by a crash or a full disk: the last frame is incomplete.
                return Ok(None);
            }
            if !(id[2..4] == *b"dc" || id[2..4] == *b"db") {
                continue; // audio, padding ('JUNK') and the like
            }
            let mut jpeg = vec![0u8; len as usize];
            self.reader.read_exact(&mut jpeg)?;
            let index = self.index;
            self.index += 1;
            let image = decode_rgb(&jpeg)
                .with_context(|| format!("{}: frame {index} is corrupt", self.path.display()))?;
            return Ok(Some(Frame { image, index, time: self.frame_duration * index as u32 }));
        }
    }

    fn is_live(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Writes `frames` as an MJPEG AVI at `fps` (for test clips and demos).
pub fn write_mjpeg_avi(path: &Path, frames: &[RgbImage], fps: u32, quality: u8) -> Result<()> {
    ensure!(!frames.is_empty(), "an AVI needs at least one frame");
    let (w, h) = frames[0].dimensions();
    let mut jpegs = Vec::with_capacity(frames.len());
    for f in frames {
        ensure!(f.dimensions() == (w, h), "all frames must be {w}x{h}");
        jpegs.push(crate::imaging::encode_jpeg(f, quality)?);
    }
    let mut out =
        BufWriter::new(File::create(path).with_context(|| format!("{}: cannot create", path.display()))?);
    let sizes = ChunkSizes::of(&jpegs);
    write_headers(&mut out, &sizes, (w, h), fps, jpegs.len() as u32)?;
    write_frames_and_index(&mut out, &sizes, &jpegs)?;
    out.flush()?;
    Ok(())
}

/// Lengths of the RIFF chunks an MJPEG AVI of these JPEGs is made of.
struct ChunkSizes {
    riff: u32,
    hdrl: u32,
    strl: u32,
    movi: u32,
    idx: u32,
    max_jpeg: u32,
}

/// RIFF chunks hold an even number of bytes.
fn padded(n: usize) -> usize {
    n + (n & 1)
}

impl ChunkSizes {
    fn of(jpegs: &[Vec<u8>]) -> Self {
        let movi = 4 + jpegs.iter().map(|j| 8 + padded(j.len())).sum::<usize>();
        let strl = 4 + (8 + 56) + (8 + 40);
        let hdrl = 4 + (8 + 56) + (8 + strl);
        let idx = 16 * jpegs.len();
        let riff = 4 + (8 + hdrl) + (8 + movi) + (8 + idx);
        let max_jpeg = jpegs.iter().map(|j| j.len()).max().unwrap_or(0) as u32;
        Self {
            riff: riff as u32,
            hdrl: hdrl as u32,
            strl: strl as u32,
            movi: movi as u32,
            idx: idx as u32,
            max_jpeg,
        }
    }
}

fn u32le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// `RIFF AVI `, then the `hdrl` list: the main header and one MJPEG video stream.
fn write_headers(
    out: &mut impl Write,
    sizes: &ChunkSizes,
    (w, h): (u32, u32),
    fps: u32,
    frames: u32,
) -> Result<()> {
    out.write_all(b"RIFF")?;
    out.write_all(&u32le(sizes.riff))?;
    out.write_all(b"AVI LIST")?;
    out.write_all(&u32le(sizes.hdrl))?;
    out.write_all(b"hdrlavih")?;
    out.write_all(&u32le(56))?;
    let max_jpeg = sizes.max_jpeg;
    for v in [1_000_000 / fps.max(1), max_jpeg * fps, 0, 0x10, frames, 0, 1, max_jpeg, w, h, 0, 0, 0, 0] {
        out.write_all(&u32le(v))?;
    }
    out.write_all(b"LIST")?;
    out.write_all(&u32le(sizes.strl))?;
    out.write_all(b"strlstrh")?;
    out.write_all(&u32le(56))?;
    out.write_all(b"vidsMJPG")?;
    for v in [0u32, 0, 0, 1, fps, 0, frames, max_jpeg, u32::MAX, 0] {
        out.write_all(&u32le(v))?;
    }
    out.write_all(&[0u8; 8])?; // rcFrame
    out.write_all(b"strf")?;
    out.write_all(&u32le(40))?;
    out.write_all(&u32le(40))?;
    out.write_all(&u32le(w))?;
    out.write_all(&u32le(h))?;
    out.write_all(&1u16.to_le_bytes())?;
    out.write_all(&24u16.to_le_bytes())?;
    out.write_all(b"MJPG")?;
    out.write_all(&u32le(w * h * 3))?;
    out.write_all(&[0u8; 16])?;
    Ok(())
}

/// The `movi` list (one `00dc` chunk per JPEG) and the `idx1` index of their offsets.
fn write_frames_and_index(out: &mut impl Write, sizes: &ChunkSizes, jpegs: &[Vec<u8>]) -> Result<()> {
    out.write_all(b"LIST")?;
    out.write_all(&u32le(sizes.movi))?;
    out.write_all(b"movi")?;
    let mut offsets = Vec::with_capacity(jpegs.len());
    let mut offset = 4u32;
    for j in jpegs {
        offsets.push(offset);
        out.write_all(b"00dc")?;
        out.write_all(&u32le(j.len() as u32))?;
        out.write_all(j)?;
        if j.len() & 1 == 1 {
            out.write_all(&[0])?;
        }
        offset += 8 + padded(j.len()) as u32;
    }
    out.write_all(b"idx1")?;
    out.write_all(&u32le(sizes.idx))?;
    for (j, off) in jpegs.iter().zip(offsets) {
        out.write_all(b"00dc")?;
        out.write_all(&u32le(0x10))?;
        out.write_all(&u32le(off))?;
        out.write_all(&u32le(j.len() as u32))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn written_clips_read_back_frame_by_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.avi");
        let frames: Vec<RgbImage> =
            (0..5).map(|i| RgbImage::from_pixel(32, 24, Rgb([i * 50, 100, 200 - i * 40]))).collect();
        write_mjpeg_avi(&path, &frames, 10, 90).unwrap();
        assert!(is_mjpeg_avi(&path));
        let mut source = MjpegAviSource::open(&path).unwrap();
        let mut seen = Vec::new();
        while let Some(frame) = source.next_frame().unwrap() {
            assert_eq!(frame.image.dimensions(), (32, 24));
            seen.push((frame.index, frame.time, frame.image.get_pixel(5, 5).0[0]));
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[3].1, Duration::from_millis(300));
        assert!((seen[4].2 as i32 - 200).abs() < 8, "pixel values survive JPEG: {seen:?}");
    }

    #[test]
    fn a_clip_cut_short_ends_cleanly_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.avi");
        let frames: Vec<RgbImage> = (0..4).map(|_| RgbImage::from_pixel(16, 16, Rgb([9, 9, 9]))).collect();
        write_mjpeg_avi(&path, &frames, 5, 80).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.avi");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let mut source = MjpegAviSource::open(&cut).unwrap();
        let mut n = 0;
        while source.next_frame().unwrap().is_some() {
            n += 1;
        }
        assert!((1..4).contains(&n), "complete frames before the cut are read: {n}");

        let junk = dir.path().join("junk.avi");
        std::fs::write(&junk, b"RIFF....not really").unwrap();
        assert!(MjpegAviSource::open(&junk).err().unwrap().to_string().contains("junk.avi"));
    }
}
