//! CloudEvents being published right now, by (principal, source, id): the in-flight half of
//! idempotent publishing.
//!
//! A CloudEvent already accepted is answered from the store's idempotency record
//! (`ce_dedup`), which the driver writes in the commit that makes the event durable. Two
//! requests carrying the same event at the same time (a client that timed out and retried
//! while its first request was still being served) both looked before either commit, and
//! both were stored. A request now claims its events' triples here first; a request whose
//! triple another one holds waits until that one has finished (its record committed), then
//! looks the record up as usual and is answered with the stored event's id. The claim
//! travels with the signed events to the driver, which drops it after the commit that
//! writes their records: a request cancelled by its client, refused in part or answered
//! before the commit (`ack=none`) still holds its events until then.
//!
//! Hand-written: a map of claims with a wake-up per holder is a few lines over tokio's
//! `Notify`; no crate offers keyed single-flight with a bounded wait and release on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// A CloudEvent's identity for idempotency: principal, source, id.
pub(crate) type Triple = (String, String, String);

/// The triples of requests in flight.
#[derive(Debug, Default)]
pub(crate) struct CeClaims {
    held: Mutex<HashMap<Triple, Arc<Notify>>>,
}

/// The triples one request holds; released (and waiters woken) when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Arc<CeClaims>,
    keys: Vec<Triple>,
    released: Arc<Notify>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self
            .claims
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in &self.keys {
            held.remove(k);
        }
        drop(held);
        self.released.notify_waiters();
    }
}

impl CeClaims {
    /// Claims every triple of a request, waiting while another request holds any of them.
    /// `Err` with the triple still held when `wait` runs out.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        keys: Vec<Triple>,
        wait: Duration,
    ) -> Result<Claim, Triple> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let holder: Arc<Notify>;
            let released;
            let busy;
            {
                let mut held = self
                    .held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match keys
                    .iter()
                    .find_map(|k| held.get(k).map(|n| (k, n.clone())))
                {
                    None => {
                        let released = Arc::new(Notify::new());
                        for k in &keys {
                            held.insert(k.clone(), released.clone());
                        }
                        return Ok(Claim {
                            claims: self.clone(),
                            keys,
                            released,
                        });
                    }
                    Some((k, n)) => {
                        busy = k.clone();
                        holder = n;
                        // Made under the lock: the holder's release (which takes the lock
                        // first) cannot slip in between and be missed.
                        released = holder.notified();
                    }
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(busy);
            }
        }
    }

    /// How many triples are held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> Triple {
        ("alice".into(), "sensor".into(), id.into())
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_to_be_released() {
        let claims = Arc::new(CeClaims::default());
        let first = claims
            .claim(vec![t("1"), t("2")], Duration::from_secs(1))
            .await
            .unwrap();
        // Another triple is free.
        let other = claims.claim(vec![t("3")], Duration::from_secs(1)).await;
        assert!(other.is_ok());
        drop(other);
        // One of the held triples: the second waits until the first is dropped.
        let c2 = claims.clone();
        let waiter =
            tokio::spawn(async move { c2.claim(vec![t("2")], Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "claimed while held");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken on release")
            .unwrap();
        assert!(second.is_ok());
        assert_eq!(claims.len(), 1);
        drop(second);
        assert_eq!(claims.len(), 0);
    }

    #[tokio::test]
    async fn a_claim_held_too_long_is_an_error_naming_the_triple() {
        let claims = Arc::new(CeClaims::default());
        let _first = claims
            .claim(vec![t("1")], Duration::from_secs(1))
            .await
            .unwrap();
        let second = claims
            .claim(vec![t("0"), t("1")], Duration::from_millis(50))
            .await;
        assert_eq!(second.err(), Some(t("1")));
        // Nothing of the failed claim stays held.
        assert_eq!(claims.len(), 1);
    }
}
