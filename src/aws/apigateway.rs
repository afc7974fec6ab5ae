//! API Gateway custom domains -> Route53 alias targets. REST APIs (apigateway) and HTTP/WebSocket
//! APIs (apigatewayv2) keep their custom domains in separate namespaces, so both are asked.

use aws_sdk_apigateway::types::EndpointType;

use super::retry;
use super::route53::normalize_name;
use super::AliasTarget;
use crate::{Error, Result};

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
    let Some(d) = out else { return Ok(None) };
    let is_regional = d
        .endpoint_configuration
        .as_ref()
        .and_then(|c| c.types.as_ref())
        .is_some_and(|t| t.contains(&EndpointType::Regional));
    let regional = d.regional_domain_name.zip(d.regional_hosted_zone_id);
    let edge = d
        .distribution_domain_name
        .zip(d.distribution_hosted_zone_id);
    // moto fills both names for every domain; the endpoint type says which one serves it.
    let chosen = match (is_regional, regional, edge) {
        (true, Some(r), _) | (false, Some(r), None) => Some((r, true)),
        (_, _, Some(e)) => Some((e, false)),
        (_, None, None) => None,
    };
    match chosen {
        Some(((name, zone), true)) => Ok(Some(target(&name, zone))),
        // An edge-optimized domain is a CloudFront distribution: Route53 refuses
        // EvaluateTargetHealth=true on an alias to CloudFront.
        Some(((name, zone), false)) => Ok(Some(AliasTarget {
            evaluate_target_health: false,
            ..target(&name, zone)
        })),
        None => Err(Error::NotFound(format!(
            "API Gateway REST custom domain {domain_name} has no regional or edge endpoint name yet: check its endpoint configuration"
        ))),
    }
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
    let Some(d) = out else { return Ok(None) };
    let first = d
        .domain_name_configurations
        .unwrap_or_default()
        .into_iter()
        .next();
    match first.and_then(|c| c.api_gateway_domain_name.zip(c.hosted_zone_id)) {
        Some((name, zone)) => Ok(Some(target(&name, zone))),
        // moto answers HTTP API domains without these two fields.
        None => Err(Error::NotFound(format!(
            "API Gateway HTTP custom domain {domain_name} has no apiGatewayDomainName/hostedZoneId yet: check its domain name configuration"
        ))),
    }
}

/// EvaluateTargetHealth lets Route53 skip a regional endpoint AWS reports unhealthy.
fn target(dns_name: &str, hosted_zone_id: String) -> AliasTarget {
    AliasTarget {
        dns_name: normalize_name(dns_name),
        hosted_zone_id,
        evaluate_target_health: true,
    }
}
