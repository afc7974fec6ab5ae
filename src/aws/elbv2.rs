//! Backends -> alias targets: API Gateway custom domains (see `apigateway`) and ELB target groups
//! (through their load balancer), plus target health.

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{LoadBalancerTypeEnum, TargetHealthStateEnum};

use super::route53::normalize_name;
use super::{apigateway, retry, AliasTarget, Targets};
use crate::{Error, Result};

const SERVICE: &str = "elbv2";

/// The `Targets` edge: API Gateway (REST and HTTP) and Elastic Load Balancing v2.
pub struct AwsTargets {
    apigateway: aws_sdk_apigateway::Client,
    apigatewayv2: aws_sdk_apigatewayv2::Client,
    elbv2: aws_sdk_elasticloadbalancingv2::Client,
}

impl AwsTargets {
    pub fn new(
        apigateway: aws_sdk_apigateway::Client,
        apigatewayv2: aws_sdk_apigatewayv2::Client,
        elbv2: aws_sdk_elasticloadbalancingv2::Client,
    ) -> Self {
        AwsTargets {
            apigateway,
            apigatewayv2,
            elbv2,
        }
    }
}

fn tg_not_found(arn: &str) -> Error {
    Error::NotFound(format!(
        "target group {arn} not found: check spec.backends[].targetGroupArn"
    ))
}

#[async_trait]
impl Targets for AwsTargets {
    async fn api_gateway_domain(&self, domain_name: &str) -> Result<AliasTarget> {
        let name = domain_name.trim_end_matches('.');
        if let Some(t) = apigateway::rest_domain(&self.apigateway, name).await? {
            return Ok(t);
        }
        if let Some(t) = apigateway::http_domain(&self.apigatewayv2, name).await? {
            return Ok(t);
        }
        Err(Error::NotFound(format!(
            "API Gateway custom domain {name} not found (REST or HTTP): check spec.backends[].apiGateway.domainName"
        )))
    }

    async fn target_group_lb(&self, target_group_arn: &str) -> Result<AliasTarget> {
        let groups = retry::call_optional(
            SERVICE,
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
        .ok_or_else(|| tg_not_found(target_group_arn))?;
        let lb_arn = groups
            .target_groups
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| tg_not_found(target_group_arn))?
            .load_balancer_arns
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "target group {target_group_arn} is not attached to a load balancer: add a listener rule that forwards to it"
                ))
            })?;
        let lb_not_found = || {
            Error::NotFound(format!(
                "load balancer {lb_arn} of target group {target_group_arn} not found"
            ))
        };
        let lbs = retry::call_optional(
            SERVICE,
            "DescribeLoadBalancers",
            &["LoadBalancerNotFound"],
            || {
                self.elbv2
                    .describe_load_balancers()
                    .load_balancer_arns(&lb_arn)
                    .send()
            },
        )
        .await?
        .ok_or_else(lb_not_found)?;
        let lb = lbs
            .load_balancers
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(lb_not_found)?;
        // An ALB's `dualstack.` name answers both A and AAAA; the bare name answers A only, so
        // an AAAA alias to it would resolve to nothing.
        let dualstack = lb.r#type == Some(LoadBalancerTypeEnum::Application);
        match (lb.dns_name, lb.canonical_hosted_zone_id) {
            (Some(dns), Some(zone)) => Ok(AliasTarget {
                dns_name: if dualstack {
                    dualstack_name(&dns)
                } else {
                    normalize_name(&dns)
                },
                hosted_zone_id: zone,
                evaluate_target_health: true,
            }),
            _ => Err(Error::Other(format!(
                "load balancer {lb_arn} has no DNS name or canonical hosted zone yet"
            ))),
        }
    }

    async fn target_health(&self, target_group_arn: &str) -> Result<(u32, u32)> {
        let out = retry::call_optional(
            SERVICE,
            "DescribeTargetHealth",
            &["TargetGroupNotFound"],
            || {
                self.elbv2
                    .describe_target_health()
                    .target_group_arn(target_group_arn)
                    .send()
            },
        )
        .await?
        .ok_or_else(|| tg_not_found(target_group_arn))?;
        let all = out.target_health_descriptions.unwrap_or_default();
        let healthy = all
            .iter()
            .filter(|d| {
                d.target_health.as_ref().and_then(|h| h.state.as_ref())
                    == Some(&TargetHealthStateEnum::Healthy)
            })
            .count();
        Ok((count(healthy), count(all.len())))
    }
}

/// `dualstack.<name>`, once.
pub fn dualstack_name(dns: &str) -> String {
    let n = normalize_name(dns);
    if n.starts_with("dualstack.") {
        n
    } else {
        format!("dualstack.{n}")
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
