//! The span in which this replica may write, shared by every writer (the API client's gate in
//! [`crate::leader`], the Northbound write path in [`crate::ovn`]). The Lease keeper in
//! [`crate::leader`] begins, extends and ends it.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The span in which this replica may write: from winning the Lease until the renew deadline
/// after the start of its last successful renewal. Cloned into every writer; a standby's term
/// has not begun, an ended one never restarts (the process exits and starts afresh).
#[derive(Clone, Debug, Default)]
pub struct Term(Arc<Mutex<TermState>>);

#[derive(Debug, Default)]
struct TermState {
    valid_until: Option<Instant>,
    ended: bool,
}

impl Term {
    /// When the term ends unless renewed; `None` before it begins and after it ended.
    pub fn valid_until(&self) -> Option<Instant> {
        let state = self.0.lock();
        state.valid_until.filter(|_| !state.ended)
    }

    /// Whether this replica may write now.
    pub fn is_valid(&self) -> bool {
        let state = self.0.lock();
        !state.ended && state.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// Lets the term run until `until` (the Lease keeper, after each renewal; tests start a
    /// term with it). An ended term stays ended.
    pub fn extend(&self, until: Instant) {
        let mut state = self.0.lock();
        if !state.ended {
            state.valid_until = Some(until);
        }
    }

    /// Ends the term for good: this replica writes nothing more.
    pub fn end(&self) {
        let mut state = self.0.lock();
        state.ended = true;
        state.valid_until = None;
    }
}

/// A write attempted outside this replica's [`Term`].
#[derive(Clone, Debug, thiserror::Error)]
#[error("not the leader: this replica's term has ended or not begun, so it writes nothing")]
pub struct NotLeading;
