//! Connection slots: how many connections keyd keeps, and how many of them peers that have
//! not (or not successfully) attested may hold.
//!
//! Every connection takes one of `--max-connections` slots. Until its TLS handshake completes
//! and its attestation is accepted, it also takes an *unverified* slot: there are fewer of those
//! (a quarter of the slots stays for attested connections), and one address holds at most a few
//! of them, so silent or refused peers can neither push out attested callers nor keep other
//! addresses from handshaking.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most unverified connections one address may hold: handshakes of real clients take
/// milliseconds, so even many clients behind one NAT address stay far below it.
const MAX_UNVERIFIED_PER_ADDRESS: usize = 16;

/// The slot budgets of one listener.
#[derive(Debug)]
pub struct ConnectionSlots {
    all: Arc<Semaphore>,
    unverified: Arc<Semaphore>,
    per_address_limit: usize,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Slots held by one connection until it is dropped.
#[derive(Debug)]
pub struct Slot {
    _all: OwnedSemaphorePermit,
    unverified: Option<Unverified>,
}

#[derive(Debug)]
struct Unverified {
    _permit: OwnedSemaphorePermit,
    address: IpAddr,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Unverified {
    fn drop(&mut self) {
        let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

impl ConnectionSlots {
    /// Budgets for `max_connections` connections (at least one).
    pub fn new(max_connections: usize) -> Self {
        let max = max_connections.max(1);
        let unverified = max - max / 4;
        ConnectionSlots {
            all: Arc::new(Semaphore::new(max)),
            unverified: Arc::new(Semaphore::new(unverified)),
            per_address_limit: (unverified / 4).clamp(1, MAX_UNVERIFIED_PER_ADDRESS),
            per_address: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Slots for a new, unverified connection from `address`; `None` when a budget is spent
    /// (the connection is then closed at once).
    pub fn take(&self, address: IpAddr) -> Option<Slot> {
        {
            let counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
            if counts.get(&address).copied().unwrap_or(0) >= self.per_address_limit {
                return None;
            }
        }
        let unverified = self.unverified.clone().try_acquire_owned().ok()?;
        let all = self.all.clone().try_acquire_owned().ok()?;
        *self
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(address)
            .or_insert(0) += 1;
        Some(Slot {
            _all: all,
            unverified: Some(Unverified {
                _permit: unverified,
                address,
                per_address: self.per_address.clone(),
            }),
        })
    }
}

impl Slot {
    /// The connection attested: it no longer counts against the unverified budgets.
    pub fn verified(&mut self) {
        self.unverified = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_peers_leave_a_quarter_and_other_addresses_room() {
        let slots = ConnectionSlots::new(16);
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<Slot> = (0..100).filter_map(|_| slots.take(attacker)).collect();
        assert_eq!(
            held.len(),
            3,
            "one address holds at most a quarter of the unverified slots"
        );
        let mut verified: Vec<Slot> = (0..100).filter_map(|_| slots.take(client)).collect();
        assert_eq!(verified.len(), 3);
        for slot in &mut verified {
            slot.verified();
        }
        // Attested connections no longer count as unverified, so more clients can handshake.
        assert!(slots.take(client).is_some());
        drop(held);
        assert!(
            slots.take(attacker).is_some(),
            "closed connections give their slots back"
        );
    }

    #[test]
    fn a_single_slot_still_admits_a_connection() {
        let slots = ConnectionSlots::new(1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mut slot = slots.take(a).expect("the only slot");
        slot.verified();
        assert!(slots.take(a).is_none(), "over --max-connections");
    }
}
