//! A bound pod's log, followed as [`TargetEvent::Logs`] batches: one follower per run of the
//! pod's `app` container (the log stream of a container ends when it exits; the next run is
//! followed anew), the sequence continuing over the instance's pods and runs.

use chrono::Utc;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use slipway_events::deploy::LogLine;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use super::objects::CONTAINER;
use crate::target::TargetEvent;

/// Lines kept per instance for the reason of an exit ([`TargetEvent::Exited`]'s `last_lines`).
const RECENT_LINES: usize = 20;

/// Follows a bound pod's log (container `app`, its current run) as [`TargetEvent::Logs`]
/// batches until the run ends or `token` is cancelled (the pod or the instance went, or a
/// newer run is followed).
pub(crate) async fn follow_logs(
    shared: Arc<Shared>,
    environment: String,
    id: Uuid,
    pod: String,
    token: CancellationToken,
) {
    let Some(cluster) = shared.clusters.get(&environment) else {
        return;
    };
    let Ok(api) = cluster.api::<Pod>().await else {
        return;
    };
    let params = LogParams {
        container: Some(CONTAINER.to_owned()),
        follow: true,
        ..LogParams::default()
    };
    let reader = tokio::select! {
        r = api.log_stream(&pod, &params) => r,
        () = token.cancelled() => return,
    };
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(instance = %id, %pod, error = %e, "no log of the pod");
            return;
        }
    };
    let mut lines = Box::pin(reader.lines());
    let batch = shared.settings.log_batch();
    let mut pending: Vec<LogLine> = Vec::new();
    let flush = |pending: &mut Vec<LogLine>| {
        if pending.is_empty() {
            return;
        }
        let mut instances = shared.instances();
        let Some(instance) = instances.get_mut(&id) else {
            pending.clear();
            return;
        };
        let first_seq = instance.log_seq;
        instance.log_seq += pending.len() as u64;
        instance
            .recent
            .extend(pending.iter().map(|l| l.line.clone()));
        let extra = instance.recent.len().saturating_sub(RECENT_LINES);
        instance.recent.drain(..extra);
        drop(instances);
        let _ = shared.events.send(TargetEvent::Logs {
            instance_id: id,
            first_seq,
            lines: std::mem::take(pending),
        });
    };
    loop {
        let next = tokio::select! {
            l = lines.next() => l,
            () = tokio::time::sleep(batch), if !pending.is_empty() => {
                flush(&mut pending);
                continue;
            }
            () = token.cancelled() => break,
        };
        match next {
            Some(Ok(line)) => pending.push(LogLine {
                // The pod log API merges the container's stdout and stderr.
                stream: "stdout".into(),
                line,
                at: Utc::now(),
            }),
            _ => break,
        }
    }
    flush(&mut pending);
}
