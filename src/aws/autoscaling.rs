//! Application Auto Scaling through the official SDK, for ECS services whose desired count an
//! autoscaler owns (`ecs:service:DesiredCount`). trafficshift never writes such a count: it moves
//! the scalable target's minimum instead, and the autoscaler keeps scaling above it.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
use aws_sdk_applicationautoscaling::Client;

use super::retry::{self, Idempotency};
use super::{Autoscaling, ScalableTarget};
use crate::Result;

const SERVICE: &str = "application-autoscaling";
/// DescribeScalableTargets accepts at most 50 resource ids per call.
const BATCH: usize = 50;

/// The `Autoscaling` edge backed by Application Auto Scaling.
pub struct AppAutoscaling {
    client: Client,
}

impl AppAutoscaling {
    pub fn new(client: Client) -> Self {
        AppAutoscaling { client }
    }
}

/// The last segment of a name or ARN (`arn:aws:ecs:…:cluster/prod` -> `prod`,
/// `arn:aws:ecs:…:service/prod/web` -> `web`): resource ids use bare names.
fn bare(name_or_arn: &str) -> &str {
    if name_or_arn.starts_with("arn:") {
        name_or_arn.rsplit('/').next().unwrap_or(name_or_arn)
    } else {
        name_or_arn
    }
}

/// The resource id Application Auto Scaling uses for an ECS service.
pub fn resource_id(cluster: &str, service: &str) -> String {
    format!("service/{}/{}", bare(cluster), bare(service))
}

#[async_trait]
impl Autoscaling for AppAutoscaling {
    async fn ecs_targets(
        &self,
        services: &[(String, String)],
    ) -> Result<HashMap<(String, String), ScalableTarget>> {
        let by_id: HashMap<String, &(String, String)> = services
            .iter()
            .map(|s| (resource_id(&s.0, &s.1), s))
            .collect();
        let mut ids: Vec<&String> = by_id.keys().collect();
        ids.sort();
        let mut found = HashMap::new();
        for batch in ids.chunks(BATCH) {
            let batch: Vec<String> = batch.iter().map(|s| s.to_string()).collect();
            let mut token: Option<String> = None;
            loop {
                let out = retry::call(
                    SERVICE,
                    "DescribeScalableTargets",
                    Idempotency::Idempotent,
                    || {
                        self.client
                            .describe_scalable_targets()
                            .service_namespace(ServiceNamespace::Ecs)
                            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                            .set_resource_ids(Some(batch.clone()))
                            .set_next_token(token.clone())
                            .send()
                    },
                )
                .await?;
                for t in out.scalable_targets.unwrap_or_default() {
                    if let Some(key) = by_id.get(&t.resource_id) {
                        found.insert(
                            (*key).clone(),
                            ScalableTarget {
                                min: t.min_capacity,
                                max: t.max_capacity,
                            },
                        );
                    }
                }
                match out.next_token.filter(|t| !t.is_empty()) {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
        }
        Ok(found)
    }

    async fn set_bounds(&self, cluster: &str, service: &str, bounds: ScalableTarget) -> Result<()> {
        let id = resource_id(cluster, service);
        // Absolute bounds: repeating the call after an unknown outcome sets the same values.
        retry::call(
            SERVICE,
            "RegisterScalableTarget",
            Idempotency::Idempotent,
            || {
                self.client
                    .register_scalable_target()
                    .service_namespace(ServiceNamespace::Ecs)
                    .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                    .resource_id(&id)
                    .min_capacity(bounds.min)
                    .max_capacity(bounds.max)
                    .send()
            },
        )
        .await?;
        Ok(())
    }
}

/// For callers whose services have no scalable targets (tests with hand-written fakes of the
/// other edges): no targets, and any write is an error.
pub struct NoAutoscaling;

#[async_trait]
impl Autoscaling for NoAutoscaling {
    async fn ecs_targets(
        &self,
        _: &[(String, String)],
    ) -> Result<HashMap<(String, String), ScalableTarget>> {
        Ok(HashMap::new())
    }

    async fn set_bounds(&self, cluster: &str, service: &str, _: ScalableTarget) -> Result<()> {
        Err(crate::Error::Other(format!(
            "no Application Auto Scaling edge configured to change {cluster}/{service}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_use_bare_names() {
        assert_eq!(resource_id("prod", "web"), "service/prod/web");
        assert_eq!(
            resource_id(
                "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "arn:aws:ecs:us-east-1:123456789012:service/prod/web"
            ),
            "service/prod/web"
        );
    }
}
