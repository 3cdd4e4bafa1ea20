//! The trainer's own files of numbers (the crop cache, teachers' targets) as safetensors: a
//! format the Python tools read with a library (`safetensors.safe_open`), with what the file
//! was made from kept as JSON in its metadata.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use safetensors::tensor::{Dtype, SafeTensors, View};

/// One tensor to write: its type, shape and raw little-endian bytes.
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl RawTensor<'_> {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> RawTensor<'static> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor { dtype: Dtype::F32, shape, data: Cow::Owned(data) }
    }

    pub fn u8(shape: Vec<usize>, bytes: &[u8]) -> RawTensor<'_> {
        RawTensor { dtype: Dtype::U8, shape, data: Cow::Borrowed(bytes) }
    }
}

impl View for &RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` and `metadata` to `path`, whole or not at all: the library writes a
/// uniquely named file beside it and renames it; the file and its folder are then synced, so
/// the rename survives power loss. (A file cut short all the same is refused by [`TensorFile`]
/// and made again: these files are caches.)
pub fn save(path: &Path, tensors: &[(&str, RawTensor)], metadata: HashMap<String, String>) -> Result<()> {
    let views: Vec<(&str, &RawTensor)> = tensors.iter().map(|(name, t)| (*name, t)).collect();
    safetensors::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: cannot sync", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(folder) = std::fs::File::open(dir)
    {
        let _ = folder.sync_all(); // best effort: some file systems cannot sync a folder
    }
    Ok(())
}

/// A safetensors file read whole, checked (header, offsets and sizes) on opening.
pub struct TensorFile {
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let metadata = {
            let parsed = SafeTensors::deserialize(&bytes)
                .with_context(|| format!("{}: not a whole safetensors file", path.display()))?;
            let (_, header) = SafeTensors::read_metadata(&bytes)?;
            drop(parsed);
            header.metadata().clone().unwrap_or_default()
        };
        Ok(TensorFile { bytes, metadata })
    }

    /// A metadata entry.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).with_context(|| format!("no {key:?} in its metadata"))
    }

    /// The bytes of tensor `name`, checked to be of `dtype` and `shape`.
    pub fn bytes(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let file = SafeTensors::deserialize(&self.bytes)?;
        let view = file.tensor(name).with_context(|| format!("no tensor {name:?}"))?;
        ensure!(
            view.dtype() == dtype && view.shape() == shape,
            "tensor {name:?} is {:?} {:?}, expected {dtype:?} {shape:?}",
            view.dtype(),
            view.shape()
        );
        let start = view.data().as_ptr() as usize - self.bytes.as_ptr() as usize;
        Ok(&self.bytes[start..start + view.data().len()])
    }

    /// Tensor `name` as f32 values, checked as [`TensorFile::bytes`] does.
    pub fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let bytes = self.bytes(name, Dtype::F32, shape)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }

    /// Tensor `name`'s bytes, the rest of the file let go (a large tensor is not copied).
    pub fn into_bytes(mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<Vec<u8>> {
        let (start, len) = {
            let bytes = self.bytes(name, dtype, shape)?;
            (bytes.as_ptr() as usize - self.bytes.as_ptr() as usize, bytes.len())
        };
        self.bytes.truncate(start + len);
        self.bytes.drain(..start);
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_and_metadata_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let pixels: Vec<u8> = (0..24).collect();
        let meta = HashMap::from([("faceage.what".to_string(), "{\"crops\":2}".to_string())]);
        let tensors = [
            ("crops", RawTensor::u8(vec![2, 2, 2, 3], &pixels)),
            ("female", RawTensor::f32(vec![2], &[0.25, 0.75])),
        ];
        save(&path, &tensors, meta).unwrap();
        let file = TensorFile::open(&path).unwrap();
        assert_eq!(file.meta("faceage.what").unwrap(), "{\"crops\":2}");
        assert!(file.meta("other").is_err());
        assert_eq!(file.f32s("female", &[2]).unwrap(), vec![0.25, 0.75]);
        let wrong = file.bytes("crops", Dtype::U8, &[3, 2, 2, 3]).unwrap_err().to_string();
        assert!(wrong.contains("expected U8 [3, 2, 2, 3]"), "{wrong}");
        assert_eq!(file.into_bytes("crops", Dtype::U8, &[2, 2, 2, 3]).unwrap(), pixels);

        // A file cut short (power lost before the data reached the disk) is not trusted.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        let error = format!("{:#}", TensorFile::open(&path).err().unwrap());
        assert!(error.contains("t.safetensors") && error.contains("not a whole safetensors file"), "{error}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
    }
}
