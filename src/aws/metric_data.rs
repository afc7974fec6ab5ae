//! The traffic measurement edge: CloudWatch GetMetricData for request counts, and the lookups
//! that name a backend's series (a target group's load balancer, the APIs mapped to a custom
//! domain).

use std::sync::Arc;

use async_trait::async_trait;
use aws_config::Region;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};

use super::retry::{self, Idempotency};
use crate::spec::AwsSpec;
use crate::traffic::{ApiStage, MetricQuery, PERIOD_SECS};
use crate::{Error, Result};

/// GetMetricData accepts at most 500 queries per call.
pub const MAX_QUERIES: usize = 500;

/// Datapoints of one query: (unix time, value).
pub type Series = Vec<(i64, f64)>;

/// What the traffic poller asks AWS.
#[async_trait]
pub trait TrafficSources: Send + Sync {
    /// Datapoints of every query between `start` and `end` (unix seconds), summed per 60 s
    /// period, in the order of `queries`. One GetMetricData call per 500 queries (plus pages).
    async fn metric_data(
        &self,
        queries: &[MetricQuery],
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>>;
    /// The ARN of the (first) load balancer a target group is attached to.
    async fn target_group_load_balancer(&self, target_group_arn: &str) -> Result<String>;
    /// The API stages mapped to a custom domain: REST base path mappings first, then HTTP API
    /// mappings. Empty when the domain maps nothing (its requests cannot be counted).
    async fn api_stages(&self, domain_name: &str) -> Result<Vec<ApiStage>>;
}

/// The traffic sources of every account a split can be in (`accounts::Accounts` in the
/// controller): a cross-account split's load balancers, APIs and metrics live in its role's
/// account, so they are read with that role's credentials.
#[async_trait]
pub trait TrafficAccounts: Send + Sync {
    /// The account of `aws` (`None`: the controller's own credentials) and its sources. An error
    /// (a role that cannot be assumed) leaves the shares of the splits using `aws` unknown.
    async fn traffic_sources(
        &self,
        aws: Option<&AwsSpec>,
    ) -> Result<(Arc<str>, Arc<dyn TrafficSources>)>;
}

/// `TrafficSources` backed by the SDK.
pub struct AwsTrafficSources {
    cloudwatch: aws_sdk_cloudwatch::Client,
    apigateway: aws_sdk_apigateway::Client,
    apigatewayv2: aws_sdk_apigatewayv2::Client,
    elbv2: aws_sdk_elasticloadbalancingv2::Client,
}

impl AwsTrafficSources {
    /// Clients from a loaded configuration, used as is (tests point it at moto).
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let config = if config.region().is_some() {
            config.clone()
        } else {
            config.to_builder().region(Region::new("us-east-1")).build()
        };
        AwsTrafficSources {
            cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
            apigateway: aws_sdk_apigateway::Client::new(&config),
            apigatewayv2: aws_sdk_apigatewayv2::Client::new(&config),
            elbv2: aws_sdk_elasticloadbalancingv2::Client::new(&config),
        }
    }
}

fn to_sdk(id: String, q: &MetricQuery) -> MetricDataQuery {
    let mut metric = Metric::builder()
        .namespace(&q.namespace)
        .metric_name(&q.metric_name);
    for (k, v) in &q.dimensions {
        metric = metric.dimensions(Dimension::builder().name(k).value(v).build());
    }
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(metric.build())
                .period(PERIOD_SECS as i32)
                .stat(&q.stat)
                .build(),
        )
        .return_data(true)
        .build()
}

#[async_trait]
impl TrafficSources for AwsTrafficSources {
    async fn metric_data(
        &self,
        queries: &[MetricQuery],
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>> {
        let mut out: Vec<Series> = vec![Vec::new(); queries.len()];
        for (b, batch) in queries.chunks(MAX_QUERIES).enumerate() {
            let sdk: Vec<MetricDataQuery> = batch
                .iter()
                .enumerate()
                .map(|(i, q)| to_sdk(format!("q{i}"), q))
                .collect();
            let mut token: Option<String> = None;
            loop {
                let res = retry::call(
                    "cloudwatch",
                    "GetMetricData",
                    Idempotency::Idempotent,
                    || {
                        self.cloudwatch
                            .get_metric_data()
                            .set_metric_data_queries(Some(sdk.clone()))
                            .start_time(DateTime::from_secs(start))
                            .end_time(DateTime::from_secs(end))
                            .scan_by(ScanBy::TimestampAscending)
                            .set_next_token(token.clone())
                            .send()
                    },
                )
                .await?;
                for r in res.metric_data_results() {
                    // Ids are ours ("q<index in batch>"); anything else is ignored.
                    let Some(i) = r
                        .id()
                        .and_then(|id| id.strip_prefix('q'))
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|i| *i < batch.len())
                    else {
                        continue;
                    };
                    let series = &mut out[b * MAX_QUERIES + i];
                    for (t, v) in r.timestamps().iter().zip(r.values()) {
                        series.push((t.secs(), *v));
                    }
                }
                match res.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    async fn target_group_load_balancer(&self, target_group_arn: &str) -> Result<String> {
        let not_found = || {
            Error::NotFound(format!(
                "target group {target_group_arn} not found or not attached to a load balancer"
            ))
        };
        let out = retry::call_optional(
            "elbv2",
            "DescribeTargetGroups",
            &["TargetGroupNotFound"],
            || {
                self.elbv2
                    .describe_target_groups()
                    .target_group_arns(target_group_arn)
                    .send()
            },
        )
        .await?
        .ok_or_else(not_found)?;
        out.target_groups()
            .first()
            .and_then(|g| g.load_balancer_arns().first().cloned())
            .ok_or_else(not_found)
    }

    async fn api_stages(&self, domain_name: &str) -> Result<Vec<ApiStage>> {
        let name = domain_name.trim_end_matches('.');
        let mut stages = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let out = retry::call_optional(
                "apigateway",
                "GetBasePathMappings",
                &["NotFoundException"],
                || {
                    self.apigateway
                        .get_base_path_mappings()
                        .domain_name(name)
                        .set_position(position.clone())
                        .limit(500)
                        .send()
                },
            )
            .await?;
            let Some(out) = out else { break };
            for m in out.items() {
                // A mapping without a stage serves every stage: CloudWatch has no series for
                // "all stages" of an API, so it cannot be counted.
                let (Some(api), Some(stage)) = (m.rest_api_id(), m.stage()) else {
                    continue;
                };
                let api = retry::call("apigateway", "GetRestApi", Idempotency::Idempotent, || {
                    self.apigateway.get_rest_api().rest_api_id(api).send()
                })
                .await?;
                if let Some(api_name) = api.name() {
                    stages.push(ApiStage::Rest {
                        api_name: api_name.to_string(),
                        stage: stage.to_string(),
                    });
                }
            }
            match out.position() {
                Some(p) if !p.is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        if !stages.is_empty() {
            return Ok(stages);
        }
        let mut token: Option<String> = None;
        loop {
            let out = retry::call_optional(
                "apigatewayv2",
                "GetApiMappings",
                &["NotFoundException"],
                || {
                    self.apigatewayv2
                        .get_api_mappings()
                        .domain_name(name)
                        .set_next_token(token.clone())
                        .send()
                },
            )
            .await?;
            let Some(out) = out else { break };
            for m in out.items() {
                if let (Some(api_id), Some(stage)) = (m.api_id(), m.stage()) {
                    stages.push(ApiStage::Http {
                        api_id: api_id.to_string(),
                        stage: stage.to_string(),
                    });
                }
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(stages)
    }
}
