//! A fleet of boards: the counts log as an outbox to an MQTT broker (`run --mqtt`), the
//! collector that keeps one log per board (`faceage collect`), and health on `/metrics`.
//!
//! Topics: `faceage/v1/<site>/<device>/counts` (QoS 1, one message per counts-log line, its
//! record plus `device`, `site` and `key`) and `faceage/v1/<site>/<device>/status` (retained
//! `online`, and `offline` as the last will).

#[cfg(feature = "mqtt")]
pub mod broker;
#[cfg(feature = "mqtt")]
pub mod collect;
#[cfg(feature = "mqtt")]
pub mod metrics;
pub mod outbox;
#[cfg(feature = "mqtt")]
pub mod publisher;

/// The topic of a device's counts.
pub fn counts_topic(site: &str, device: &str) -> String {
    format!("faceage/v1/{site}/{device}/counts")
}

/// The topic of a device's retained status (`online` / `offline`).
pub fn status_topic(site: &str, device: &str) -> String {
    format!("faceage/v1/{site}/{device}/status")
}

/// What every collector subscribes to.
pub const ALL_COUNTS: &str = "faceage/v1/+/+/counts";

/// A site or device name as a topic level: no `/`, `+`, `#` or control characters.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name != "."
            && name != ".."
            && !name.chars().any(|c| matches!(c, '/' | '+' | '#') || c.is_control()),
        "{what} {name:?}: must be non-empty, not . or .., without '/', '+', '#' (it is an MQTT topic level and a folder)"
    );
    Ok(())
}

/// This board's default device id: the machine id, else the host name.
pub fn default_device_id() -> String {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            let id = id.trim();
            if !id.is_empty() {
                return id.chars().take(12).collect();
            }
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "faceage".into())
}
