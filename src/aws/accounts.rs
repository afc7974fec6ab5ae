//! Cross-account splits: one set of AWS clients per assumed role (`spec.aws`), built lazily on
//! top of the controller's own credentials, and one Route53 rate limiter per account.
//!
//! Every client of a role shares one `AssumeRoleProvider` (behind one credential cache, refreshed
//! before expiry) and the base configuration's HTTP client, so a hundred splits in one account
//! cost one STS session and one connection pool, not a hundred. The account of the calls made
//! while a split's cycle runs is a task-local, which labels `trafficshift_aws_requests_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_config::sts::AssumeRoleProvider;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::{self, future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::connect::{from_config_with, AwsOptions};
use super::limiter::RateLimiter;
use super::metric_data::{AwsTrafficSources, TrafficAccounts, TrafficSources};
use super::retry::{self, Idempotency};
use super::Aws;
use crate::error::AwsFailure;
use crate::metrics::METRICS;
use crate::spec::AwsSpec;
use crate::{Error, Result};

/// Label of calls made before the base account is known (or when STS could not tell).
pub const UNKNOWN_ACCOUNT: &str = "unknown";
/// Session name when `spec.aws.sessionName` is not set.
pub const DEFAULT_SESSION_NAME: &str = "trafficshift";
/// Assumed credentials are renewed this long before they expire, so no request signs with
/// credentials that lapse in flight.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// How long start waits for STS to say which account the base credentials are.
const CALLER_IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);

tokio::task_local! {
    static ACCOUNT: Arc<str>;
}

static DEFAULT_ACCOUNT: OnceLock<Arc<str>> = OnceLock::new();

/// The account AWS calls of the current task are made in: the one `scope` set, else the base
/// credentials' account.
pub fn current() -> Arc<str> {
    ACCOUNT
        .try_with(Arc::clone)
        .ok()
        .or_else(|| DEFAULT_ACCOUNT.get().cloned())
        .unwrap_or_else(|| UNKNOWN_ACCOUNT.into())
}

/// Run `f` with its AWS calls attributed to `account`.
pub async fn scope<F: std::future::Future>(account: Arc<str>, f: F) -> F::Output {
    ACCOUNT.scope(account, f).await
}

/// The role-related clients of one `spec.aws`.
struct Role {
    account: Arc<str>,
    aws: Aws,
    /// What the traffic poller reads in the role's account (same credentials as `aws`).
    traffic: Arc<dyn TrafficSources>,
    credentials: Arc<CachedRole>,
}

/// Every set of clients of the process: the base one and one per distinct `spec.aws`.
pub struct Accounts {
    base: SdkConfig,
    opts: AwsOptions,
    default_account: Arc<str>,
    default_aws: Aws,
    default_traffic: Arc<dyn TrafficSources>,
    limiters: Mutex<HashMap<Arc<str>, Arc<RateLimiter>>>,
    roles: Mutex<HashMap<AwsSpec, Arc<Role>>>,
}

impl Accounts {
    /// The registry over a loaded base configuration: asks STS once who the base credentials are
    /// (the default account of the metrics and of the Route53 limit). When STS cannot tell, the
    /// account is `unknown` and the controller still runs.
    pub async fn new(opts: &AwsOptions, base: &SdkConfig) -> Accounts {
        // Bounded: an unreachable STS must not hold the controller's start (and its probes).
        let asked = tokio::time::timeout(CALLER_IDENTITY_TIMEOUT, caller_account(base)).await;
        let account: Arc<str> = match asked.unwrap_or_else(|_| {
            Err(Error::Other(format!(
                "sts GetCallerIdentity: no answer within {CALLER_IDENTITY_TIMEOUT:?}"
            )))
        }) {
            Ok(a) => a.into(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the account of the controller's credentials; its AWS requests are counted as account=\"unknown\"");
                UNKNOWN_ACCOUNT.into()
            }
        };
        Accounts::with_default_account(opts, base, account)
    }

    /// The registry with a known default account (no STS call).
    pub fn with_default_account(
        opts: &AwsOptions,
        base: &SdkConfig,
        account: Arc<str>,
    ) -> Accounts {
        let _ = DEFAULT_ACCOUNT.set(account.clone());
        METRICS.init_account(&account);
        let limiter = new_limiter(opts);
        let default_aws = from_config_with(opts, base, limiter.clone());
        Accounts {
            base: base.clone(),
            opts: opts.clone(),
            default_account: account.clone(),
            default_aws,
            default_traffic: Arc::new(AwsTrafficSources::from_config(base)),
            limiters: Mutex::new(HashMap::from([(account, limiter)])),
            roles: Mutex::new(HashMap::new()),
        }
    }

    /// The clients of the controller's own credentials.
    pub fn default_aws(&self) -> Aws {
        self.default_aws.clone()
    }

    /// The account the base credentials belong to (`unknown` when STS could not tell).
    pub fn default_account(&self) -> Arc<str> {
        self.default_account.clone()
    }

    /// The account a split's calls go to: the role ARN's account, or the default one. For the
    /// `trafficshift_split_info` join and the metrics label.
    pub fn account_of(&self, aws: Option<&AwsSpec>) -> Arc<str> {
        match aws.and_then(AwsSpec::account_id) {
            Some(a) => a.into(),
            None => self.default_account.clone(),
        }
    }

    /// The clients of `spec`, built on first use, with credentials that were obtained (or are
    /// still valid). A role that cannot be assumed is an `sts AssumeRole` error for the splits
    /// using it only; the next cycle tries again.
    pub async fn clients(&self, spec: &AwsSpec) -> Result<(Arc<str>, Aws)> {
        let role = self.role(spec).await;
        role.credentials
            .provide()
            .await
            .map_err(|e| assume_role_error(&spec.role_arn, &e))?;
        Ok((role.account.clone(), role.aws.clone()))
    }

    async fn role(&self, spec: &AwsSpec) -> Arc<Role> {
        if let Some(r) = self.roles.lock().expect("roles lock").get(spec) {
            return r.clone();
        }
        let account = self.account_of(Some(spec));
        let limiter = self
            .limiters
            .lock()
            .expect("limiters lock")
            .entry(account.clone())
            .or_insert_with(|| new_limiter(&self.opts))
            .clone();
        METRICS.init_account(&account);
        let mut builder = AssumeRoleProvider::builder(spec.role_arn.clone())
            .session_name(
                spec.session_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string()),
            )
            .configure(&self.base);
        if let Some(id) = &spec.external_id {
            builder = builder.external_id(id.clone());
        }
        if let Some(region) = &spec.region {
            builder = builder.region(Region::new(region.clone()));
        }
        let credentials = Arc::new(CachedRole {
            provider: builder.build().await,
            account: account.clone(),
            cached: tokio::sync::Mutex::new(None),
        });
        let mut config =
            self.base
                .to_builder()
                .credentials_provider(SharedCredentialsProvider::new(SharedRole(
                    credentials.clone(),
                )));
        if let Some(region) = &spec.region {
            config = config.region(Region::new(region.clone()));
        }
        let config = config.build();
        let aws = from_config_with(&self.opts, &config, limiter);
        let role = Arc::new(Role {
            account,
            aws,
            traffic: Arc::new(AwsTrafficSources::from_config(&config)),
            credentials,
        });
        // Two cycles may build the same role at once; the first one stored wins, the other's
        // provider has not called STS yet and is dropped.
        self.roles
            .lock()
            .expect("roles lock")
            .entry(spec.clone())
            .or_insert(role)
            .clone()
    }
}

#[async_trait::async_trait]
impl TrafficAccounts for Accounts {
    async fn traffic_sources(
        &self,
        aws: Option<&AwsSpec>,
    ) -> Result<(Arc<str>, Arc<dyn TrafficSources>)> {
        let Some(spec) = aws else {
            return Ok((self.default_account(), self.default_traffic.clone()));
        };
        let role = self.role(spec).await;
        // Asked up front, like `clients`: a role that cannot be assumed is one error for its
        // splits, not one per GetMetricData page.
        role.credentials
            .provide()
            .await
            .map_err(|e| assume_role_error(&spec.role_arn, &e))?;
        Ok((role.account.clone(), role.traffic.clone()))
    }
}

fn new_limiter(opts: &AwsOptions) -> Arc<RateLimiter> {
    // A burst of 3 lets a quiet controller list and write without waiting a token interval in
    // between; the sustained rate stays at route53_rps, per account.
    Arc::new(RateLimiter::with_burst(opts.route53_rps, 3))
}

/// The assumed role's credentials, kept until `REFRESH_BEFORE_EXPIRY` before they expire. The
/// SDK's identity cache sits in front of it too; this one lets `Accounts::clients` learn whether
/// the role can be assumed before a split's calls fail in the middle of a cycle.
struct CachedRole {
    provider: AssumeRoleProvider,
    account: Arc<str>,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl CachedRole {
    async fn provide(&self) -> provider::Result {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c
                .expiry()
                .is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE_EXPIRY);
            if fresh {
                return Ok(c.clone());
            }
        }
        let got = self.provider.provide_credentials().await;
        let outcome = match &got {
            Ok(_) => "success",
            Err(e) => {
                match assume_role_sdk_error(e).map(|(err, status)| retry::classify(err, status)) {
                    Some(AwsFailure::Throttled) => "throttled",
                    _ => "error",
                }
            }
        };
        scope(self.account.clone(), async {
            METRICS.aws_request("sts", "AssumeRole", outcome)
        })
        .await;
        if let Ok(c) = &got {
            *cached = Some(c.clone());
        }
        got
    }
}

/// `CachedRole` as the clients' credentials provider.
#[derive(Clone)]
struct SharedRole(Arc<CachedRole>);

impl std::fmt::Debug for SharedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRole")
            .field("account", &self.0.account)
            .finish()
    }
}

impl ProvideCredentials for SharedRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.0.provide())
    }
}

/// The STS error under a provider error, with its HTTP status.
fn assume_role_sdk_error(
    e: &provider::error::CredentialsError,
) -> Option<(&SdkError<AssumeRoleError, HttpResponse>, Option<u16>)> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(sdk) = c.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
            let status = sdk.raw_response().map(|r| r.status().as_u16());
            return Some((sdk, status));
        }
        cause = c.source();
    }
    None
}

/// One line naming the role, what STS said, and what to check.
fn assume_role_error(role_arn: &str, e: &provider::error::CredentialsError) -> Error {
    let (failure, said) = match assume_role_sdk_error(e) {
        Some((sdk, status)) => {
            match retry::to_error("sts", "AssumeRole", Idempotency::Idempotent, sdk, status) {
                Error::Aws {
                    failure, message, ..
                } => (failure, message),
                other => (AwsFailure::Permanent, other.to_string()),
            }
        }
        None => (
            AwsFailure::Transient,
            format!("no answer: {}", crate::gates::root_cause(e)),
        ),
    };
    let hint = match failure {
        AwsFailure::Permanent => "; check spec.aws (roleArn, externalId), the role's trust policy for the controller's role and the controller's sts:AssumeRole permission",
        _ => "",
    };
    Error::Aws {
        service: "sts",
        operation: "AssumeRole",
        failure,
        message: crate::sanitize::clean(
            &format!("cannot assume {role_arn}: {said}{hint}"),
            retry::AWS_LINE_MAX,
        ),
    }
}

/// GetCallerIdentity with the base credentials, tried three times.
async fn caller_account(base: &SdkConfig) -> Result<String> {
    let client = aws_sdk_sts::Client::new(base);
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match client.get_caller_identity().send().await {
            Ok(out) => {
                if let Some(a) = out.account.filter(|a| !a.is_empty()) {
                    return Ok(a);
                }
                last = "no account in the answer".into();
            }
            Err(e) => last = crate::gates::root_cause(&e),
        }
    }
    Err(Error::Other(format!("sts GetCallerIdentity: {last}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(arn: &str, session: &str) -> AwsSpec {
        AwsSpec {
            role_arn: arn.into(),
            external_id: Some("ext-1".into()),
            region: None,
            session_name: Some(session.into()),
        }
    }

    #[tokio::test]
    async fn clients_are_built_once_per_role_and_limited_once_per_account() {
        // Nothing here calls AWS: clients and providers are built lazily.
        let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(Credentials::new("k", "s", None, None, "test"))
            .load()
            .await;
        let accounts =
            Accounts::with_default_account(&AwsOptions::default(), &base, "123456789012".into());
        let a = role("arn:aws:iam::222222222222:role/dns", "one");
        let a_again = accounts.role(&a).await;
        assert!(Arc::ptr_eq(&accounts.role(&a).await, &a_again));
        // Another session in the same account: its own clients, the account's one limiter.
        let b = accounts
            .role(&role("arn:aws:iam::222222222222:role/dns", "two"))
            .await;
        assert!(!Arc::ptr_eq(&a_again, &b));
        let c = accounts
            .role(&role("arn:aws:iam::333333333333:role/dns", "one"))
            .await;
        assert_eq!(&*c.account, "333333333333");
        let limiters = accounts.limiters.lock().unwrap();
        let mut keys: Vec<&str> = limiters.keys().map(|k| &**k).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["123456789012", "222222222222", "333333333333"]);
        assert_eq!(&*accounts.account_of(None), "123456789012");
        assert_eq!(
            &*accounts.account_of(Some(&role("arn:aws:iam::222222222222:role/x", "s"))),
            "222222222222"
        );
    }

    #[tokio::test]
    async fn calls_are_labelled_by_scope_then_default() {
        let inside = scope("222222222222".into(), async { current() }).await;
        assert_eq!(&*inside, "222222222222");
        // Outside any scope: the base account once known, `unknown` before (other tests of this
        // process may have set it, so both are accepted, never the scoped one).
        let outside = current();
        assert_ne!(&*outside, "222222222222");
    }
}
