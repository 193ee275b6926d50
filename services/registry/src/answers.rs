//! Answers of `GET /v1/services/{name}/instances` kept in memory, serialized, per discovery
//! index: the read path of discovery, which routers and clients call far more often than
//! anything changes.
//!
//! Why an answer may be reused: every change a reader would see bumps the discovery index in
//! its transaction (see `db::instances`), and `LISTEN slipway_discovery` raises every replica's
//! [`crate::discovery::IndexWatch`] when it commits. An answer read in a snapshot at index `n`
//! therefore holds until the watch passes `n`: it is valid while `n >= watched`. The next read
//! after the watch moves reads the database again, so a change is seen by a replica's next read
//! once its notification arrived (the same moment blocking queries wake).
//!
//! What the index does not cover: `last_seen`, which heartbeats move without a bump (a bump per
//! heartbeat would wake every watcher each interval). A heartbeat notifies
//! `slipway_discovery_seen` with the service's name instead, and the watcher [`forget`]s that
//! service's answers; after a reconnect of the listener (notifications may have been missed)
//! it [`clear`]s them all. An answer is also kept for at most `ttl`, which bounds what nothing
//! notifies: rows changed behind the registry's back (by hand in SQL), a listener that went
//! deaf without noticing.
//!
//! Bytes are shared (`Bytes` clones are reference counts), so a hot service is serialized once
//! per index, not once per read. The map is bounded: past [`MAX_SERVICES`] services the invalid
//! answers go, then all of them; past [`MAX_FILTERS`] filters of one service, that service's.
//!
//! [`forget`]: AnswerCache::forget
//! [`clear`]: AnswerCache::clear

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;

/// Services whose answers are kept at most; past it the map is pruned. 1,000 services of 10
/// instances take about 4 MB.
pub const MAX_SERVICES: usize = 20_000;
/// Answers kept per service at most: all its environments, and each environment filter.
pub const MAX_FILTERS: usize = 64;

/// One kept answer.
struct Entry {
    /// The index the answer was read at (its `index` field and `X-Slipway-Index`).
    index: i64,
    /// The serialized body.
    body: Bytes,
    /// When it was read, for the `ttl`.
    read_at: Instant,
}

impl Entry {
    fn valid(&self, min_index: i64, ttl: Duration, now: Instant) -> bool {
        self.index >= min_index && now.saturating_duration_since(self.read_at) < ttl
    }
}

/// A service's answers by filter: an environment's name, or `""` for all of them (names are
/// never empty: they are checked before a lookup).
type Filters = HashMap<String, Entry>;

/// The answers of one registry replica (shared by its HTTP workers and its index watcher).
pub struct AnswerCache {
    /// By service name, then filter.
    services: RwLock<HashMap<String, Filters>>,
    /// How long an answer is kept at most; zero keeps none (every read goes to the database).
    ttl: Duration,
    /// Moved by every [`AnswerCache::forget`] and [`AnswerCache::clear`]: a read that began
    /// before one must not keep what it read after it (it may hold the older `last_seen`).
    generation: AtomicU64,
}

impl AnswerCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            services: RwLock::new(HashMap::new()),
            ttl,
            generation: AtomicU64::new(0),
        }
    }

    /// Taken before reading the database for an answer, handed back to [`AnswerCache::put`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The kept answer `(index, body)` for `service` and `environment`, if it was read at
    /// `min_index` or later and less than `ttl` ago.
    pub fn get(
        &self,
        service: &str,
        environment: Option<&str>,
        min_index: i64,
    ) -> Option<(i64, Bytes)> {
        if self.ttl.is_zero() {
            return None;
        }
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        let entry = services.get(service)?.get(environment.unwrap_or(""))?;
        entry
            .valid(min_index, self.ttl, Instant::now())
            .then(|| (entry.index, entry.body.clone()))
    }

    /// Keeps `body`, read at `index` after [`AnswerCache::generation`] said `generation`,
    /// unless answers were dropped since (it may be older than what they dropped) or a newer
    /// answer is kept already (two reads that missed at once race: the newer index wins).
    pub fn put(
        &self,
        service: &str,
        environment: Option<&str>,
        (index, generation): (i64, u64),
        body: Bytes,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let filter = environment.unwrap_or("");
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Under the lock, which `forget` and `clear` move the generation under too.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if !services.contains_key(service) && services.len() >= MAX_SERVICES {
            // The newest index kept stands in for the watched one: answers older than it, or
            // expired, cannot be served again.
            let newest = services
                .values()
                .flat_map(|f| f.values().map(|e| e.index))
                .max()
                .unwrap_or(index);
            services.retain(|_, filters| {
                filters.retain(|_, e| e.valid(newest, self.ttl, now));
                !filters.is_empty()
            });
            if services.len() >= MAX_SERVICES {
                services.clear();
            }
        }
        let filters = services.entry(service.to_owned()).or_default();
        if filters.get(filter).is_some_and(|e| e.index > index) {
            return;
        }
        if !filters.contains_key(filter) && filters.len() >= MAX_FILTERS {
            filters.clear();
        }
        filters.insert(
            filter.to_owned(),
            Entry {
                index,
                body,
                read_at: now,
            },
        );
    }

    /// Drops every answer of `service` (a heartbeat moved its instances' `last_seen`).
    pub fn forget(&self, service: &str) {
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        services.remove(service);
    }

    /// Drops every answer.
    pub fn clear(&self) {
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        services.clear();
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> AnswerCache {
        AnswerCache::new(Duration::from_secs(60))
    }

    #[test]
    fn an_answer_holds_until_the_index_moves_past_it() {
        let c = cache();
        c.put(
            "web",
            None,
            (7, c.generation()),
            Bytes::from_static(b"seven"),
        );
        assert_eq!(
            c.get("web", None, 7),
            Some((7, Bytes::from_static(b"seven")))
        );
        assert_eq!(
            c.get("web", None, 3),
            Some((7, Bytes::from_static(b"seven")))
        );
        assert_eq!(c.get("web", None, 8), None, "the watch moved past it");
    }

    #[test]
    fn answers_are_kept_per_service_and_environment_filter() {
        let c = cache();
        c.put("web", None, (1, c.generation()), Bytes::from_static(b"all"));
        c.put(
            "web",
            Some("prod"),
            (1, c.generation()),
            Bytes::from_static(b"prod"),
        );
        assert_eq!(c.get("web", Some("prod"), 1).unwrap().1, "prod");
        assert_eq!(c.get("web", None, 1).unwrap().1, "all");
        assert_eq!(c.get("web", Some("staging"), 1), None);
        assert_eq!(c.get("api", None, 1), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn an_older_read_does_not_replace_a_newer_answer() {
        let c = cache();
        c.put(
            "web",
            None,
            (5, c.generation()),
            Bytes::from_static(b"five"),
        );
        c.put(
            "web",
            None,
            (4, c.generation()),
            Bytes::from_static(b"four"),
        );
        assert_eq!(
            c.get("web", None, 0).unwrap(),
            (5, Bytes::from_static(b"five"))
        );
        c.put("web", None, (6, c.generation()), Bytes::from_static(b"six"));
        assert_eq!(c.get("web", None, 0).unwrap().0, 6);
    }

    #[test]
    fn an_answer_expires_after_the_ttl_and_a_zero_ttl_keeps_nothing() {
        let c = AnswerCache::new(Duration::from_millis(1));
        c.put("web", None, (1, c.generation()), Bytes::from_static(b"x"));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get("web", None, 1), None, "expired");

        let off = AnswerCache::new(Duration::ZERO);
        off.put("web", None, (1, off.generation()), Bytes::from_static(b"x"));
        assert!(off.is_empty());
        assert_eq!(off.get("web", None, 1), None);
    }

    #[test]
    fn forget_drops_one_service_and_clear_all() {
        let c = cache();
        c.put("web", None, (1, c.generation()), Bytes::new());
        c.put("web", Some("prod"), (1, c.generation()), Bytes::new());
        c.put("api", None, (1, c.generation()), Bytes::new());
        c.forget("web");
        assert_eq!(c.get("web", None, 1), None);
        assert_eq!(c.get("web", Some("prod"), 1), None);
        assert!(c.get("api", None, 1).is_some());
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn a_read_that_began_before_a_forget_is_not_kept() {
        let c = cache();
        let before = c.generation();
        c.forget("web"); // a heartbeat's notification, while the read was at the database
        c.put(
            "web",
            None,
            (1, before),
            Bytes::from_static(b"old last_seen"),
        );
        assert_eq!(c.get("web", None, 1), None);
        c.put("web", None, (1, c.generation()), Bytes::from_static(b"new"));
        assert_eq!(c.get("web", None, 1).unwrap().1, "new");
    }

    #[test]
    fn the_map_stays_bounded_dropping_stale_answers_first() {
        let c = cache();
        for i in 0..MAX_SERVICES - 1 {
            c.put(&format!("s{i}"), None, (1, c.generation()), Bytes::new());
        }
        c.put(
            "fresh",
            None,
            (2, c.generation()),
            Bytes::from_static(b"new"),
        );
        assert_eq!(c.len(), MAX_SERVICES);
        // Full: the next new service prunes every answer older than the newest index.
        c.put("another", None, (2, c.generation()), Bytes::new());
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("fresh", None, 2).unwrap().1, "new");
        // Full of valid answers: all go, the new one stays.
        for i in 0..MAX_SERVICES {
            c.put(&format!("t{i}"), None, (2, c.generation()), Bytes::new());
        }
        assert!(c.len() <= MAX_SERVICES);
        assert!(c.get(&format!("t{}", MAX_SERVICES - 1), None, 2).is_some());
        // One service's filters are bounded too.
        for i in 0..=MAX_FILTERS {
            c.put(
                "web",
                Some(&format!("env-{i}")),
                (2, c.generation()),
                Bytes::new(),
            );
        }
        assert!(
            c.get("web", Some(&format!("env-{MAX_FILTERS}")), 2)
                .is_some()
        );
        assert!(c.len() <= MAX_SERVICES + MAX_FILTERS);
    }
}
