//! The counts log as an outbox. Every complete line of the log (each written and fsynced on
//! its own: `counts::CountsLog`) is a message for the broker; a durable cursor beside the log
//! says how far the broker has acknowledged. On start, and whenever the broker comes back,
//! every line after the cursor is sent again, oldest first, across daily rotated files: at
//! least once to the broker, and exactly once wherever lines are stored by their key.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::counts::{CountsLog, IntervalRecord, LogFormat, Rotation};
use crate::files::write_atomically;

/// A place in the log: a file (by name, in its folder) and a byte offset in it. Files sort by
/// name, which for daily files is their date.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub file: String,
    pub offset: u64,
}

/// One complete line of the log, ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct OutLine {
    /// Identifies the line for ever: device, file, byte offset and the interval's start (so a
    /// log file deleted and begun again never reuses a key).
    pub key: String,
    /// Where the next line begins: the cursor once this one is acknowledged.
    pub end: Position,
    /// The line's record as JSON, with `device`, `site` and `key` added.
    pub payload: String,
}

/// The files of a counts log, oldest first.
#[derive(Clone, Debug)]
pub struct LogFiles {
    base: PathBuf,
    rotation: Rotation,
}

impl LogFiles {
    pub fn new(base: &Path, rotation: Rotation) -> Self {
        Self { base: base.to_path_buf(), rotation }
    }

    pub fn dir(&self) -> PathBuf {
        match self.base.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Names of the log's files that exist, oldest first.
    pub fn names(&self) -> Vec<String> {
        let base_name = self.base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match self.rotation {
            Rotation::None => {
                if self.base.is_file() {
                    vec![base_name]
                } else {
                    Vec::new()
                }
            }
            Rotation::Daily => {
                let log = CountsLog::new(&self.base, LogFormat::Jsonl, Rotation::Daily);
                // `counts.jsonl` rotates into `counts-YYYY-MM-DD.jsonl`: the name around the date.
                let sample = log.file_for(&jiff::ZonedDateTime::now());
                let sample = sample.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let date_at = sample.len().saturating_sub(10 + self.extension().len());
                let (prefix, suffix) = (&sample[..date_at], self.extension());
                let mut names: Vec<String> = std::fs::read_dir(self.dir())
                    .map(|entries| {
                        entries
                            .filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .filter(|n| {
                                n.len() == prefix.len() + 10 + suffix.len()
                                    && n.starts_with(prefix)
                                    && n.ends_with(&suffix)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                names
            }
        }
    }

    fn extension(&self) -> String {
        self.base.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// Reads the log's complete lines from a position on.
pub struct Outbox {
    files: LogFiles,
    device: String,
    site: String,
    /// The first byte not yet read.
    next: Position,
}

/// Bytes read per line wanted (a counts line is about 250); a longer line makes the read grow.
const BYTES_PER_LINE: u64 = 1024;
/// At most this much of a file is read at a time.
const MAX_READ: u64 = 4 << 20;

impl Outbox {
    pub fn new(files: LogFiles, device: &str, site: &str) -> Self {
        Self { files, device: device.into(), site: site.into(), next: Position::default() }
    }

    /// Reads on from `at` (the acknowledged cursor after a reconnect).
    pub fn rewind(&mut self, at: Position) {
        self.next = at;
    }

    /// Up to `max` complete lines after the read position, moving on to later files when a
    /// file holds no more. A line that cannot be read as a record (a CSV header, a foreign
    /// line) is passed over; `warn` hears about foreign ones.
    pub fn next_lines(&mut self, max: usize, warn: &mut dyn FnMut(String)) -> Result<Vec<OutLine>> {
        let mut lines = Vec::new();
        let names = self.files.names();
        // The read position's file, or the first file after it.
        let mut index = names.iter().position(|n| *n >= self.next.file);
        while let Some(i) = index {
            if lines.len() >= max {
                break;
            }
            if names[i] != self.next.file {
                self.next = Position { file: names[i].clone(), offset: 0 };
            }
            let path = self.files.path(&names[i]);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if self.next.offset > len {
                // The file was replaced by a shorter one: its lines are new.
                self.next.offset = 0;
            }
            let read = self.read_file(&path, max - lines.len(), &mut lines, warn)?;
            if read == 0 {
                index = (i + 1 < names.len()).then_some(i + 1);
            }
        }
        Ok(lines)
    }

    /// Appends complete lines of `path` from the read position; returns how many bytes it
    /// moved on.
    fn read_file(
        &mut self,
        path: &Path,
        max: usize,
        out: &mut Vec<OutLine>,
        warn: &mut dyn FnMut(String),
    ) -> Result<u64> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // Enough for the lines wanted; more when not even one line fits (a line still being
        // written, or an unusually long one).
        let mut want = (max as u64 * BYTES_PER_LINE).min(MAX_READ);
        let chunk = loop {
            file.seek(SeekFrom::Start(self.next.offset))?;
            let mut chunk = Vec::new();
            (&mut file)
                .take(want)
                .read_to_end(&mut chunk)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            if chunk.contains(&b'\n') || (chunk.len() as u64) < want || want >= MAX_READ {
                break chunk;
            }
            want *= 4;
        };
        let mut moved = 0u64;
        for raw in chunk.split_inclusive(|b| *b == b'\n') {
            if out.len() >= max || raw.last() != Some(&b'\n') {
                break; // the rest waits (an incomplete line is still being written)
            }
            let at = self.next.offset + moved;
            moved += raw.len() as u64;
            let text = String::from_utf8_lossy(raw);
            match payload(text.trim(), &self.device, &self.site, &self.next.file, at) {
                Ok(Some((key, payload))) => out.push(OutLine {
                    key,
                    end: Position { file: self.next.file.clone(), offset: self.next.offset + moved },
                    payload,
                }),
                Ok(None) => {}
                Err(e) => warn(format!("{}: byte {at}: not a counts line, not sent ({e:#})", path.display())),
            }
        }
        self.next.offset += moved;
        Ok(moved)
    }

    /// Complete lines after `from` (the backlog the broker has not acknowledged).
    pub fn lines_after(&self, from: &Position) -> u64 {
        let mut count = 0;
        for name in self.files.names().into_iter().filter(|n| *n >= from.file) {
            let start = if name == from.file { from.offset } else { 0 };
            let Ok(mut file) = std::fs::File::open(self.files.path(&name)) else { continue };
            let mut bytes = Vec::new();
            // Only the part after the cursor: at the end of a long log, nothing.
            if file.seek(SeekFrom::Start(start)).is_ok() && file.read_to_end(&mut bytes).is_ok() {
                count += bytes.iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
        count
    }
}

/// The message for one log line: `(key, JSON payload)`, or `None` for a line that is no record
/// (a CSV header, a blank line).
pub fn payload(
    line: &str,
    device: &str,
    site: &str,
    file: &str,
    offset: u64,
) -> Result<Option<(String, String)>> {
    if line.is_empty() || line == IntervalRecord::csv_header() {
        return Ok(None);
    }
    let mut value: serde_json::Value = if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line)?;
        // Checked to be a record; sent as written (fields a newer board adds travel too).
        serde_json::from_value::<IntervalRecord>(value.clone())?;
        value
    } else {
        serde_json::to_value(IntervalRecord::from_csv_line(line)?)?
    };
    let start = value["start"].as_str().unwrap_or_default().to_string();
    let key = format!("{device}/{file}@{offset}/{start}");
    let object = value.as_object_mut().context("a record is a JSON object")?;
    object.insert("device".into(), device.into());
    object.insert("site".into(), site.into());
    object.insert("key".into(), key.clone().into());
    Ok(Some((key, value.to_string())))
}

/// What the broker has acknowledged, kept beside the log (`counts.jsonl.cursor`): written
/// whole through a temporary file, synced, renamed, the folder synced; never torn.
pub struct Cursor {
    path: PathBuf,
}

impl Cursor {
    pub fn beside(log_base: &Path) -> Self {
        let mut name = log_base.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".cursor");
        Self { path: log_base.with_file_name(name) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The acknowledged position; none yet is the start of the log. A cursor that cannot be
    /// read is an error: the caller resends from the start (duplicates, never loss).
    pub fn load(&self) -> Result<Position> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a cursor (corrupt)", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Position::default()),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", self.path.display())),
        }
    }

    pub fn save(&self, at: &Position) -> Result<()> {
        if self.path.is_dir() {
            bail!("{}: is a folder, not a cursor file", self.path.display());
        }
        let json = serde_json::to_vec(at)?;
        write_atomically(&self.path, |out| Ok(out.write_all(&json)?))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn line(start: &str, people: u32) -> String {
        format!(
            r#"{{"schema":3,"start":"{start}","end":"{start}","people":{people},"female":[0,0,0,{people},0,0],"male":[0,0,0,0,0,0],"frames":10,"dropped":0,"dwell":[0,0,0,0]}}"#
        )
    }

    #[test]
    fn complete_lines_are_read_in_order_across_daily_files_and_a_torn_line_waits() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("counts.jsonl");
        let day1 = dir.path().join("counts-2026-12-01.jsonl");
        let day2 = dir.path().join("counts-2026-12-02.jsonl");
        std::fs::write(
            &day1,
            format!("{}\n{}\n", line("2026-12-01T10:00:00Z", 1), line("2026-12-01T10:01:00Z", 2)),
        )
        .unwrap();
        std::fs::write(&day2, format!("{}\n{{\"start\":\"2026", line("2026-12-02T10:00:00Z", 3))).unwrap();
        std::fs::write(dir.path().join("other-2026-12-01.jsonl"), "x\n").unwrap();
        let mut outbox = Outbox::new(LogFiles::new(&base, Rotation::Daily), "pi-7", "shop-1");
        let mut warnings = Vec::new();
        let lines = outbox.next_lines(10, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(lines.len(), 3, "the torn last line is not sent: {lines:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
        let first: serde_json::Value = serde_json::from_str(&lines[0].payload).unwrap();
        assert_eq!(
            (first["device"].as_str(), first["site"].as_str(), first["people"].as_u64()),
            (Some("pi-7"), Some("shop-1"), Some(1))
        );
        assert_eq!(lines[0].key, "pi-7/counts-2026-12-01.jsonl@0/2026-12-01T10:00:00Z");
        assert_eq!(first["key"], lines[0].key.as_str());
        assert_eq!(lines[2].end.file, "counts-2026-12-02.jsonl");
        // The broker acknowledged the first line: after a reconnect, the rest again.
        outbox.rewind(lines[0].end.clone());
        let again = outbox.next_lines(10, &mut |_| {}).unwrap();
        assert_eq!(again, lines[1..].to_vec());
        assert_eq!(
            outbox.lines_after(&lines[0].end),
            2,
            "two complete lines; the torn one is not yet a line"
        );
        // The torn line completes: it is read next, with nothing before it again.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&day2)
            .unwrap()
            .write_all(b"-12-02T10:05:00Z\"}\n")
            .unwrap();
        let mut warned = Vec::new();
        assert!(outbox.next_lines(10, &mut |w| warned.push(w)).unwrap().is_empty());
        assert_eq!(warned.len(), 1, "a line that is no record is named and passed over: {warned:?}");
    }

    #[test]
    fn csv_logs_are_sent_as_json_records_without_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("counts.csv");
        let record: IntervalRecord = serde_json::from_str(&line("2026-12-01T10:00:00Z", 2)).unwrap();
        std::fs::write(&base, format!("{}\n{}\n", IntervalRecord::csv_header(), record.csv_line())).unwrap();
        let mut outbox = Outbox::new(LogFiles::new(&base, Rotation::None), "pi", "s");
        let lines = outbox.next_lines(10, &mut |w| panic!("{w}")).unwrap();
        assert_eq!(lines.len(), 1);
        let sent: serde_json::Value = serde_json::from_str(&lines[0].payload).unwrap();
        assert_eq!((sent["people"].as_u64(), sent["female"][3].as_f64()), (Some(2), Some(2.0)));
    }

    #[test]
    fn the_cursor_round_trips_and_a_corrupt_or_unwritable_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = Cursor::beside(&dir.path().join("counts.jsonl"));
        assert!(cursor.path().ends_with("counts.jsonl.cursor"));
        assert_eq!(cursor.load().unwrap(), Position::default(), "no cursor yet: from the start");
        let at = Position { file: "counts.jsonl".into(), offset: 1234 };
        cursor.save(&at).unwrap();
        assert_eq!(cursor.load().unwrap(), at);
        std::fs::write(cursor.path(), b"{\"file\":\"cou").unwrap();
        assert!(format!("{:#}", cursor.load().unwrap_err()).contains("corrupt"));
        std::fs::remove_file(cursor.path()).unwrap();
        std::fs::create_dir(cursor.path()).unwrap();
        assert!(cursor.save(&at).is_err(), "a cursor that cannot be written is an error, not a panic");
    }
}
