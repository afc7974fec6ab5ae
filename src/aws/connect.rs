//! Building the SDK clients: one shared configuration, SDK retries off (we retry, and count every
//! attempt), per-attempt and per-operation timeouts.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use super::autoscaling::AppAutoscaling;
use super::cloudwatch::CloudWatchAlarms;
use super::ecs::EcsClient;
use super::elbv2::AwsTargets;
use super::limiter::RateLimiter;
use super::route53::Route53Dns;
use super::Aws;

/// Tuning of the AWS edge.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsOptions {
    /// Route53 requests per second per account (AWS allows 5 per account).
    pub route53_rps: f64,
    /// Limit of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// Limit of one SDK operation (a single attempt here, since SDK retries are off).
    pub operation_timeout: Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            route53_rps: 5.0,
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// Region used when none is configured; Route53 is global and signs in us-east-1 anyway.
const FALLBACK_REGION: &str = "us-east-1";

/// Clients from the standard environment: credential chain, `AWS_REGION`, `AWS_ENDPOINT_URL`...
pub async fn connect(opts: &AwsOptions) -> Aws {
    connect_with(opts, aws_config::defaults(BehaviorVersion::latest())).await
}

/// The HTTPS client of the whole process, the SDK's default one built once.
///
/// Left unset, every SDK client builds its own (connection pool, rustls configuration and the
/// system's trusted roots parsed again): six of each for one account. Every client made from a
/// configuration that carries this one (see [`from_config`]) shares them.
pub fn shared_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    // What aws-smithy-runtime's default_https_client builds for each client, proxy included.
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}

/// Clients from a caller-prepared loader (tests point it at moto with fixed credentials).
pub async fn connect_with(opts: &AwsOptions, loader: ConfigLoader) -> Aws {
    from_config(opts, &load(opts, loader).await)
}

/// The registry of every account's clients over the standard environment (`trafficshift run`
/// and `plan`): asks STS once which account the base credentials are.
pub async fn connect_accounts(opts: &AwsOptions) -> super::accounts::Accounts {
    let config = load(opts, aws_config::defaults(BehaviorVersion::latest())).await;
    super::accounts::Accounts::new(opts, &with_region(&config)).await
}

/// The base configuration: SDK retries off, our timeouts.
async fn load(opts: &AwsOptions, loader: ConfigLoader) -> SdkConfig {
    loader
        .http_client(shared_https_client())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(opts.attempt_timeout)
                .operation_timeout(opts.operation_timeout)
                .build(),
        )
        .load()
        .await
}

/// Clients from a loaded configuration, used as is (its retry and timeout settings included).
pub fn from_config(opts: &AwsOptions, config: &SdkConfig) -> Aws {
    // A burst of 3 lets a quiet controller list and write without waiting a token interval in
    // between; the sustained rate stays at route53_rps.
    from_config_with(
        opts,
        config,
        Arc::new(RateLimiter::with_burst(opts.route53_rps, 3)),
    )
}

/// `from_config` with the Route53 limiter of the configuration's account (one per account,
/// shared by every set of clients in it: see `accounts`).
pub fn from_config_with(opts: &AwsOptions, config: &SdkConfig, limiter: Arc<RateLimiter>) -> Aws {
    let _ = opts;
    let config = with_region(config);
    Aws {
        dns: Arc::new(Route53Dns::new(
            aws_sdk_route53::Client::new(&config),
            limiter,
        )),
        ecs: Arc::new(EcsClient::new(aws_sdk_ecs::Client::new(&config))),
        targets: Arc::new(AwsTargets::new(
            aws_sdk_apigateway::Client::new(&config),
            aws_sdk_apigatewayv2::Client::new(&config),
            aws_sdk_elasticloadbalancingv2::Client::new(&config),
        )),
        alarms: Arc::new(CloudWatchAlarms::new(aws_sdk_cloudwatch::Client::new(
            &config,
        ))),
        autoscaling: Arc::new(AppAutoscaling::new(
            aws_sdk_applicationautoscaling::Client::new(&config),
        )),
    }
}

/// The configuration with the fallback region when it has none, and the shared HTTPS client.
fn with_region(config: &SdkConfig) -> SdkConfig {
    if config.region().is_some() && config.http_client().is_some() {
        return config.clone();
    }
    let mut b = config.to_builder();
    if config.region().is_none() {
        b.set_region(Some(Region::new(FALLBACK_REGION)));
    }
    // A configuration prepared elsewhere (tests) still shares the process's one HTTPS client.
    if config.http_client().is_none() {
        b.set_http_client(Some(shared_https_client()));
    }
    b.build()
}
