//! `faceage run --mqtt`: a thread that sends every complete counts-log line to the broker
//! (QoS 1) and moves the durable cursor as the broker acknowledges them. It reads the log file
//! itself, so counting never waits for the network: a broker that is down only grows the
//! backlog, sent oldest first when it comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use rumqttc::{Client, Connection, Event, LastWill, Outgoing, Packet, QoS, RecvTimeoutError};

use super::broker::{Broker, explain};
use super::outbox::{Cursor, LogFiles, Outbox, Position};
use super::{counts_topic, status_topic};

/// Lines sent and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// How often the thread looks at the log for new lines (and at the stop flag).
const TICK: Duration = Duration::from_millis(200);
/// The cursor is written at most this often while lines are in flight.
const CURSOR_EVERY: Duration = Duration::from_millis(250);
/// Longer than the client's connection timeout (5 s): see [`Session::wait`].
pub const CONNECTING: Duration = Duration::from_secs(6);

#[derive(Clone, Debug)]
pub struct PublisherConfig {
    pub broker: Broker,
    pub site: String,
    pub device: String,
    /// The counts log (its base name: `counts.jsonl`, daily files or not), and the cursor
    /// beside it.
    pub files: LogFiles,
    pub log: std::path::PathBuf,
    /// Home Assistant discovery configs for the day's people and the people in view.
    pub ha_discovery: bool,
}

/// What the publisher has done, for `/metrics` and the log.
#[derive(Clone, Debug, Default)]
pub struct PublisherStatus {
    pub connected: bool,
    /// Complete log lines the broker has not acknowledged.
    pub backlog: u64,
    pub last_ack: Option<Instant>,
    pub acknowledged: u64,
}

/// Numbers the publisher sends as Home Assistant sensor states.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LiveState {
    pub people_today: u32,
    pub people_in_view: u32,
}

/// What the run last said, from which the state is read when it is sent: a source that
/// stalls (a camera unplugged, a stream that stops) no longer shows its last people in view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveFeed {
    pub people_today: u32,
    /// When a face was last found on each counted track.
    pub faces_found: Vec<Instant>,
}

impl LiveFeed {
    /// The state at `now`: in view are the people whose face was found within
    /// [`crate::figures::InView::RECENT`] of it, as the kiosk lists them.
    pub fn state(&self, now: Instant) -> LiveState {
        let in_view = self.faces_found.iter().filter(|&&t| crate::figures::recent_instant(t, now)).count();
        LiveState { people_today: self.people_today, people_in_view: in_view as u32 }
    }
}

pub struct Publisher {
    stop: Arc<AtomicBool>,
    /// Set by [`Publisher::finish`]: send what is in the log, then stop.
    drain: Arc<AtomicBool>,
    status: Arc<Mutex<PublisherStatus>>,
    state: Arc<Mutex<Option<LiveFeed>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Starts the publishing thread; it connects (and reconnects, with back-off) by itself.
    pub fn start(config: PublisherConfig) -> Result<Publisher> {
        let stop = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(PublisherStatus::default()));
        let state = Arc::new(Mutex::new(None));
        let (s, d, st, ls) = (Arc::clone(&stop), Arc::clone(&drain), Arc::clone(&status), Arc::clone(&state));
        // Made here, so a broker URL or CA file that cannot be used is an error at start.
        let session = Session::new(config, st, ls)?;
        let thread =
            std::thread::Builder::new().name("mqtt-publisher".into()).spawn(move || session.run(&s, &d))?;
        Ok(Publisher { stop, drain, status, state, thread: Some(thread) })
    }

    pub fn status(&self) -> PublisherStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest numbers for Home Assistant (their state is sent when it changes).
    pub fn set_state(&self, state: LiveFeed) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    /// Sends what the log holds (while connected, for up to `grace`: the run's last line
    /// too), then says `offline`, disconnects and ends the thread. Lines not acknowledged by
    /// then are sent by the next run.
    pub fn finish(mut self, grace: Duration) {
        self.drain.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A line sent and waiting for its acknowledgement.
struct Sent {
    end: Position,
    acked: bool,
}

/// One publish request not yet written to the network: a counts line (its index in `sent`,
/// counted from `first_seq`) or anything else (status, discovery).
type Queued = Option<u64>;

struct Session {
    config: PublisherConfig,
    client: Client,
    connection: Connection,
    outbox: Outbox,
    cursor: Cursor,
    /// What the broker has acknowledged, in order.
    acked: Position,
    /// Acknowledged but not yet in the cursor file.
    cursor_dirty: bool,
    sent: VecDeque<Sent>,
    first_seq: u64,
    queued: VecDeque<Queued>,
    pkids: HashMap<u16, u64>,
    connected: bool,
    attempt: u32,
    status: Arc<Mutex<PublisherStatus>>,
    state: Arc<Mutex<Option<LiveFeed>>>,
    last_state: Option<LiveState>,
    /// The last cursor-write error reported (each distinct one once).
    cursor_error: Option<String>,
    cursor_saved: Option<Instant>,
    backlog_checked: Option<Instant>,
}

impl Session {
    fn new(
        config: PublisherConfig,
        status: Arc<Mutex<PublisherStatus>>,
        state: Arc<Mutex<Option<LiveFeed>>>,
    ) -> Result<Session> {
        let mut options = config.broker.options(&format!("faceage-{}-{}", config.site, config.device))?;
        options.set_inflight(WINDOW as u16);
        options.set_last_will(LastWill::new(
            status_topic(&config.site, &config.device),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let (client, connection) = Client::new(options, 4 * WINDOW);
        let cursor = Cursor::beside(&config.log);
        let acked = match cursor.load() {
            Ok(at) => at,
            Err(e) => {
                // Duplicates, never loss: the collector keeps one copy of each line.
                eprintln!("mqtt: {e:#}; sending the whole log again from its start");
                Position::default()
            }
        };
        let mut outbox = Outbox::new(config.files.clone(), &config.device, &config.site);
        outbox.rewind(acked.clone());
        Ok(Session {
            config,
            client,
            connection,
            outbox,
            cursor,
            acked,
            cursor_dirty: false,
            sent: VecDeque::new(),
            first_seq: 0,
            queued: VecDeque::new(),
            pkids: HashMap::new(),
            connected: false,
            attempt: 0,
            status,
            state,
            last_state: None,
            cursor_error: None,
            cursor_saved: None,
            backlog_checked: None,
        })
    }

    fn run(mut self, stop: &AtomicBool, drain: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if self.connected {
                let sent_any = self.send_lines();
                self.send_state();
                if drain.load(Ordering::Relaxed)
                    && !sent_any
                    && self.sent.is_empty()
                    && self.queued.is_empty()
                {
                    break; // everything in the log is acknowledged
                }
            } else if drain.load(Ordering::Relaxed) && self.attempt > 0 {
                break; // no broker: the next run sends the backlog
            }
            match self.connection.recv_timeout(self.wait()) {
                Ok(Ok(event)) => self.event(event),
                Ok(Err(e)) => self.lost(&explain(&self.config.broker, &e), stop),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.save_cursor();
            self.report();
        }
        self.goodbye();
    }

    /// How long to wait for the next event. A wait that runs out cancels what the client is
    /// doing, which is harmless between packets but starts a connection attempt over: while
    /// connecting, wait out the client's own connection timeout (5 s), or a broker more than a
    /// few round trips away would never be reached.
    fn wait(&self) -> Duration {
        if self.connected { TICK } else { CONNECTING }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.connected = true;
                self.attempt = 0;
                // Everything after the cursor goes again, oldest first.
                self.forget_sent();
                let backlog = self.outbox.lines_after(&self.acked);
                eprintln!("mqtt: connected to {}; {backlog} line(s) to send", self.config.broker);
                self.publish_other(
                    &status_topic(&self.config.site, &self.config.device),
                    "online".into(),
                    true,
                );
                if self.config.ha_discovery {
                    self.publish_discovery();
                }
                self.last_state = None;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(seq)) = self.queued.pop_front() {
                    self.pkids.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.pkids.remove(&ack.pkid)
                    && let Some(sent) =
                        seq.checked_sub(self.first_seq).and_then(|i| self.sent.get_mut(i as usize))
                {
                    sent.acked = true;
                }
                // The cursor moves over the acknowledged lines at the front, in order.
                while self.sent.front().is_some_and(|s| s.acked) {
                    let sent = self.sent.pop_front().expect("front exists");
                    self.first_seq += 1;
                    self.acked = sent.end;
                    self.cursor_dirty = true;
                    let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    status.last_ack = Some(Instant::now());
                    status.acknowledged += 1;
                }
            }
            _ => {}
        }
    }

    /// The connection failed or was lost: what was sent and not acknowledged goes again after
    /// the next connection, from the cursor (the client's own resend queue is dropped, so every
    /// line is sent, and matched to its acknowledgement, by this session alone).
    fn lost(&mut self, why: &str, stop: &AtomicBool) {
        let was = std::mem::replace(&mut self.connected, false);
        self.connection.eventloop.pending.clear();
        self.forget_sent();
        let wait = crate::source::backoff(self.attempt);
        self.attempt += 1;
        let backlog = self.outbox.lines_after(&self.acked);
        let last_ack = match self.status.lock().unwrap_or_else(|p| p.into_inner()).last_ack {
            Some(at) => format!("last acknowledgement {:.0} s ago", at.elapsed().as_secs_f64()),
            None => "nothing acknowledged yet".into(),
        };
        eprintln!(
            "mqtt: {why}{}; {backlog} line(s) waiting, {last_ack}; retrying in {:.1} s",
            if was { " (connection lost)" } else { "" },
            wait.as_secs_f32()
        );
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn forget_sent(&mut self) {
        self.first_seq += self.sent.len() as u64;
        self.sent.clear();
        self.queued.clear();
        self.pkids.clear();
        self.outbox.rewind(self.acked.clone());
    }

    /// Publishes the lines that fit the window; returns whether there were any. The log is
    /// read when half the window is free (a read per line would cost more than the sending).
    fn send_lines(&mut self) -> bool {
        if self.sent.len() > WINDOW / 2 {
            return true;
        }
        let mut warn = |w: String| eprintln!("mqtt: {w}");
        let lines = match self.outbox.next_lines(WINDOW - self.sent.len(), &mut warn) {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("mqtt: counts log: {e:#}");
                return false;
            }
        };
        let any = !lines.is_empty();
        let topic = counts_topic(&self.config.site, &self.config.device);
        for line in lines {
            if self.client.try_publish(&topic, QoS::AtLeastOnce, false, line.payload.into_bytes()).is_err() {
                // The request queue is full: read this line again next time.
                self.outbox.rewind(self.sent.back().map_or(self.acked.clone(), |s| s.end.clone()));
                return true;
            }
            self.queued.push_back(Some(self.first_seq + self.sent.len() as u64));
            self.sent.push_back(Sent { end: line.end, acked: false });
        }
        any
    }

    fn publish_other(&mut self, topic: &str, payload: String, retain: bool) {
        if self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload.into_bytes()).is_ok() {
            self.queued.push_back(None);
        }
    }

    fn state_topic(&self) -> String {
        format!("faceage/v1/{}/{}/state", self.config.site, self.config.device)
    }

    /// Retained Home Assistant discovery configs: two sensors reading the state topic.
    fn publish_discovery(&mut self) {
        let (site, device) = (self.config.site.clone(), self.config.device.clone());
        let object = format!("faceage_{site}_{device}").replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        for (id, name, field, unit) in [
            ("people_today", "People counted today", "people_today", "people"),
            ("people_in_view", "People in view", "people_in_view", "people"),
        ] {
            let config = serde_json::json!({
                "name": name,
                "unique_id": format!("{object}_{id}"),
                "state_topic": self.state_topic(),
                "value_template": format!("{{{{ value_json.{field} }}}}"),
                "unit_of_measurement": unit,
                "state_class": if id == "people_today" { "total_increasing" } else { "measurement" },
                "availability_topic": status_topic(&site, &device),
                "device": { "identifiers": [object.clone()], "name": format!("faceage {site} {device}"), "manufacturer": "faceage" },
            });
            self.publish_other(
                &format!("homeassistant/sensor/{object}/{id}/config"),
                config.to_string(),
                true,
            );
        }
    }

    fn send_state(&mut self) {
        if !self.config.ha_discovery {
            return;
        }
        let state =
            self.state.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.state(Instant::now()));
        if let Some(state) = state
            && self.last_state.as_ref() != Some(&state)
        {
            let topic = self.state_topic();
            self.publish_other(&topic, serde_json::to_string(&state).unwrap_or_default(), true);
            self.last_state = Some(state);
        }
    }

    /// Writes the cursor when it moved: at once when nothing is in flight, else at most every
    /// [`CURSOR_EVERY`] (each write is two fsyncs; a crash in between only sends a few
    /// acknowledged lines again).
    fn save_cursor(&mut self) {
        let due = self.sent.is_empty() || self.cursor_saved.is_none_or(|t| t.elapsed() >= CURSOR_EVERY);
        if !self.cursor_dirty || !due {
            return;
        }
        self.cursor_saved = Some(Instant::now());
        match self.cursor.save(&self.acked) {
            Ok(()) => {
                self.cursor_dirty = false;
                if self.cursor_error.take().is_some() {
                    eprintln!("mqtt: cursor {} written again", self.cursor.path().display());
                }
            }
            Err(e) => {
                // Kept in memory and retried: at worst, lines are sent twice after a restart.
                let message = format!("{e:#}");
                if self.cursor_error.as_ref() != Some(&message) {
                    eprintln!("mqtt: cursor: {message}; retrying (lines may be sent again after a restart)");
                    self.cursor_error = Some(message);
                }
            }
        }
    }

    fn report(&mut self) {
        // Counting the backlog reads the unsent part of the log: once a second is plenty.
        if self.backlog_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.backlog_checked = Some(Instant::now());
        let backlog = self.outbox.lines_after(&self.acked);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.connected = self.connected;
        status.backlog = backlog;
    }

    /// A clean stop: `offline` (retained) and a disconnect, the cursor written.
    fn goodbye(&mut self) {
        if self.connected {
            let topic = status_topic(&self.config.site, &self.config.device);
            self.publish_other(&topic, "offline".into(), true);
            let _ = self.client.try_disconnect();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                match self.connection.recv_timeout(Duration::from_millis(100)) {
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                    Ok(Ok(event)) => self.event(event),
                    Err(_) => break,
                }
            }
        }
        self.save_cursor();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_in_view_are_read_when_sent_so_a_stalled_source_empties() {
        let t0 = Instant::now();
        let feed = LiveFeed { people_today: 9, faces_found: vec![t0, t0 + Duration::from_millis(600)] };
        assert_eq!(
            feed.state(t0 + Duration::from_millis(700)),
            LiveState { people_today: 9, people_in_view: 2 }
        );
        assert_eq!(
            feed.state(t0 + Duration::from_millis(1300)).people_in_view,
            1,
            "the first face is 1.3 s old"
        );
        // No frame since: a second after the last face nobody is in view, the day's total stays.
        assert_eq!(feed.state(t0 + Duration::from_secs(5)), LiveState { people_today: 9, people_in_view: 0 });
    }
}
