//! `faceage collect`: subscribes to every board's counts and keeps one counts log per board
//! (`DIR/<site>/<device>.jsonl`), each line once however often the broker delivers it. A line
//! is written and fsynced before its delivery is acknowledged, and the session is persistent:
//! what arrives while the collector is down is delivered when it comes back.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::{Client, Event, Packet, Publish, QoS, RecvTimeoutError};

use super::broker::{Broker, explain};
use super::publisher::CONNECTING;
use super::{ALL_COUNTS, check_name};

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectStats {
    pub written: u64,
    /// Deliveries of a line already kept (sent again after a lost acknowledgement).
    pub duplicates: u64,
    /// Messages that were not counts lines (named on stderr).
    pub rejected: u64,
}

/// The per-device logs under one folder, with the keys each already holds.
pub struct Store {
    dir: PathBuf,
    files: HashMap<PathBuf, (File, HashSet<String>)>,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), files: HashMap::new() }
    }

    pub fn path_of(&self, site: &str, device: &str) -> PathBuf {
        self.dir.join(site).join(format!("{device}.jsonl"))
    }

    /// Keeps `payload` (a counts line from `site`/`device`) unless its key is already there.
    /// `Ok(Ok(new))`: kept (or already there), written and fsynced before it returns;
    /// `Ok(Err(why))`: not a counts line of that device, refused for good; `Err`: the disk
    /// failed, and the line must not be acknowledged.
    pub fn keep(&mut self, site: &str, device: &str, payload: &[u8]) -> Result<Result<bool, String>> {
        let (key, value) = match parse(site, device, payload) {
            Ok(parsed) => parsed,
            Err(e) => return Ok(Err(format!("{e:#}"))),
        };
        let path = self.path_of(site, device);
        if !self.files.contains_key(&path) {
            let opened = open_store_file(&path)?;
            self.files.insert(path.clone(), opened);
        }
        let (file, keys) = self.files.get_mut(&path).expect("opened above");
        if keys.contains(&key) {
            return Ok(Ok(false));
        }
        let mut line = serde_json::to_vec(&value)?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("{}: cannot write", path.display()))?;
        keys.insert(key);
        Ok(Ok(true))
    }
}

/// A counts line of `site`/`device`: its key and its JSON.
fn parse(site: &str, device: &str, payload: &[u8]) -> Result<(String, serde_json::Value)> {
    check_name("site", site)?;
    check_name("device", device)?;
    let value: serde_json::Value = serde_json::from_slice(payload).context("not JSON")?;
    let key = value["key"].as_str().context("no \"key\"")?.to_string();
    serde_json::from_value::<crate::counts::IntervalRecord>(value.clone()).context("not a counts line")?;
    if value["device"] != device || value["site"] != site {
        bail!("its device and site ({}, {}) are not its topic's", value["device"], value["site"]);
    }
    Ok((key, value))
}

/// Opens a device's log for appending (cutting a torn last line) with the keys it holds.
fn open_store_file(path: &Path) -> Result<(File, HashSet<String>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    if path.exists() {
        crate::counts::repair_torn_tail(path)?;
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let keys = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for writing", path.display()))?;
    Ok((file, keys))
}

/// `faceage/v1/<site>/<device>/counts` -> (site, device).
fn site_and_device(topic: &str) -> Option<(&str, &str)> {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("faceage"), Some("v1"), Some(site), Some(device), Some("counts"), None) => Some((site, device)),
        _ => None,
    }
}

/// Collects until `stop` is set. `client_id` names the persistent session (one per collector).
pub fn collect(broker: &Broker, client_id: &str, dir: &Path, stop: &AtomicBool) -> Result<CollectStats> {
    let mut options = broker.options(client_id)?;
    options.set_manual_acks(true);
    let (client, mut connection) = Client::new(options, 64);
    let mut store = Store::new(dir);
    let mut stats = CollectStats::default();
    let mut attempt = 0;
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) {
        // While connecting, the client's own timeout (see `publisher::CONNECTING`).
        let wait = if connected { Duration::from_millis(200) } else { CONNECTING };
        match connection.recv_timeout(wait) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                attempt = 0;
                connected = true;
                eprintln!("collect: connected to {broker}; subscribed to {ALL_COUNTS}");
                client.try_subscribe(ALL_COUNTS, QoS::AtLeastOnce)?;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                keep(&mut store, &publish, &mut stats)?;
                // Acknowledged only once it is on disk (or known, or refused for good).
                client.try_ack(&publish)?;
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => {
                connected = false;
                let wait = crate::source::backoff(attempt);
                attempt += 1;
                eprintln!("collect: {}; retrying in {:.1} s", explain(broker, &e), wait.as_secs_f32());
                let until = std::time::Instant::now() + wait;
                while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = client.try_disconnect();
    let _ = connection.recv_timeout(Duration::from_millis(500));
    Ok(stats)
}

fn keep(store: &mut Store, publish: &Publish, stats: &mut CollectStats) -> Result<()> {
    let Some((site, device)) = site_and_device(&publish.topic) else {
        stats.rejected += 1;
        eprintln!("collect: {}: not a counts topic; ignored", publish.topic);
        return Ok(());
    };
    // A disk that cannot be written is an error before the acknowledgement: the broker keeps
    // the line for the next collector.
    match store.keep(site, device, &publish.payload)? {
        Ok(true) => stats.written += 1,
        Ok(false) => stats.duplicates += 1,
        Err(why) => {
            stats.rejected += 1;
            eprintln!("collect: a message on {}: {why}; ignored", publish.topic);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(key: &str, people: u32) -> Vec<u8> {
        format!(
            r#"{{"schema":3,"start":"2026-12-03T10:00:00Z","end":"2026-12-03T10:01:00Z","people":{people},"female":[0,0,0,{people},0,0],"male":[0,0,0,0,0,0],"frames":5,"dropped":0,"dwell":[0,0,0,0],"device":"pi","site":"shop","key":"{key}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn each_line_is_kept_once_even_across_restarts_and_foreign_messages_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(dir.path());
        let keep =
            |store: &mut Store, site: &str, device: &str, p: &[u8]| store.keep(site, device, p).unwrap();
        assert_eq!(keep(&mut store, "shop", "pi", &payload("pi/counts.jsonl@0/x", 2)), Ok(true));
        assert_eq!(
            keep(&mut store, "shop", "pi", &payload("pi/counts.jsonl@0/x", 2)),
            Ok(false),
            "a duplicate"
        );
        assert_eq!(keep(&mut store, "shop", "pi", &payload("pi/counts.jsonl@300/y", 1)), Ok(true));
        let path = store.path_of("shop", "pi");
        assert!(path.ends_with("shop/pi.jsonl"));
        // A new collector on the same folder knows what is there.
        let mut again = Store::new(dir.path());
        assert_eq!(keep(&mut again, "shop", "pi", &payload("pi/counts.jsonl@300/y", 1)), Ok(false));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);

        let refused = |r: Result<bool, String>| r.unwrap_err();
        assert!(refused(keep(&mut again, "shop", "other", &payload("k", 1))).contains("not its topic's"));
        assert!(refused(keep(&mut again, "shop", "pi", b"{\"key\":\"z\"}")).contains("not a counts line"));
        assert!(
            refused(keep(&mut again, "..", "pi", &payload("k", 1))).contains("topic level"),
            "no folder tricks"
        );
        assert_eq!(site_and_device("faceage/v1/shop/pi/counts"), Some(("shop", "pi")));
        assert_eq!(site_and_device("faceage/v1/shop/pi/status"), None);
    }
}
