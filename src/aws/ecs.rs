//! ECS through the official SDK: describe services (10 per call, the API's limit) and set desired
//! counts.

use async_trait::async_trait;
use aws_sdk_ecs::Client;

use super::retry::{self, Idempotency};
use super::{Ecs, EcsService};
use crate::{Error, Result};

const SERVICE: &str = "ecs";
/// DescribeServices accepts at most 10 services per call.
const BATCH: usize = 10;

/// The `Ecs` edge backed by Amazon ECS.
pub struct EcsClient {
    client: Client,
}

impl EcsClient {
    pub fn new(client: Client) -> Self {
        EcsClient { client }
    }
}

fn cluster_not_found(cluster: &str) -> Error {
    Error::NotFound(format!(
        "ECS cluster {cluster} not found: check spec.backends[].ecs.cluster (and the region)"
    ))
}

#[async_trait]
impl Ecs for EcsClient {
    async fn describe(&self, cluster: &str, services: &[String]) -> Result<Vec<EcsService>> {
        let mut found = Vec::with_capacity(services.len());
        for batch in services.chunks(BATCH) {
            let out = retry::call_optional(
                SERVICE,
                "DescribeServices",
                &["ClusterNotFoundException"],
                || {
                    self.client
                        .describe_services()
                        .cluster(cluster)
                        .set_services(Some(batch.to_vec()))
                        .send()
                },
            )
            .await?
            .ok_or_else(|| cluster_not_found(cluster))?;
            // Missing services come back as `failures` entries; absent from the result is enough.
            for s in out.services.unwrap_or_default() {
                if s.status.as_deref() == Some("INACTIVE") {
                    continue;
                }
                found.push(service(cluster, s));
            }
        }
        Ok(found)
    }

    async fn set_desired(&self, cluster: &str, service: &str, desired: i32) -> Result<()> {
        let out = retry::call_with(
            SERVICE,
            "UpdateService",
            Idempotency::NonIdempotent,
            &["ClusterNotFoundException", "ServiceNotFoundException"],
            retry::backoff(),
            || {
                self.client
                    .update_service()
                    .cluster(cluster)
                    .service(service)
                    .desired_count(desired)
                    .send()
            },
        )
        .await?;
        match out {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!(
                "ECS service {service} not found in cluster {cluster}: check spec.backends[].ecs"
            ))),
        }
    }
}

fn service(cluster: &str, s: aws_sdk_ecs::types::Service) -> EcsService {
    let deployments = s.deployments.unwrap_or_default();
    let rollout_state = deployments
        .iter()
        .find(|d| d.status.as_deref() == Some("PRIMARY"))
        .and_then(|d| d.rollout_state.as_ref())
        .map(|r| r.as_str().to_string());
    EcsService {
        cluster: cluster.to_string(),
        service: s.service_name.unwrap_or_default(),
        arn: s.service_arn.unwrap_or_default(),
        status: s.status.unwrap_or_default(),
        desired: s.desired_count,
        running: s.running_count,
        pending: s.pending_count,
        deployments: deployments.len(),
        rollout_state,
        target_groups: s
            .load_balancers
            .unwrap_or_default()
            .into_iter()
            .filter_map(|lb| lb.target_group_arn)
            .collect(),
    }
}
