//! Probing before sending many: a department's first row goes alone and its answer settles
//! the department for the rows waiting behind it, so a department the credentials may not
//! use costs one request, not `concurrency` of them. The same gate, with one key, lets the
//! first paid-status check prove the credentials' scope before any other row is checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::Stopper;

/// What is known of one key (a department, or the paid-status scope).
enum State {
    /// Its first request is on its way; the key's other rows wait on this.
    Probing(Arc<Notify>),
    Open,
    Refused(String),
}

#[derive(Default)]
pub(super) struct Gate {
    keys: Mutex<HashMap<String, State>>,
}

impl Gate {
    /// Makes the caller the key's probe if the key has not been seen. The dispatcher calls
    /// it in input order, before the row's task runs (tasks start in any order, and the row
    /// that goes alone must be the key's first).
    pub fn claim(&self, key: &str) -> bool {
        claim(&mut self.keys.lock().unwrap(), key)
    }

    /// Why the key was refused, if it was.
    pub fn refused(&self, key: &str) -> Option<String> {
        match self.keys.lock().unwrap().get(key) {
            Some(State::Refused(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// Waits for the row's turn at `key`: `Ok(Some(probe))` when it goes alone (it claimed
    /// the key, or the last probe ended without an answer that settled it), `Ok(None)`
    /// once the key is open (or the run stopped), `Err(why)` if it was refused.
    pub async fn turn<'a>(
        &'a self,
        key: &str,
        claimed: bool,
        stopper: &Stopper,
    ) -> Result<Option<Probe<'a>>, String> {
        loop {
            let notified = {
                let mut keys = self.keys.lock().unwrap();
                if claimed || claim(&mut keys, key) {
                    return Ok(Some(Probe {
                        gate: self,
                        key: key.to_string(),
                    }));
                }
                match &keys[key] {
                    State::Open => return Ok(None),
                    State::Refused(why) => return Err(why.clone()),
                    // Registered before the lock is released, so a wake-up cannot be missed.
                    State::Probing(notify) => notify.clone().notified_owned(),
                }
            };
            tokio::select! {
                _ = stopper.stopped() => return Ok(None),
                _ = notified => {}
            }
        }
    }

    /// Refuses the key (a refusal can come from any of its rows); false if it already was.
    pub fn refuse(&self, key: &str, why: String) -> bool {
        let mut keys = self.keys.lock().unwrap();
        if let Some(State::Refused(_)) = keys.get(key) {
            return false;
        }
        if let Some(State::Probing(notify)) = keys.insert(key.to_string(), State::Refused(why)) {
            notify.notify_waiters();
        }
        true
    }

    /// Settles the key and wakes its waiting rows in one step, so that none of them can
    /// become the next probe in between.
    fn settle(&self, key: &str, state: State) {
        let previous = self.keys.lock().unwrap().insert(key.to_string(), state);
        if let Some(State::Probing(notify)) = previous {
            notify.notify_waiters();
        }
    }
}

fn claim(keys: &mut HashMap<String, State>, key: &str) -> bool {
    if keys.contains_key(key) {
        return false;
    }
    keys.insert(key.to_string(), State::Probing(Arc::default()));
    true
}

/// Held by the row probing a key. Dropped without `open` or `refuse` (the row ended with
/// nothing said about the key), it hands the probe to the next waiting row.
pub(super) struct Probe<'a> {
    gate: &'a Gate,
    key: String,
}

impl Probe<'_> {
    pub fn open(self) {
        self.gate.settle(&self.key, State::Open);
    }

    pub fn refuse(self, why: String) {
        self.gate.settle(&self.key, State::Refused(why));
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut keys = self.gate.keys.lock().unwrap();
        if let Some(State::Probing(_)) = keys.get(&self.key) {
            if let Some(State::Probing(notify)) = keys.remove(&self.key) {
                notify.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_reaches_every_waiting_row_and_an_unsettled_probe_is_handed_on() {
        let gate = Gate::default();
        let stopper = Stopper::default();
        assert!(gate.claim("d"));
        assert!(!gate.claim("d"));
        let probe = gate.turn("d", true, &stopper).await.unwrap().unwrap();
        // Ended without an answer: the next row becomes the probe.
        drop(probe);
        let probe = gate.turn("d", false, &stopper).await.unwrap().unwrap();
        let waiting = async { gate.turn("d", false, &stopper).await.map(|p| p.is_some()) };
        let refuse = async { probe.refuse("HTTP 403".into()) };
        let (waited, ()) = tokio::join!(waiting, refuse);
        assert_eq!(waited, Err("HTTP 403".to_string()));
        assert_eq!(gate.refused("d").as_deref(), Some("HTTP 403"));
        assert!(gate.turn("e", false, &stopper).await.unwrap().is_some());
    }
}
