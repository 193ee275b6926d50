//! The routing table: what discovery answered, reshaped for the request path.
//!
//! A [`Table`] is immutable once built; the router swaps whole tables (see [`crate::Edge`]), so
//! a request sees either the old set of releases and weights or the new one, never a mix. Only
//! the round-robin counters inside it change, and they are atomics.
//!
//! Selection ([`Route::choose`]) is pure apart from those counters: the caller passes the random
//! roll, which keeps it testable without statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;
use slipway_ids::InstanceId;

use crate::metrics::{EdgeMetrics, ReleaseMetrics, RouteMetrics};
use crate::platform::PlatformAddresses;

/// The registry's answer and its parts, from the wire contract the registry serialises.
pub use slipway_wire::instances::{Health, InstanceState, RouteInstance as InstanceEntry};
pub use slipway_wire::routes::{Discovery, ReleaseWeight as WeightEntry, Route as RouteEntry};

/// One instance traffic can go to.
#[derive(Debug)]
pub struct Upstream {
    pub id: InstanceId,
    /// `host:port`, what is dialled (and the key of the connection pools).
    pub address: Box<str>,
    /// The same as a `Host` header value: the instance sees its own address as host.
    pub host: HeaderValue,
}

/// The routable instances of one release, and its weight.
#[derive(Debug)]
struct Pool {
    release: i32,
    weight: u64,
    instances: Vec<Upstream>,
    /// Round-robin position; wraps harmlessly.
    next: AtomicUsize,
    metrics: ReleaseMetrics,
}

/// Where requests for one service in one environment go.
#[derive(Debug)]
pub struct Route {
    pub service: String,
    pub environment: String,
    /// Only releases with at least one routable instance.
    pools: Vec<Pool>,
    /// No weights were set: every routable instance gets an equal share.
    equal_share: bool,
    pub metrics: RouteMetrics,
}

/// The instance picked for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    pub release: i32,
    pub upstream: &'a Upstream,
    /// The release's collectors.
    pub metrics: &'a ReleaseMetrics,
}

/// An instance left out of the table because its address is one of the platform's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Refused {
    pub service: String,
    pub instance: InstanceId,
    pub address: String,
}

impl Route {
    fn build(
        entry: &RouteEntry,
        platform: &PlatformAddresses,
        metrics: &EdgeMetrics,
        refused: &mut Vec<Refused>,
    ) -> Self {
        let equal_share = entry.weights.is_empty();
        let mut pools: Vec<Pool> = Vec::new();
        for instance in entry.instances.iter().filter(|i| i.routable) {
            if platform.contains(&instance.address) {
                refused.push(Refused {
                    service: entry.service.clone(),
                    instance: instance.id,
                    address: instance.address.clone(),
                });
                continue;
            }
            let Some(host) = host_port(&instance.address) else {
                tracing::warn!(
                    service = %entry.service,
                    instance = %instance.id,
                    address = %instance.address,
                    "discovery gave an instance address that is not host:port; skipping it"
                );
                continue;
            };
            let upstream = Upstream {
                id: instance.id,
                address: instance.address.as_str().into(),
                host,
            };
            match pools.iter_mut().find(|p| p.release == instance.release) {
                Some(pool) => pool.instances.push(upstream),
                None => pools.push(Pool {
                    release: instance.release,
                    weight: 0,
                    instances: vec![upstream],
                    next: AtomicUsize::new(0),
                    metrics: metrics.release(&entry.service, &entry.environment, instance.release),
                }),
            }
        }
        for pool in &mut pools {
            pool.weight = if equal_share {
                pool.instances.len() as u64
            } else {
                // Releases absent from the weights get none of the traffic: a blue-green switch
                // to {v2: 100} must leave v1 without requests even while its instances run.
                entry
                    .weights
                    .iter()
                    .filter(|w| w.release == pool.release)
                    .map(|w| u64::from(w.weight))
                    .sum()
            };
        }
        pools.sort_by_key(|p| p.release);
        Self {
            service: entry.service.clone(),
            environment: entry.environment.clone(),
            pools,
            equal_share,
            metrics: metrics.route(&entry.service, &entry.environment),
        }
    }

    /// Picks a release by weight among those with an instance not in `tried`, then the next
    /// instance of that release round-robin, skipping `tried`. `roll` is a uniform random number.
    /// `None` when nothing is left (no routable instance, all weights zero, or all tried).
    pub fn choose(&self, roll: u64, tried: &[InstanceId]) -> Option<Choice<'_>> {
        let untried = |pool: &Pool| {
            pool.instances
                .iter()
                .filter(|u| !tried.contains(&u.id))
                .count() as u64
        };
        let effective = |pool: &Pool| {
            let left = untried(pool);
            match (left, self.equal_share) {
                (0, _) => 0,
                // Equal share: each remaining instance weighs one.
                (left, true) => left,
                (_, false) => pool.weight,
            }
        };
        let total: u64 = self.pools.iter().map(effective).sum();
        if total == 0 {
            return None;
        }
        let mut point = roll % total;
        let pool = self.pools.iter().find(|pool| {
            let w = effective(pool);
            if point < w {
                true
            } else {
                point -= w;
                false
            }
        })?;
        let n = pool.instances.len();
        // One step per request, not per attempt: a retry advancing the counter too would make
        // requests that start on a dead instance keep starting there (the live one would always
        // be the retry's pick), so a retry starts from the current position instead.
        let start = if tried.is_empty() {
            pool.next.fetch_add(1, Ordering::Relaxed)
        } else {
            pool.next.load(Ordering::Relaxed)
        };
        (0..n)
            .map(|k| &pool.instances[(start.wrapping_add(k)) % n])
            .find(|u| !tried.contains(&u.id))
            .map(|upstream| Choice {
                release: pool.release,
                upstream,
                metrics: &pool.metrics,
            })
    }

    /// How many routable instances the route has (all releases).
    pub fn routable_instances(&self) -> usize {
        self.pools.iter().map(|p| p.instances.len()).sum()
    }
}

/// `address` as a `Host` value when it looks like `host:port`.
fn host_port(address: &str) -> Option<HeaderValue> {
    let (host, port) = address.rsplit_once(':')?;
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !(valid_host && port.parse::<u16>().is_ok()) {
        return None;
    }
    HeaderValue::from_str(address).ok()
}

/// Every route, by service then environment.
#[derive(Debug, Default)]
pub struct Table {
    /// The discovery index (table version) this table was built from; `None` before the
    /// first answer.
    pub index: Option<u64>,
    routes: HashMap<String, HashMap<String, Route>>,
    /// Instances dropped because they claim a platform address (see [`crate::platform`]).
    pub refused: Vec<Refused>,
}

impl Table {
    /// The table of `discovery`, without any instance at one of `platform`'s addresses.
    /// Every route's collectors are resolved here, once per table, not per request.
    pub fn build(
        discovery: &Discovery,
        platform: &PlatformAddresses,
        metrics: &EdgeMetrics,
    ) -> Self {
        let mut routes: HashMap<String, HashMap<String, Route>> = HashMap::new();
        let mut refused = Vec::new();
        for entry in &discovery.routes {
            routes
                .entry(entry.service.to_ascii_lowercase())
                .or_default()
                .insert(
                    entry.environment.to_ascii_lowercase(),
                    Route::build(entry, platform, metrics, &mut refused),
                );
        }
        Self {
            index: Some(discovery.index),
            routes,
            refused,
        }
    }

    /// The route of `service` in `environment` (names compared in lower case, like host names).
    pub fn route(&self, service: &str, environment: &str) -> Option<&Route> {
        self.routes
            .get(lower(service).as_ref())?
            .get(lower(environment).as_ref())
    }
}

/// `text` in lower case, allocating only when it is not already.
fn lower(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        text.to_ascii_lowercase().into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    use slipway_ids::ServiceId;

    fn metrics() -> EdgeMetrics {
        EdgeMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    /// The id of the instance named `name` in a test (same name, same id).
    fn id(name: &str) -> InstanceId {
        let mut bytes = [0u8; 16];
        for (b, c) in bytes.iter_mut().zip(name.bytes()) {
            *b = c;
        }
        InstanceId::from_uuid(uuid::Uuid::from_bytes(bytes))
    }

    fn instance(name: &str, release: i32, health: &str, state: &str) -> InstanceEntry {
        let health = match health {
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            _ => Health::Starting,
        };
        let state = InstanceState::parse(state).unwrap();
        InstanceEntry::new(
            id(name),
            format!("127.0.0.1:{}", 10000 + name.len()),
            release,
            health,
            state,
        )
    }

    fn route(weights: &[(i32, u32)], instances: Vec<InstanceEntry>) -> Route {
        route_in(&PlatformAddresses::default(), weights, instances).0
    }

    fn route_in(
        platform: &PlatformAddresses,
        weights: &[(i32, u32)],
        instances: Vec<InstanceEntry>,
    ) -> (Route, Vec<Refused>) {
        let mut refused = Vec::new();
        let route = Route::build(
            &RouteEntry {
                service: "hello".into(),
                service_id: ServiceId::new(),
                environment: "prod".into(),
                weights: weights
                    .iter()
                    .map(|&(release, weight)| WeightEntry { release, weight })
                    .collect(),
                instances,
            },
            platform,
            &metrics(),
            &mut refused,
        );
        (route, refused)
    }

    /// Releases chosen for rolls 0..n (every roll once: the exact split, no statistics).
    fn releases(route: &Route, n: u64) -> HashMap<i32, usize> {
        let mut seen = HashMap::new();
        for roll in 0..n {
            *seen
                .entry(route.choose(roll, &[]).unwrap().release)
                .or_default() += 1;
        }
        seen
    }

    #[test]
    fn splits_by_weight() {
        let r = route(
            &[(1, 80), (2, 20)],
            vec![
                instance("a", 1, "healthy", "running"),
                instance("b", 2, "healthy", "running"),
            ],
        );
        let seen = releases(&r, 100);
        assert_eq!(seen[&1], 80);
        assert_eq!(seen[&2], 20);
    }

    #[test]
    fn only_running_healthy_instances_are_routable() {
        let r = route(
            &[],
            vec![
                instance("a", 1, "healthy", "running"),
                instance("bb", 1, "unhealthy", "running"),
                instance("ccc", 1, "starting", "running"),
                instance("dddd", 1, "healthy", "draining"),
            ],
        );
        assert_eq!(r.routable_instances(), 1);
        for roll in 0..10 {
            assert_eq!(r.choose(roll, &[]).unwrap().upstream.id, id("a"));
        }
    }

    #[test]
    fn a_weighted_release_without_routable_instances_is_ignored() {
        let r = route(
            &[(1, 80), (2, 20)],
            vec![
                instance("a", 1, "unhealthy", "running"),
                instance("b", 2, "healthy", "running"),
            ],
        );
        assert_eq!(releases(&r, 50)[&2], 50);
    }

    #[test]
    fn a_release_missing_from_the_weights_gets_nothing() {
        let r = route(
            &[(2, 100)],
            vec![
                instance("a", 1, "healthy", "running"),
                instance("b", 2, "healthy", "running"),
            ],
        );
        assert_eq!(releases(&r, 50), HashMap::from([(2, 50)]));

        let only_v1 = route(&[(2, 100)], vec![instance("a", 1, "healthy", "running")]);
        assert!(only_v1.choose(0, &[]).is_none());
    }

    #[test]
    fn without_weights_every_instance_shares_equally() {
        let r = route(
            &[],
            vec![
                instance("a", 1, "healthy", "running"),
                instance("bb", 2, "healthy", "running"),
                instance("ccc", 2, "healthy", "running"),
            ],
        );
        let seen = releases(&r, 300);
        assert_eq!(seen[&1], 100);
        assert_eq!(seen[&2], 200);
    }

    #[test]
    fn round_robin_within_a_release() {
        let r = route(
            &[(1, 1)],
            vec![
                instance("a", 1, "healthy", "running"),
                instance("bb", 1, "healthy", "running"),
            ],
        );
        let ids: Vec<InstanceId> = (0..4)
            .map(|_| r.choose(0, &[]).unwrap().upstream.id)
            .collect();
        assert_eq!(ids, [id("a"), id("bb"), id("a"), id("bb")]);
    }

    #[test]
    fn never_picks_a_tried_instance_and_runs_out() {
        let r = route(
            &[(1, 99), (2, 1)],
            vec![
                instance("a", 1, "healthy", "running"),
                instance("bb", 2, "healthy", "running"),
            ],
        );
        for roll in 0..100 {
            let next = r.choose(roll, &[id("a")]).unwrap();
            assert_eq!(
                next.upstream.id,
                id("bb"),
                "release 1 is exhausted, so 2 takes all"
            );
        }
        assert!(r.choose(0, &[id("a"), id("bb")]).is_none());
    }

    #[test]
    fn no_routable_instance_is_no_choice() {
        let r = route(&[], vec![instance("a", 1, "unhealthy", "running")]);
        assert!(r.choose(7, &[]).is_none());
    }

    #[test]
    fn rejects_addresses_that_are_not_host_port() {
        assert_eq!(host_port("127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert!(host_port("127.0.0.1").is_none());
        assert!(host_port("evil.com/x:80").is_none());
        assert!(host_port("host:99999").is_none());
    }

    #[test]
    fn instances_at_platform_addresses_are_never_routed() {
        let platform = PlatformAddresses::parse(["127.0.0.1:8082", "registry:8080"]).unwrap();
        let mut forged = instance("a", 1, "healthy", "running");
        forged.address = "127.0.0.1:8082".into();
        let mut named = instance("bb", 1, "healthy", "running");
        named.address = "registry:8080".into();
        let real = instance("ccc", 1, "healthy", "running");
        let (r, refused) = route_in(&platform, &[], vec![forged, named, real]);
        assert_eq!(r.routable_instances(), 1);
        for roll in 0..10 {
            assert_eq!(r.choose(roll, &[]).unwrap().upstream.id, id("ccc"));
        }
        let ids: Vec<InstanceId> = refused.iter().map(|r| r.instance).collect();
        assert_eq!(ids, [id("a"), id("bb")]);
        assert_eq!(refused[0].address, "127.0.0.1:8082");
    }

    #[test]
    fn parses_the_discovery_answer() {
        let answer: Discovery = serde_json::from_value(serde_json::json!({
            "index": 12,
            "routes": [{"service": "Hello", "service_id": ServiceId::new(), "environment": "prod",
                "weights": [{"release": 1, "weight": 100}],
                "instances": [{"id": id("i"), "address": "127.0.0.1:41234", "release": 1,
                    "health": "healthy", "state": "running", "routable": true}]}]
        }))
        .unwrap();
        let table = Table::build(&answer, &PlatformAddresses::default(), &metrics());
        assert_eq!(table.index, Some(12));
        let route = table.route("hello", "PROD").unwrap();
        assert_eq!(
            &*route.choose(0, &[]).unwrap().upstream.address,
            "127.0.0.1:41234"
        );
        assert!(table.route("hello", "staging").is_none());
    }
}
