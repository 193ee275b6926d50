//! Wake-ups for drivers waiting on something (health, their turn, a cancel), by environment.
//!
//! A driver that waits sleeps until its tick or until a fact about its environment arrives: a
//! health verdict on one of its instances, a command for it. Waking every waiting driver on
//! every such fact made each verdict cost one pass (database reads, a registry call) per
//! deployment in flight: with 1,000 deployments at once, about a million passes for their
//! 1,000 verdicts, and the deployments finished minutes late. Facts whose environment is not
//! known here (a cancel names only the deployment; a release may auto-deploy anywhere) still
//! wake everybody, as they are rare.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use slipway_ids::ServiceId;
use tokio::sync::Notify;

type Key = (ServiceId, String);

/// The notifiers of the environments drivers wait on, and one for everybody.
#[derive(Default)]
pub struct Nudges {
    /// One notifier per environment with a driver waiting there; entries whose drivers are
    /// gone are swept when new ones are added.
    environments: Mutex<HashMap<Key, Weak<Notify>>>,
    everyone: Notify,
}

/// What one driver waits on: its environment's notifier and the one for everybody.
pub struct Subscription {
    environment: Option<Arc<Notify>>,
    nudges: Arc<Nudges>,
}

impl Nudges {
    /// The driver of a deployment to `environment` of `service` waits on this (and on
    /// everybody's); `None` when its environment is not known (it then wakes on every nudge
    /// for everybody, and its tick).
    pub fn subscribe(self: &Arc<Self>, environment: Option<(ServiceId, &str)>) -> Subscription {
        let environment = environment.map(|(service, env)| {
            let mut map = self
                .environments
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (service, env.to_owned());
            if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
                return live;
            }
            // Environments whose drivers all ended go here: linear in those tracked, once per
            // new one (a thousand deployments in flight: microseconds).
            map.retain(|_, w| w.strong_count() > 0);
            let notify = Arc::new(Notify::new());
            map.insert(key, Arc::downgrade(&notify));
            notify
        });
        Subscription {
            environment,
            nudges: self.clone(),
        }
    }

    /// Wakes the drivers waiting on `environment` of `service` (none: nothing happens).
    pub fn environment(&self, service: ServiceId, environment: &str) {
        let notify = self
            .environments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(service, environment.to_owned()))
            .and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiting driver.
    pub fn everyone(&self) {
        self.everyone.notify_waiters();
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.environments
            .lock()
            .map(|m| m.len())
            .unwrap_or_default()
    }
}

impl Subscription {
    /// Resolves at the next nudge for this driver's environment or for everybody. Create it
    /// (and `enable` it) before looking, so that a nudge arriving meanwhile is not missed.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        let everyone = self.nudges.everyone.notified();
        let own = self.environment.as_ref().map(|n| n.notified());
        async move {
            let mut everyone = std::pin::pin!(everyone);
            everyone.as_mut().enable();
            match own {
                Some(own) => {
                    let mut own = std::pin::pin!(own);
                    own.as_mut().enable();
                    tokio::select! {
                        _ = everyone => {}
                        _ = own => {}
                    }
                }
                None => everyone.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_nudge_wakes_the_drivers_of_its_environment_only() {
        let nudges = Arc::new(Nudges::default());
        let service = ServiceId::new();
        let (a, a2, b) = (
            nudges.subscribe(Some((service, "a"))),
            nudges.subscribe(Some((service, "a"))),
            nudges.subscribe(Some((service, "b"))),
        );
        let other_service = nudges.subscribe(Some((ServiceId::new(), "a")));
        // Futures made before the nudge see it, polled or not (the driver makes its own
        // before each pass, so a verdict arriving during the pass is not missed).
        let (wa, wa2, wb, wo) = (
            a.notified(),
            a2.notified(),
            b.notified(),
            other_service.notified(),
        );
        nudges.environment(service, "a");
        assert_eq!(wa.now_or_never(), Some(()));
        assert_eq!(wa2.now_or_never(), Some(()));
        assert_eq!(wb.now_or_never(), None, "another environment");
        assert_eq!(wo.now_or_never(), None, "the same name in another service");
        // A nudge for nobody's environment wakes nobody.
        let wa = a.notified();
        nudges.environment(service, "c");
        assert_eq!(wa.now_or_never(), None);
    }

    #[test]
    fn a_nudge_for_everyone_wakes_every_driver_even_those_of_no_known_environment() {
        let nudges = Arc::new(Nudges::default());
        let known = nudges.subscribe(Some((ServiceId::new(), "prod")));
        let unknown = nudges.subscribe(None);
        let (wk, wu) = (known.notified(), unknown.notified());
        nudges.everyone();
        assert_eq!(wk.now_or_never(), Some(()));
        assert_eq!(wu.now_or_never(), Some(()));
        // An environment's nudge does not reach a driver of no known environment.
        let wu = unknown.notified();
        nudges.environment(ServiceId::new(), "prod");
        assert_eq!(wu.now_or_never(), None);
    }

    #[test]
    fn environments_whose_drivers_are_gone_are_forgotten() {
        let nudges = Arc::new(Nudges::default());
        let service = ServiceId::new();
        let first = nudges.subscribe(Some((service, "a")));
        drop(nudges.subscribe(Some((service, "b"))));
        assert_eq!(nudges.tracked(), 2);
        // The next new environment sweeps "b", whose driver ended; "a" still has one.
        let _c = nudges.subscribe(Some((service, "c")));
        assert_eq!(nudges.tracked(), 2);
        let w = first.notified();
        nudges.environment(service, "a");
        assert_eq!(w.now_or_never(), Some(()));
    }
}
