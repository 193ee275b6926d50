//! Settings and start-up.

use std::time::Duration;

use serde::Deserialize;
use slipway_events::Topic;
use slipway_ids::ReplicaId;
use slipway_runtime::catalog::ServiceCatalog;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};
use tokio_util::sync::CancellationToken;

use crate::consumers::InstanceEvents;
use crate::health::shards::{self, Leases, ShardSettings, ShardSettingsError};
use crate::health::{Probers, probe};

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
    /// Section `[logs]`.
    #[serde(default)]
    pub logs: LogSettings,
    /// Section `[shards]`: how replicas split the instances they probe.
    #[serde(default)]
    pub shards: ShardSettings,
}

/// How long instance output is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Lines older than this are deleted.
    #[serde(default = "retention_hours")]
    pub retention_hours: u32,
    /// How often the pruning runs.
    #[serde(default = "prune_interval_ms")]
    pub prune_interval_ms: u64,
}

fn retention_hours() -> u32 {
    7 * 24
}

fn prune_interval_ms() -> u64 {
    3_600_000
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            retention_hours: retention_hours(),
            prune_interval_ms: prune_interval_ms(),
        }
    }
}

impl Settings {
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorStartError {
    #[error(transparent)]
    Runtime(#[from] StartError),
    #[error("cannot create the probes' HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot load the instances to probe: {0}")]
    Load(#[source] sqlx::Error),
    #[error(transparent)]
    Shards(#[from] ShardSettingsError),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    running: Running,
    probers: Probing,
}

/// A view of the instances a monitor probes now.
#[derive(Clone)]
pub struct Probing(Probers);

impl Probing {
    pub fn instances(&self) -> std::collections::BTreeSet<slipway_ids::InstanceId> {
        self.0.instances()
    }
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, MonitorStartError> {
        Self::build_as(settings, ReplicaId::for_process("monitor")).await
    }

    /// A monitor that leases its shards as `replica` (tests run several in one process).
    pub async fn build_as(
        settings: Settings,
        replica: ReplicaId,
    ) -> Result<Self, MonitorStartError> {
        settings.shards.validate()?;
        let mut runtime = Runtime::build("monitor", &settings.base, &MIGRATOR).await?;
        let catalog = ServiceCatalog::new(
            runtime.pool.clone(),
            "monitor.service-catalog",
            "watched_services",
        );
        runtime.consume(
            "events",
            &[Topic::Services, Topic::Instances, Topic::Deployments],
            catalog,
        );

        // Claim shards and resume probing their incarnations, before consuming more.
        let probers = Probers::new(
            runtime.pool.clone(),
            probe::client()?,
            runtime.cancel.child_token(),
            settings.shards.count,
        );
        let leases = Leases::new(
            runtime.pool.clone(),
            replica,
            settings.shards.count,
            Duration::from_millis(settings.shards.lease_ttl_ms),
        )
        .await
        .map_err(MonitorStartError::Load)?;
        shards::reconcile_once(&leases, &probers)
            .await
            .map_err(MonitorStartError::Load)?;
        tracing::info!(replica = %leases.owner(), instances = probers.instances().len(), "resuming probes");
        runtime.consume(
            "health",
            &[Topic::Instances],
            InstanceEvents::new(runtime.pool.clone(), probers.clone()),
        );
        runtime.spawn(
            "shard leases",
            shards::run(
                leases,
                probers.clone(),
                Duration::from_millis(settings.shards.reconcile_ms),
                runtime.cancel.clone(),
            ),
        );
        let (pool, cancel) = (runtime.pool.clone(), runtime.cancel.clone());
        runtime.spawn(
            "log pruning",
            prune_logs(pool, settings.logs.clone(), cancel),
        );

        runtime.relay_outbox()?;
        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let running = runtime.start(Access::Services(crate::routes::ACCESS), move |cfg| {
            cfg.app_data(pool.clone())
                .configure(crate::routes::configure);
        })?;
        Ok(Self {
            running,
            probers: Probing(probers),
        })
    }

    /// What this monitor probes (its shards' instances).
    pub fn probing(&self) -> Probing {
        self.probers.clone()
    }

    pub fn port(&self) -> u16 {
        self.running.port()
    }

    pub async fn run_until_stopped(self) -> Result<(), String> {
        self.running.run_until_stopped().await
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        self.running.run_until(shutdown).await
    }
}

/// Deletes log lines past the retention, now and then every interval, until shutdown. A
/// failed round is logged and retried at the next one.
async fn prune_logs(
    pool: sqlx::PgPool,
    settings: LogSettings,
    cancel: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let retention = chrono::Duration::hours(i64::from(settings.retention_hours));
    let mut ticker =
        tokio::time::interval(Duration::from_millis(settings.prune_interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        match crate::db::logs::prune(&pool, chrono::Utc::now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(lines = n, "pruned old log lines"),
            Err(e) => tracing::warn!(error = %e, "cannot prune log lines"),
        }
    }
}
