//! A slot where the newest value wins: a producer overwrites, readers wait for something newer.
//! The live frame reader (one consumer that takes each frame) and the kiosk's picture (many
//! viewers that each want the frames after the last one they sent) are both this.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

struct State<T> {
    value: Option<T>,
    /// Bumped by every `put`: a reader that remembers it sees only newer values.
    generation: u64,
    closed: bool,
}

pub struct Newest<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

/// What [`Newest::take`] found.
#[derive(Debug, PartialEq)]
pub enum Taken<T> {
    Value(T),
    /// Nothing new within the timeout.
    Timeout,
    /// Closed and empty: nothing more will come.
    Closed,
}

impl<T> Default for Newest<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Newest<T> {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State { value: None, generation: 0, closed: false }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A reader or writer that panicked left a value, not a broken invariant.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many values were put so far: a reader that wants only later ones remembers it.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Publishes `value`. Returns whether it replaced one nobody took (a dropped frame).
    pub fn put(&self, value: T) -> bool {
        let mut s = self.lock();
        let replaced = s.value.replace(value).is_some();
        s.generation += 1;
        self.changed.notify_all();
        replaced
    }

    /// No more values: waiting readers wake up. A value not yet taken can still be.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Closes and drops any value not taken.
    pub fn close_and_clear(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.value = None;
        self.changed.notify_all();
    }

    /// Takes the newest value (for a single consumer), waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Taken<T> {
        let s = self.lock();
        let (mut s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.value.is_none() && !s.closed)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match s.value.take() {
            Some(value) => Taken::Value(value),
            None if s.closed => Taken::Closed,
            None => Taken::Timeout,
        }
    }
}

impl<T: Clone> Newest<T> {
    /// The newest value if it is newer than generation `seen`, with its generation, waiting up
    /// to `timeout` for one (for many readers: nothing is taken).
    pub fn newer_than(&self, seen: u64, timeout: Duration) -> Option<(u64, T)> {
        let s = self.lock();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.generation <= seen && !s.closed)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if s.generation <= seen {
            return None;
        }
        s.value.clone().map(|v| (s.generation, v))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_consumer_takes_the_newest_and_learns_what_it_missed() {
        let slot = Newest::new();
        assert_eq!(slot.take(Duration::from_millis(5)), Taken::Timeout);
        assert!(!slot.put(1));
        assert!(slot.put(2), "1 was never taken: dropped");
        assert_eq!(slot.take(Duration::ZERO), Taken::Value(2));
        assert!(!slot.put(3), "2 was taken");
        slot.close();
        assert_eq!(slot.take(Duration::ZERO), Taken::Value(3), "what was put before closing is still taken");
        assert_eq!(slot.take(Duration::from_secs(5)), Taken::Closed, "closed: no wait");
    }

    #[test]
    fn viewers_each_see_every_newer_value_and_a_waiting_one_wakes_up() {
        let slot = Arc::new(Newest::new());
        assert_eq!(slot.newer_than(0, Duration::from_millis(5)), None);
        slot.put("a");
        let (seen, v) = slot.newer_than(0, Duration::ZERO).unwrap();
        assert_eq!(v, "a");
        assert_eq!(slot.newer_than(0, Duration::ZERO).map(|(_, v)| v), Some("a"), "nothing is taken");
        assert_eq!(slot.newer_than(seen, Duration::from_millis(5)), None, "nothing newer yet");
        let writer = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                slot.put("b");
            })
        };
        assert_eq!(slot.newer_than(seen, Duration::from_secs(5)).map(|(_, v)| v), Some("b"));
        writer.join().unwrap();
        slot.close_and_clear();
        assert_eq!(slot.newer_than(seen, Duration::from_secs(5)), None, "closed: no wait, nothing left");
    }
}
