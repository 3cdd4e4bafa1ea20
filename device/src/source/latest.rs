//! Reading a live source on its own thread so the newest frame always wins: when inference
//! is slower than the camera, older frames are dropped (and counted), and latency stays at
//! one frame. A source that fails (camera unplugged, stream down) is reopened with back-off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

use super::{Frame, FrameSource};
use crate::newest::{Newest, Taken};

struct Shared {
    /// Closed when the reader gave up or was stopped: no more frames will come.
    frames: Newest<Frame>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

/// What [`LatestFrame::next`] found.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// Nothing new within the timeout.
    Timeout,
    /// The reader stopped: no more frames will come.
    Closed,
}

impl Next {
    pub fn frame(self) -> Option<Frame> {
        match self {
            Next::Frame(f) => Some(f),
            _ => None,
        }
    }
}

pub struct LatestFrame {
    shared: Arc<Shared>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Back-off between attempts to reopen a failed live source.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((500u64 << attempt.min(6)).min(30_000))
}

impl LatestFrame {
    /// Starts a reader thread that opens sources with `open` (again after each failure, with
    /// back-off) and keeps only the newest frame. Problems are reported through `log`.
    pub fn spawn<F, L>(open: F, log: L) -> Self
    where
        F: FnMut() -> Result<Box<dyn FrameSource>> + Send + 'static,
        L: Fn(String) + Send + 'static,
    {
        Self::start(open, log, None)
    }

    /// Like [`LatestFrame::spawn`], but the first open must succeed: a camera that is not
    /// there at start is an error for the caller, not something to wait for.
    pub fn spawn_checked<F, L>(open: F, log: L) -> Result<Self>
    where
        F: FnMut() -> Result<Box<dyn FrameSource>> + Send + 'static,
        L: Fn(String) + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut latest = Self::start(open, log, Some(tx));
        match rx.recv() {
            Ok(Ok(())) => Ok(latest),
            Ok(Err(e)) => {
                latest.stop();
                Err(e)
            }
            Err(_) => anyhow::bail!("frame reader ended before opening its source"),
        }
    }

    fn start<F, L>(mut open: F, log: L, first: Option<std::sync::mpsc::Sender<Result<()>>>) -> Self
    where
        F: FnMut() -> Result<Box<dyn FrameSource>> + Send + 'static,
        L: Fn(String) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            frames: Newest::new(),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("frame-reader".into())
            .spawn(move || {
                let mut attempt = 0u32;
                let mut first = first;
                while !s.stop.load(Ordering::Relaxed) {
                    let opened = open();
                    if let Some(tx) = first.take() {
                        let failed = opened.is_err();
                        let _ = tx.send(opened.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("{e:#}")));
                        if failed {
                            break;
                        }
                    }
                    let mut source = match opened {
                        Ok(source) => source,
                        Err(e) => {
                            let wait = backoff(attempt);
                            log(format!("{e:#}; retrying in {:.1} s", wait.as_secs_f32()));
                            attempt += 1;
                            sleep_unless_stopped(&s.stop, wait);
                            continue;
                        }
                    };
                    if attempt > 0 {
                        log(format!("{}: frames again", source.describe()));
                    }
                    loop {
                        if s.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match source.next_frame() {
                            Ok(Some(frame)) => {
                                attempt = 0;
                                if s.frames.put(frame) {
                                    s.dropped.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(None) if !source.is_live() => {
                                // A file read in real time has ended: so has the stream.
                                s.frames.close();
                                return;
                            }
                            failed => {
                                let why = match failed {
                                    Err(e) => format!("{e:#}"),
                                    _ => "stream ended".to_string(),
                                };
                                let wait = backoff(attempt);
                                log(format!(
                                    "{}: {why}; reopening in {:.1} s",
                                    source.describe(),
                                    wait.as_secs_f32()
                                ));
                                attempt += 1;
                                sleep_unless_stopped(&s.stop, wait);
                                break;
                            }
                        }
                    }
                }
                s.frames.close();
            })
            .expect("spawn frame reader");
        Self { shared, reader: Some(reader) }
    }

    /// The newest frame not yet taken, waiting up to `timeout` for one.
    pub fn next(&self, timeout: Duration) -> Next {
        match self.shared.frames.take(timeout) {
            Taken::Value(frame) => Next::Frame(frame),
            Taken::Timeout => Next::Timeout,
            Taken::Closed => Next::Closed,
        }
    }

    /// Frames replaced before anyone took them.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.shared.frames.close_and_clear();
    }
}

impl Drop for LatestFrame {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use image::RgbImage;

    /// A live source producing numbered frames as fast as it can.
    struct Counter {
        n: u64,
        fail_at: Option<u64>,
    }

    impl FrameSource for Counter {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            std::thread::sleep(Duration::from_millis(2));
            self.n += 1;
            if Some(self.n) == self.fail_at {
                anyhow::bail!("unplugged");
            }
            Ok(Some(Frame { image: RgbImage::new(2, 2), index: self.n, time: Duration::ZERO }))
        }
        fn is_live(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "counter".into()
        }
    }

    #[test]
    fn a_slow_reader_gets_the_newest_frame_and_drops_are_counted() {
        let mut latest = LatestFrame::spawn(
            || Ok(Box::new(Counter { n: 0, fail_at: None }) as Box<dyn FrameSource>),
            |_| {},
        );
        let first = latest.next(Duration::from_secs(2)).frame().unwrap();
        std::thread::sleep(Duration::from_millis(100)); // "inference"
        let second = latest.next(Duration::from_secs(2)).frame().unwrap();
        assert!(
            second.index > first.index + 5,
            "stale frames were skipped ({} -> {})",
            first.index,
            second.index
        );
        assert!(latest.dropped() >= 5);
        latest.stop();
        assert!(matches!(latest.next(Duration::from_millis(10)), Next::Closed), "closed after stop");
    }

    #[test]
    fn a_failing_source_is_reopened() {
        let opened = Arc::new(AtomicU64::new(0));
        let o = Arc::clone(&opened);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = Arc::clone(&messages);
        let latest = LatestFrame::spawn(
            move || {
                let n = o.fetch_add(1, Ordering::Relaxed);
                if n == 1 {
                    anyhow::bail!("camera:0: cannot open");
                }
                Ok(Box::new(Counter { n: 0, fail_at: Some(3) }) as Box<dyn FrameSource>)
            },
            move |msg| m.lock().unwrap().push(msg),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while opened.load(Ordering::Relaxed) < 3 && std::time::Instant::now() < deadline {
            let _ = latest.next(Duration::from_millis(50));
        }
        assert!(opened.load(Ordering::Relaxed) >= 3, "reopened after the failures");
        let log = messages.lock().unwrap().join("\n");
        assert!(
            log.contains("unplugged") && log.contains("cannot open") && log.contains("retrying"),
            "{log}"
        );
    }
}
