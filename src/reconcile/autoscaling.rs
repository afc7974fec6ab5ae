//! Application Auto Scaling: an autoscaled ECS service's desired count belongs to its
//! autoscaler, so the capacity a rollout needs is asked for through the scalable target's bounds.

use std::collections::HashMap;

use crate::aws::ScalableTarget;
use crate::rollout::Decision;
use crate::spec::TrafficSplit;

use super::Context;

/// A change of an autoscaled ECS service's scalable-target bounds (its desired count belongs to
/// Application Auto Scaling, so trafficshift moves the minimum instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AasChange {
    pub backend: String,
    pub cluster: String,
    pub service: String,
    pub from: ScalableTarget,
    pub to: ScalableTarget,
}

impl AasChange {
    /// Back to (towards) the user's bounds: a scale-down, held like one.
    pub fn lowers(&self) -> bool {
        self.to.min < self.from.min || self.to.max < self.from.max
    }
}

/// Bounds for the autoscaled ECS backends of a split. The decided task count becomes the
/// scalable target's minimum (the maximum grows to it if needed), so the autoscaler can scale
/// above it but not below; when the count falls back to the user's minimum, the user's bounds
/// return. The user's bounds are kept in the state TXT (`d.state.autoscaling`) from the first
/// raise until they are restored; until a batch has written them they live in the `Context`.
pub(super) fn autoscaling_changes(
    ctx: &Context,
    split: &TrafficSplit,
    stored: Option<&crate::state::RolloutState>,
    d: &mut Decision,
    scalable: &HashMap<(String, String), ScalableTarget>,
) -> Vec<AasChange> {
    let mut out = Vec::new();
    let mut remembered = ctx.bounds.lock().expect("bounds lock");
    for b in &split.spec.backends {
        let Some(e) = &b.ecs else { continue };
        let key = (e.cluster.clone(), e.service.clone());
        let Some(&live) = scalable.get(&key) else {
            continue;
        };
        let Some(&want) = d.ecs_desired.get(&b.name) else {
            continue;
        };
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        let user = stored
            .and_then(|s| s.autoscaling.get(&b.name).copied())
            .or_else(|| remembered.get(&key).copied())
            .unwrap_or(live);
        let to = if want > user.min {
            ScalableTarget {
                min: want,
                max: user.max.max(want),
            }
        } else {
            user
        };
        if to == user && live == user {
            // Restored (or never raised): forget the user's bounds.
            d.state.autoscaling.remove(&b.name);
            remembered.remove(&key);
        } else {
            d.state.autoscaling.insert(b.name.clone(), user);
            if stored.is_none_or(|s| !s.autoscaling.contains_key(&b.name)) {
                remembered.insert(key.clone(), user);
            }
        }
        if live != to {
            out.push(AasChange {
                backend: b.name.clone(),
                cluster: e.cluster.clone(),
                service: e.service.clone(),
                from: live,
                to,
            });
        }
    }
    out
}
