//! API Gateway custom domains -> Route53 alias targets. REST APIs (apigateway) and HTTP/WebSocket
//! APIs (apigatewayv2) keep their custom domains in separate namespaces, so both are asked.

use super::retry;
use super::route53::normalize_name;
use super::AliasTarget;
use crate::Result;

/// The alias target of a REST API custom domain, `None` when the domain is not a REST domain.
/// A regional domain answers with its regional name; an edge-optimized one with its CloudFront
/// distribution.
pub async fn rest_domain(
    client: &aws_sdk_apigateway::Client,
    domain_name: &str,
) -> Result<Option<AliasTarget>> {
    let out = retry::call_optional(
        "apigateway",
        "GetDomainName",
        &["NotFoundException"],
        || client.get_domain_name().domain_name(domain_name).send(),
    )
    .await?;
    Ok(out.and_then(|d| {
        let regional = d.regional_domain_name.zip(d.regional_hosted_zone_id);
        let edge = d
            .distribution_domain_name
            .zip(d.distribution_hosted_zone_id);
        regional.or(edge).map(|(name, zone)| target(&name, zone))
    }))
}

/// The alias target of an HTTP API custom domain, `None` when the domain is not one.
pub async fn http_domain(
    client: &aws_sdk_apigatewayv2::Client,
    domain_name: &str,
) -> Result<Option<AliasTarget>> {
    let out = retry::call_optional(
        "apigatewayv2",
        "GetDomainName",
        &["NotFoundException"],
        || client.get_domain_name().domain_name(domain_name).send(),
    )
    .await?;
    Ok(out.and_then(|d| {
        d.domain_name_configurations
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|c| c.api_gateway_domain_name.zip(c.hosted_zone_id))
            .map(|(name, zone)| target(&name, zone))
    }))
}

/// API Gateway is not itself health-checked by Route53; EvaluateTargetHealth lets Route53 skip a
/// regional endpoint AWS reports unhealthy.
fn target(dns_name: &str, hosted_zone_id: String) -> AliasTarget {
    AliasTarget {
        dns_name: normalize_name(dns_name),
        hosted_zone_id,
        evaluate_target_health: true,
    }
}
