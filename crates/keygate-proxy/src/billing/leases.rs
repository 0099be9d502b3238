//! Leases: store reservations shared by a key's requests in this instance.
//!
//! A request's upper-bound cost must be held before it is forwarded, atomically
//! against the account's balance and the key's spend limit, across every instance.
//! Doing that with one store transaction per request (and another to settle) puts
//! two writes on every request's path. Instead, a key's requests draw on a
//! *lease*: one store reservation, taken with room for many requests, from which
//! each request holds its upper bound in memory and returns what it did not use.
//!
//! A lease is retired when it cannot fit the next request or when it is older
//! than the batch window; a retired lease is settled in the store (its requests'
//! actual costs charged, the rest released) as soon as its last request ends. So
//! a key costs about two store writes per batch window instead of two per
//! request, a balance is never overdrawn (every hold is inside a store
//! reservation), and the store's balance lags by at most the window. A crash
//! loses the charges of the leases not yet settled (at most a window's worth);
//! their reservations expire and are swept.
//!
//! When a lease with room for many requests does not fit the balance, the lease
//! is taken for the one request alone, so an account near empty is refused only
//! when the request itself does not fit. A batch window of zero turns leases off:
//! every request takes and settles its own reservation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use keygate_store::{AccountId, KeyId, Ledger, Micros, NewReservation, Reservation, Reserve};

use crate::error::ProxyError;

/// How many requests' upper bounds a new lease makes room for.
const LEASE_REQUESTS: i64 = 32;
/// Shards of the key → lease map, so requests of different keys rarely share a lock.
const SHARDS: usize = 16;

/// What a lease attempt came to.
#[derive(Debug)]
pub(crate) enum Leased {
    /// The amount is held.
    Held(LeaseHold),
    /// The account's balance cannot cover the request.
    InsufficientBalance,
    /// The key's spend limit cannot cover the request.
    SpendLimitExceeded,
}

/// Settles retired leases: the billing layer runs the store call in a task.
pub(crate) trait Settler: Send + Sync + 'static {
    /// Charges `cost` for `reservation` and releases the rest.
    fn settle(&self, reservation: Reservation, cost: Micros);
}

/// The leases of every key with requests in flight or a recent lease.
pub(crate) struct Leases {
    ledger: Arc<dyn Ledger>,
    settler: Arc<dyn Settler>,
    window: Duration,
    ttl: chrono::Duration,
    shards: Vec<Mutex<HashMap<KeyId, Arc<KeyLeases>>>>,
    /// Store calls that take leases run here, so a request that goes away
    /// mid-call cannot strand a reservation; shutdown waits for them.
    tasks: super::tasks::HomeTasks,
    /// Shutdown began: a lease taken now is retired at once.
    closed: std::sync::atomic::AtomicBool,
    /// Leases not yet dropped, each counted by a token: a lease is dropped
    /// once retired, its last request ended and its settlement started.
    open: tokio_util::task::TaskTracker,
    /// Requests may be charged past what they held.
    beyond_reservation: bool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// One key's current lease, and the lock that lets one request at a time take
/// a new one from the store.
#[derive(Default)]
struct KeyLeases {
    current: Mutex<Option<Arc<Lease>>>,
    refill: tokio::sync::Mutex<()>,
    /// A background refill is under way.
    refilling: std::sync::atomic::AtomicBool,
}

struct Lease {
    /// Counts this lease among the open ones until dropped.
    _open: tokio_util::task::task_tracker::TaskTrackerToken,
    reservation: Reservation,
    born: Instant,
    /// Requests may be charged past what they held.
    beyond_reservation: bool,
    settler: Arc<dyn Settler>,
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    /// Upper bounds held by requests in flight.
    held: i64,
    /// Actual costs of the requests that ended.
    charged: i64,
    in_flight: u32,
    /// No new request may draw on it.
    retired: bool,
    settled: bool,
}

/// One request's share of a lease. Ending it returns what the request did not
/// use; dropping it without an end returns it all.
pub(crate) struct LeaseHold {
    lease: Option<Arc<Lease>>,
    amount: i64,
}

impl std::fmt::Debug for LeaseHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHold")
            .field("amount", &self.amount)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded sections never panic; a poisoned lock still holds valid numbers.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lease {
    /// Holds `amount` if the lease has room and is not retired.
    fn try_hold(self: &Arc<Self>, amount: i64) -> Option<LeaseHold> {
        let mut state = lock(&self.state);
        let room = self
            .reservation
            .amount
            .0
            .saturating_sub(state.held)
            .saturating_sub(state.charged);
        if state.retired || room < amount {
            return None;
        }
        state.held = state.held.saturating_add(amount);
        state.in_flight = state.in_flight.saturating_add(1);
        Some(LeaseHold {
            lease: Some(Arc::clone(self)),
            amount,
        })
    }

    /// Whether it should be replaced soon: most of its room is used, or most of
    /// its window has passed.
    fn wants_successor(&self, window: Duration) -> bool {
        let state = lock(&self.state);
        let used = state.held.saturating_add(state.charged);
        used.saturating_mul(4) > self.reservation.amount.0.saturating_mul(3)
            || self.born.elapsed().saturating_mul(4) > window.saturating_mul(3)
    }

    /// A size for its successor: room for twice what it was used for per
    /// window, at least `floor` and at most 32 times `floor`.
    fn successor_size(&self, window: Duration, floor: i64) -> i64 {
        let state = lock(&self.state);
        let used = state.held.saturating_add(state.charged);
        let age = self.born.elapsed().max(Duration::from_millis(10));
        let nanos = |d: Duration| i128::try_from(d.as_nanos().max(1)).unwrap_or(i128::MAX);
        let per_window = (i128::from(used).saturating_mul(nanos(window)) / nanos(age))
            .min(i128::from(i64::MAX / 4));
        let per_window = i64::try_from(per_window).unwrap_or(i64::MAX / 4);
        per_window
            .saturating_mul(2)
            .min(floor.saturating_mul(LEASE_REQUESTS))
            .max(floor)
    }

    /// Stops new requests drawing on it; settles it if none is in flight.
    fn retire(&self) {
        let mut state = lock(&self.state);
        state.retired = true;
        self.settle_if_done(&mut state);
    }

    fn end(&self, amount: i64, cost: i64) {
        let mut state = lock(&self.state);
        state.held = state.held.saturating_sub(amount);
        state.charged = state.charged.saturating_add(cost);
        state.in_flight = state.in_flight.saturating_sub(1);
        self.settle_if_done(&mut state);
    }

    fn settle_if_done(&self, state: &mut LeaseState) {
        if state.retired && state.in_flight == 0 && !state.settled {
            state.settled = true;
            self.settler
                .settle(self.reservation.clone(), Micros(state.charged));
        }
    }
}

/// A key's background refill, in flight until dropped.
struct Refilling(Arc<KeyLeases>);

impl Drop for Refilling {
    fn drop(&mut self) {
        self.0
            .refilling
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl LeaseHold {
    /// Ends the request, charging `cost` cut to the amount held (or, with
    /// `charge_beyond_reservation`, all of it); returns what was charged to the
    /// lease. A negative cost charges nothing.
    pub(crate) fn settle(mut self, cost: Micros) -> Micros {
        let Some(lease) = self.lease.take() else {
            return Micros::ZERO;
        };
        let mut charged = cost.0.max(0);
        if !lease.beyond_reservation {
            charged = charged.min(self.amount);
        }
        lease.end(self.amount, charged);
        Micros(charged)
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.end(self.amount, 0);
        }
    }
}

impl Leases {
    /// Leases over `ledger`, renewed every `window` (zero: one reservation per
    /// request), each store reservation expiring after `ttl`.
    pub(crate) fn new(
        ledger: Arc<dyn Ledger>,
        settler: Arc<dyn Settler>,
        window: Duration,
        ttl: Duration,
        tasks: super::tasks::HomeTasks,
        beyond_reservation: bool,
    ) -> Self {
        Self {
            ledger,
            settler,
            window,
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            tasks,
            closed: std::sync::atomic::AtomicBool::new(false),
            open: tokio_util::task::TaskTracker::new(),
            beyond_reservation,
        }
    }

    fn key(&self, key: &KeyId) -> Arc<KeyLeases> {
        let shard = &self.shards[shard_of(key)];
        Arc::clone(lock(shard).entry(key.clone()).or_default())
    }

    /// Holds `amount` for one request of `key`, from its lease or a new one.
    /// Fails with the store's error when the store cannot be reached.
    pub(crate) async fn hold(
        self: &Arc<Self>,
        account: &AccountId,
        key: &KeyId,
        amount: Micros,
    ) -> Result<Leased, ProxyError> {
        let leases = self.key(key);
        if let Some(hold) = self.current_hold(&leases, account, key, amount.0) {
            return Ok(Leased::Held(hold));
        }
        // The lease has no room: this request waits for a new one (see
        // `take_lease`: one store call at a time per key; the others wait and
        // then draw on the lease it took).
        let mut sizes = vec![amount.0];
        if !self.window.is_zero() {
            let floor = amount.0.saturating_mul(LEASE_REQUESTS);
            let grown = lock(&leases.current)
                .as_ref()
                .map_or(floor, |lease| lease.successor_size(self.window, floor));
            sizes = vec![grown, floor, amount.0];
            sizes.dedup();
        }
        let mut refused = Leased::InsufficientBalance;
        for size in sizes {
            // The store call runs in a task of its own: if this request goes
            // away mid-call, the task still publishes the lease (or, with no
            // window, releases it), so the reservation is never stranded.
            let task = self.tasks.spawn(Arc::clone(self).take_lease(
                Arc::clone(&leases),
                account.clone(),
                key.clone(),
                size,
                amount.0,
                None,
            ));
            let taken = task
                .await
                .map_err(|e| ProxyError::Internal(Box::new(e)))??;
            match taken {
                Ok(Some(hold)) => return Ok(Leased::Held(hold)),
                // Cannot happen: the lease was sized for this amount and the
                // hold was taken before anyone else could see it.
                Ok(None) => return Ok(Leased::InsufficientBalance),
                Err(why) => refused = why,
            }
        }
        Ok(refused)
    }

    /// Holds from the current lease, starting a background refill when that
    /// lease is nearly used up or old, so busy keys rarely wait for the store.
    fn current_hold(
        self: &Arc<Self>,
        leases: &Arc<KeyLeases>,
        account: &AccountId,
        key: &KeyId,
        amount: i64,
    ) -> Option<LeaseHold> {
        let lease = lock(&leases.current).clone()?;
        let hold = lease.try_hold(amount)?;
        if lease.wants_successor(self.window)
            && !leases
                .refilling
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let (this, leases) = (Arc::clone(self), Arc::clone(leases));
            let (account, key) = (account.clone(), key.clone());
            let floor = amount.saturating_mul(LEASE_REQUESTS);
            let size = lease.successor_size(self.window, floor);
            // Clears the flag however the task ends, also dropped unrun.
            let refilling = Refilling(Arc::clone(&leases));
            // Who waits: shutdown, through the task tracker.
            self.tasks.spawn(async move {
                let _refilling = refilling;
                for size in [size, floor] {
                    let taken = Arc::clone(&this)
                        .take_lease(
                            Arc::clone(&leases),
                            account.clone(),
                            key.clone(),
                            size,
                            0,
                            Some(Arc::clone(&lease)),
                        )
                        .await;
                    // Refused at this size: try the floor; otherwise done.
                    if !matches!(taken, Ok(Err(_))) {
                        break;
                    }
                }
            });
        }
        Some(hold)
    }

    /// Takes a new lease of `size` from the store, holds `amount` from it (none
    /// when 0) before anyone else can see it, and makes it the key's current
    /// lease (retiring the previous one), or says why the store refused. A
    /// background refill passes the lease it replaces and gives up when another
    /// request has replaced that lease meanwhile.
    async fn take_lease(
        self: Arc<Self>,
        leases: Arc<KeyLeases>,
        account: AccountId,
        key: KeyId,
        size: i64,
        amount: i64,
        replacing: Option<Arc<Lease>>,
    ) -> keygate_store::Result<Result<Option<LeaseHold>, Leased>> {
        let _refill = leases.refill.lock().await;
        let current = lock(&leases.current).clone();
        match (&replacing, current) {
            // A background refill whose lease another request already replaced.
            (Some(replacing), current)
                if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, replacing)) =>
            {
                return Ok(Ok(None));
            }
            // A request that waited while another took a lease with room for it.
            (None, Some(current)) if amount > 0 => {
                if let Some(hold) = current.try_hold(amount) {
                    return Ok(Ok(Some(hold)));
                }
            }
            _ => {}
        }
        let new = NewReservation {
            account_id: account,
            key_id: key,
            amount: Micros(size),
            expires_at: Utc::now() + self.ttl,
        };
        let reservation = match self.ledger.reserve(new).await? {
            Reserve::Held(reservation) => reservation,
            Reserve::InsufficientBalance => return Ok(Err(Leased::InsufficientBalance)),
            Reserve::SpendLimitExceeded => return Ok(Err(Leased::SpendLimitExceeded)),
        };
        let lease = Arc::new(Lease {
            _open: self.open.token(),
            reservation,
            born: Instant::now(),
            beyond_reservation: self.beyond_reservation,
            settler: Arc::clone(&self.settler),
            state: Mutex::default(),
        });
        let hold = if amount > 0 {
            lease.try_hold(amount)
        } else {
            None
        };
        if self.window.is_zero() || self.closed.load(std::sync::atomic::Ordering::Acquire) {
            // Used by this one request only: settled when its hold ends.
            lease.retire();
            return Ok(Ok(hold));
        }
        let previous = lock(&leases.current).replace(lease);
        if let Some(previous) = previous {
            previous.retire();
        }
        Ok(Ok(hold))
    }

    /// Retires leases older than the window, settling those with nothing in
    /// flight, and forgets keys with no lease. Called periodically.
    pub(crate) fn renew(&self) {
        for shard in &self.shards {
            lock(shard).retain(|_, leases| {
                // A request that took the entry may be about to set a lease on it.
                if Arc::strong_count(leases) > 1 {
                    return true;
                }
                let mut current = lock(&leases.current);
                if current
                    .as_ref()
                    .is_some_and(|lease| lease.born.elapsed() >= self.window)
                {
                    if let Some(lease) = current.take() {
                        lease.retire();
                    }
                }
                current.is_some()
            });
        }
    }

    /// Waits, at most `limit`, until every lease has been dropped: its last
    /// request ended (an HTTP/2 stream's task may end after its connection
    /// did) and its settlement started. Returns how many are still open.
    pub(crate) async fn settled(&self, limit: Duration) -> usize {
        // Closed, the tracker's `wait` ends when its last token is dropped; a
        // lease taken later still counts (`len`), as it is retired at once.
        self.open.close();
        let _ = tokio::time::timeout(limit, self.open.wait()).await;
        self.open.len()
    }

    /// Retires every lease (at shutdown, after the last request).
    pub(crate) fn retire_all(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        for shard in &self.shards {
            for leases in lock(shard).drain().map(|(_, leases)| leases) {
                if let Some(lease) = lock(&leases.current).take() {
                    lease.retire();
                }
            }
        }
    }
}

fn shard_of(key: &KeyId) -> usize {
    // Key ids end in random hex: their last bytes spread evenly.
    key.as_str()
        .bytes()
        .rev()
        .take(2)
        .fold(0_usize, |acc, b| acc * 31 + usize::from(b))
        % SHARDS
}

#[cfg(test)]
mod tests;
