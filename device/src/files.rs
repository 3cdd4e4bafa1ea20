//! Writing a file whole or not at all: caches, teacher targets and model files on the
//! workstation, state files on the board.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `path` through a uniquely named temporary file beside it: filled by `fill`, synced
/// to disk, renamed over `path`, and the folder synced so the rename survives power loss. A
/// killed process leaves the old file (or none), never half of one, and two processes writing
/// the same path never write into each other's temporary file.
pub fn write_atomically(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    // tempfile makes its files readable by their owner only (0600); the file this one becomes
    // gets the permissions a plain create gives (0666 less the umask), as `cp` or `cargo`
    // would: a model file exported here is read by the board's service user.
    #[cfg(unix)]
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(without_temporary_name)
        .with_context(|| format!("{}: cannot create a file", dir.display()))?;
    let written = (|| -> Result<()> {
        let mut out = BufWriter::new(tmp.as_file_mut());
        fill(&mut out)?;
        out.flush()?;
        drop(out);
        tmp.as_file().sync_all()?;
        Ok(())
    })();
    written.with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("{}: cannot write", path.display()))?;
    // Best effort: some file systems cannot sync a folder, and the data itself is safe.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// tempfile's errors name the random temporary file (`... at path "..."`), so the same
/// failure reads differently every time, and a caller that reports each distinct error once
/// would report it on every retry. The caller names the folder; only the cause is kept (the
/// unit test below notices if tempfile words its errors otherwise).
fn without_temporary_name(e: std::io::Error) -> std::io::Error {
    match e.to_string().split_once(" at path ") {
        Some((cause, _)) => std::io::Error::new(e.kind(), cause.to_string()),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_failed_write_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.bin");
        write_atomically(&path, |w| Ok(w.write_all(b"first")?)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let failed = write_atomically(&path, |w| {
            w.write_all(b"half of the sec")?;
            anyhow::bail!("disk full")
        });
        let message = format!("{:#}", failed.unwrap_err());
        assert!(message.contains("cache.bin") && message.contains("disk full"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first", "the old file is untouched");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("cache.bin")], "no temporary file is left behind");
        write_atomically(&path, |w| Ok(w.write_all(b"second")?)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_gets_the_permissions_of_a_plain_create() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let path = dir.path().join("model.onnx");
        write_atomically(&path, |w| Ok(w.write_all(b"x")?)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain), "{:o} against {:o}", mode(&path), mode(&plain));
    }

    #[test]
    fn a_folder_that_is_not_there_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("model.onnx");
        let message = format!("{:#}", write_atomically(&path, |_| Ok(())).unwrap_err());
        assert!(message.contains("missing"), "{message}");
        // The same failure reads the same every time: the random temporary name is left out.
        let again = format!("{:#}", write_atomically(&path, |_| Ok(())).unwrap_err());
        assert_eq!(message, again);
        assert!(!message.contains(".partial") && message.contains("os error 2"), "{message}");
    }
}
