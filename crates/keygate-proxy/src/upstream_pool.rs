//! An upstream's connections: hyper-util's pooled client in shards, each with
//! its own pool, so that requests past what one connection takes open another.
//!
//! hyper-util's client keeps one HTTP/2 connection per upstream and sends every
//! request on it; past the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` (100 at most
//! providers) a request waits in that connection's queue until a stream ends, and
//! a long stream fails at the first-byte timeout. Here each shard takes at most
//! `streams_per_connection` requests at once (counted until the response body
//! ends or is dropped); a request goes to the first shard with room, and a
//! shard is added when none has. Over HTTP/1.1, where each request has a
//! connection of its own, a shard holds that many connections and the same
//! rule only splits them between pools.
//!
//! Shards are kept per worker thread ([`crate::workers`]): a connection's task
//! runs on the runtime that opened it, so a request sent on another worker's
//! connection would wake that worker twice. Threads that are not workers share
//! one set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How an upstream's connections are made.
#[derive(Clone)]
pub(crate) enum Connector {
    /// `http://`: TCP only.
    Plain(HttpConnector),
    /// `https://`: TCP, then TLS.
    Tls(HttpsConnector<HttpConnector>),
}

/// The HTTP client of one shard. A plain upstream's has a client of its own
/// type: each connection's task then holds a TCP stream, not an enum sized for
/// a TLS one (about 1 KB more per HTTP/1.1 connection).
enum ShardClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// Most shards an upstream grows to (at the default of 100 streams each, 6,400
/// requests at once); past it the least loaded shard takes the request, and it
/// may wait in that connection's queue.
const MAX_SHARDS: usize = 64;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sets of shards, one per worker: worker `n` uses set `n % LANES`, threads
/// that are not workers set 0. An unused set is an empty list. Past 64 workers
/// two workers share a set: correct (a connection's task then runs on the
/// worker that opened it, and the other's requests wake that thread), only
/// slower, on a machine with more cores than this gateway is likely given.
const LANES: usize = 64;

/// One upstream's connections.
pub(crate) struct UpstreamPool {
    connector: Connector,
    streams_per_connection: usize,
    /// Per worker, see [`LANES`]. Each grows, never shrinks: a shard without
    /// requests keeps its idle connections only until [`IDLE_TIMEOUT`].
    lanes: Box<[RwLock<Vec<Arc<Shard>>>]>,
}

struct Shard {
    client: ShardClient,
    in_flight: AtomicUsize,
}

/// A request's place in its shard, held until its response body ends or is
/// dropped (while an HTTP/2 stream is open); clones share it.
#[derive(Clone)]
pub(crate) struct StreamSlot {
    _held: Arc<Held>,
}

struct Held(Arc<Shard>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSlot")
    }
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("streams_per_connection", &self.streams_per_connection)
            .field("shards", &self.shard_count())
            .finish()
    }
}

impl UpstreamPool {
    /// A pool connecting through `connector`, at most `streams_per_connection`
    /// (at least 1) requests at once on each shard.
    pub(crate) fn new(connector: Connector, streams_per_connection: usize) -> Self {
        Self {
            connector,
            streams_per_connection: streams_per_connection.max(1),
            lanes: (0..LANES).map(|_| RwLock::new(Vec::new())).collect(),
        }
    }

    /// Sends `request` on the first shard with room, adding one when none has.
    pub(crate) fn request(&self, request: Request<Full<Bytes>>) -> (ResponseFuture, StreamSlot) {
        // The place is held (and freed on any unwind) before the request starts.
        let held = Arc::new(Held(self.take_room()));
        let future = match &held.0.client {
            ShardClient::Plain(client) => client.request(request),
            ShardClient::Tls(client) => client.request(request),
        };
        (future, StreamSlot { _held: held })
    }

    /// How many shards the pool has grown to, over all workers.
    pub(crate) fn shard_count(&self) -> usize {
        self.lanes.iter().map(|lane| read(lane).len()).sum()
    }

    /// This thread's shards.
    fn lane(&self) -> &RwLock<Vec<Arc<Shard>>> {
        &self.lanes[crate::worker::current() % LANES]
    }

    /// A shard of this thread's with one more request counted in it.
    fn take_room(&self) -> Arc<Shard> {
        let lane = self.lane();
        {
            let shards = read(lane);
            if let Some(shard) = self.with_room(&shards) {
                return shard;
            }
            if shards.len() >= MAX_SHARDS {
                if let Some(shard) = least_loaded(&shards) {
                    return shard;
                }
            }
        }
        let mut shards = lane.write().unwrap_or_else(|e| e.into_inner());
        // Another request may have freed room or added a shard meanwhile.
        if let Some(shard) = self.with_room(&shards) {
            return shard;
        }
        if shards.len() >= MAX_SHARDS {
            if let Some(shard) = least_loaded(&shards) {
                return shard;
            }
        }
        let shard = self.shard();
        shard.in_flight.fetch_add(1, Ordering::AcqRel);
        shards.push(Arc::clone(&shard));
        shard
    }

    /// The first of `shards` with room, its count taken.
    fn with_room(&self, shards: &[Arc<Shard>]) -> Option<Arc<Shard>> {
        let max = self.streams_per_connection;
        shards
            .iter()
            .find(|shard| {
                shard
                    .in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok()
            })
            .map(Arc::clone)
    }

    /// A new shard, nothing in flight on it.
    fn shard(&self) -> Arc<Shard> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT);
        let client = match &self.connector {
            Connector::Plain(http) => ShardClient::Plain(builder.build(http.clone())),
            Connector::Tls(https) => ShardClient::Tls(builder.build(https.clone())),
        };
        Arc::new(Shard {
            client,
            in_flight: AtomicUsize::new(0),
        })
    }
}

fn read(lane: &RwLock<Vec<Arc<Shard>>>) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Shard>>> {
    // A panic while the lock was held leaves the list whole (a push is the
    // only write), so a poisoned lock is still good to read.
    lane.read().unwrap_or_else(|e| e.into_inner())
}

/// Full everywhere: the least loaded shard takes the request (over HTTP/2 it
/// waits there for a stream), its count taken; `None` for no shard.
fn least_loaded(shards: &[Arc<Shard>]) -> Option<Arc<Shard>> {
    let shard = shards
        .iter()
        .min_by_key(|s| s.in_flight.load(Ordering::Acquire))?;
    shard.in_flight.fetch_add(1, Ordering::AcqRel);
    Some(Arc::clone(shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(streams: usize) -> UpstreamPool {
        UpstreamPool::new(Connector::Plain(HttpConnector::new()), streams)
    }

    fn in_flight(pool: &UpstreamPool) -> Vec<usize> {
        read(pool.lane())
            .iter()
            .map(|s| s.in_flight.load(Ordering::Acquire))
            .collect()
    }

    #[test]
    fn requests_fill_the_first_shard_with_room_and_a_new_one_past_it() {
        let pool = pool(2);
        let mut held: Vec<_> = (0..5)
            .map(|_| StreamSlot {
                _held: Arc::new(Held(pool.take_room())),
            })
            .collect();
        assert_eq!(in_flight(&pool), [2, 2, 1]);
        let clone = held[0].clone();
        let rest = held.split_off(3);
        drop(held);
        // The clone still holds the first slot.
        assert_eq!(in_flight(&pool), [1, 1, 1]);
        drop(clone);
        assert_eq!(in_flight(&pool), [0, 1, 1]);
        let again = StreamSlot {
            _held: Arc::new(Held(pool.take_room())),
        };
        assert_eq!(in_flight(&pool), [1, 1, 1], "the first shard with room");
        drop((again, rest));
        assert_eq!(in_flight(&pool), [0, 0, 0]);
        assert_eq!(pool.shard_count(), 3);
    }

    #[test]
    fn requests_from_many_threads_never_pass_a_shards_cap() {
        let pool = pool(7);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        let slot = StreamSlot {
                            _held: Arc::new(Held(pool.take_room())),
                        };
                        held.lock().unwrap().push(slot);
                    }
                });
            }
        });
        let counts = in_flight(&pool);
        assert_eq!(counts.iter().sum::<usize>(), 200);
        // First fit, a shard added only when all are full: 28 full, one with 4.
        assert_eq!(counts.len(), 200usize.div_ceil(7), "{counts:?}");
        assert!(counts.iter().all(|&n| n <= 7), "{counts:?}");
        drop(held);
        assert!(in_flight(&pool).iter().all(|&n| n == 0));
    }

    #[test]
    fn each_worker_has_shards_of_its_own() {
        let pool = pool(1);
        let take = |worker| {
            let pool = &pool;
            std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        crate::worker::enter(worker);
                        Held(pool.take_room())
                    })
                    .join()
                    .unwrap()
            })
        };
        let (first, second, again) = (take(1), take(2), take(1));
        assert!(
            !Arc::ptr_eq(&first.0, &second.0),
            "two workers shared a shard"
        );
        // Worker 1's shard is full (one stream each): a second one of its own.
        assert!(!Arc::ptr_eq(&first.0, &again.0));
        assert_eq!(pool.shard_count(), 3);
        drop(first);
        let reused = take(1);
        assert!(
            Arc::ptr_eq(&reused.0, &take_first(&pool, 1)),
            "worker 1's first shard, freed, takes the next request"
        );
        drop((second, again, reused));
    }

    /// Worker `worker`'s first shard.
    fn take_first(pool: &UpstreamPool, worker: usize) -> Arc<Shard> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::worker::enter(worker);
                    Arc::clone(&read(pool.lane())[0])
                })
                .join()
                .unwrap()
        })
    }

    #[test]
    fn past_the_last_shard_the_least_loaded_takes_the_request() {
        let pool = pool(1);
        let held: Vec<_> = (0..MAX_SHARDS + 3)
            .map(|_| StreamSlot {
                _held: Arc::new(Held(pool.take_room())),
            })
            .collect();
        assert_eq!(pool.shard_count(), MAX_SHARDS);
        let counts = in_flight(&pool);
        assert_eq!(counts.iter().sum::<usize>(), MAX_SHARDS + 3);
        assert!(counts.iter().all(|&n| n == 1 || n == 2), "{counts:?}");
        drop(held);
        assert!(in_flight(&pool).iter().all(|&n| n == 0));
    }
}
