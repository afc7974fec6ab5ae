//! One retry policy for every AWS call. The SDK's own retries are disabled (see `connect`) so that
//! every attempt, throttled ones included, is counted in `trafficshift_aws_requests_total`.

use std::future::Future;
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use backon::{ExponentialBuilder, Retryable};

use crate::error::AwsFailure;
use crate::metrics::METRICS;
use crate::{Error, Result};

/// Error codes AWS uses when it rejects a request for rate reasons. The request was not applied.
const THROTTLE_CODES: [&str; 7] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "PriorRequestNotComplete",
    "RequestThrottled",
];

/// Codes that mean the service itself had a problem (usually also a 5xx).
const TRANSIENT_CODES: [&str; 5] = [
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// Whether a call may be repeated after a failure whose effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, and writes that can be repeated safely: retried on throttling and transient failures.
    Idempotent,
    /// Writes such as ChangeResourceRecordSets or UpdateService: retried only when AWS says it
    /// rejected the request (throttling). After a transient failure the write may or may not have
    /// happened, so the error goes back to the reconciler, which re-reads live state.
    NonIdempotent,
}

/// The backoff between attempts: jittered exponential, 200 ms to 5 s, 5 attempts in all.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(4)
        .with_jitter()
}

/// Classify a failed SDK call.
pub fn classify<E, R>(err: &SdkError<E, R>, status: Option<u16>) -> AwsFailure
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            if status == Some(429) {
                AwsFailure::Throttled
            } else {
                AwsFailure::Transient
            }
        }
        SdkError::ServiceError(inner) => classify_code(inner.err().code(), status),
        // Building the request failed (bad input, no region, no credentials): repeating it
        // produces the same failure.
        _ => AwsFailure::Permanent,
    }
}

/// Classify by AWS error code and HTTP status.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> AwsFailure {
    if code.is_some_and(|c| THROTTLE_CODES.contains(&c)) || status == Some(429) {
        AwsFailure::Throttled
    } else if code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
        || status.is_some_and(|s| (500..600).contains(&s))
    {
        AwsFailure::Transient
    } else {
        AwsFailure::Permanent
    }
}

/// Turn a failed SDK call into `Error::Aws` with a message that says what to do.
pub fn to_error<E, R>(
    service: &'static str,
    operation: &'static str,
    idempotency: Idempotency,
    err: &SdkError<E, R>,
    status: Option<u16>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let failure = classify(err, status);
    let what = match err {
        SdkError::ServiceError(inner) => {
            let e = inner.err();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_string(),
                _ => format!("{}", DisplayErrorContext(err)),
            }
        }
        SdkError::TimeoutError(_) => "request timed out".to_string(),
        SdkError::DispatchFailure(_) => {
            format!("could not reach AWS: {}", DisplayErrorContext(err))
        }
        SdkError::ResponseError(_) => {
            format!("unreadable response: {}", DisplayErrorContext(err))
        }
        _ => format!("{}", DisplayErrorContext(err)),
    };
    let what = match status {
        Some(s) if !what.contains(&s.to_string()) && s >= 400 => format!("{what} (HTTP {s})"),
        _ => what,
    };
    let code = match err {
        SdkError::ServiceError(inner) => inner.err().code(),
        _ => None,
    };
    let hint = hint(service, operation, idempotency, failure, code);
    Error::Aws {
        service,
        operation,
        failure,
        message: format!("{what} — {hint}"),
    }
}

fn hint(
    service: &str,
    operation: &str,
    idempotency: Idempotency,
    failure: AwsFailure,
    code: Option<&str>,
) -> String {
    let write = idempotency == Idempotency::NonIdempotent;
    match failure {
        AwsFailure::Throttled => {
            let mut h = "AWS kept throttling the request; nothing was applied, it will be retried on the next reconcile"
                .to_string();
            if service == "route53" {
                h.push_str(" (lower --route53-rps if this persists)");
            }
            h
        }
        AwsFailure::Transient if write => {
            "the write may or may not have been applied; the next reconcile re-reads live state"
                .to_string()
        }
        AwsFailure::Transient => {
            "AWS or the network failed; it will be retried on the next reconcile".to_string()
        }
        AwsFailure::Permanent => match code.unwrap_or_default() {
            "InvalidChangeBatch" | "InvalidInput" if service == "route53" => {
                "nothing was written; check the record spec".to_string()
            }
            "NoSuchHostedZone" => "check spec.record.hostedZone".to_string(),
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                format!(
                    "grant {}:{operation} to the controller's IAM role",
                    iam_prefix(service)
                )
            }
            "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "SignatureDoesNotMatch" => {
                "check the AWS credentials the controller runs with".to_string()
            }
            "ServiceNotFoundException" | "ClusterNotFoundException" => {
                "check spec.backends[].ecs cluster and service names".to_string()
            }
            "TargetGroupNotFound" | "LoadBalancerNotFound" => {
                "check spec.backends[].targetGroupArn".to_string()
            }
            _ if write => {
                "nothing was written; retrying will not help until the cause is fixed".to_string()
            }
            _ => "retrying will not help until the cause is fixed".to_string(),
        },
    }
}

/// The IAM action prefix of a service label.
fn iam_prefix(service: &str) -> &str {
    match service {
        "elbv2" => "elasticloadbalancing",
        "apigatewayv2" => "apigateway",
        other => other,
    }
}

fn outcome(failure: AwsFailure) -> &'static str {
    match failure {
        AwsFailure::Throttled => "throttled",
        AwsFailure::Transient | AwsFailure::Permanent => "error",
    }
}

/// Run one AWS call with the shared retry policy. `f` builds and sends the request; it is called
/// once per attempt (acquire rate-limit tokens inside it). Every attempt is counted in
/// `METRICS.aws_request(service, operation, outcome)`.
pub async fn call<T, E, F, Fut>(
    service: &'static str,
    operation: &'static str,
    idempotency: Idempotency,
    f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let v = call_with(service, operation, idempotency, &[], backoff(), f).await?;
    // With no "absent" codes every failure is an error, so the value is always there.
    v.ok_or_else(|| Error::Other(format!("{service} {operation}: no answer")))
}

/// Like `call`, but an AWS error whose code is in `absent` (e.g. NotFoundException) answers
/// `Ok(None)`: the question was answered, the thing does not exist. Such an answer is counted as
/// a successful request.
pub async fn call_optional<T, E, F, Fut>(
    service: &'static str,
    operation: &'static str,
    absent: &'static [&'static str],
    f: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    call_with(
        service,
        operation,
        Idempotency::Idempotent,
        absent,
        backoff(),
        f,
    )
    .await
}

/// The general form of `call` and `call_optional`, with an explicit backoff (tests use short ones).
pub async fn call_with<T, E, F, Fut>(
    service: &'static str,
    operation: &'static str,
    idempotency: Idempotency,
    absent: &'static [&'static str],
    backoff: ExponentialBuilder,
    mut f: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let attempt = || {
        let fut = f();
        async move {
            match fut.await {
                Ok(v) => {
                    METRICS.aws_request(service, operation, "success");
                    Ok(Some(v))
                }
                Err(err) => {
                    if err
                        .as_service_error()
                        .and_then(|e| e.code())
                        .is_some_and(|c| absent.contains(&c))
                    {
                        METRICS.aws_request(service, operation, "success");
                        return Ok(None);
                    }
                    let status = err.raw_response().map(|r| r.status().as_u16());
                    let e = to_error(service, operation, idempotency, &err, status);
                    if let Error::Aws { failure, .. } = &e {
                        METRICS.aws_request(service, operation, outcome(*failure));
                    }
                    Err(e)
                }
            }
        }
    };
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &Error| should_retry(e, idempotency))
        .notify(|e: &Error, after: Duration| match e {
            Error::Aws { failure: AwsFailure::Throttled, .. } => {
                tracing::debug!(service, operation, ?after, error = %e, "AWS throttled the request; retrying")
            }
            _ => tracing::warn!(service, operation, ?after, error = %e, "AWS request failed; retrying"),
        })
        .await
}

/// Whether the retry policy repeats a call that failed with `e`.
pub fn should_retry(e: &Error, idempotency: Idempotency) -> bool {
    match e {
        Error::Aws {
            failure: AwsFailure::Throttled,
            ..
        } => true,
        Error::Aws {
            failure: AwsFailure::Transient,
            ..
        } => idempotency == Idempotency::Idempotent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_classify() {
        for code in [
            "Throttling",
            "ThrottlingException",
            "PriorRequestNotComplete",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "ThrottledException",
        ] {
            assert_eq!(
                classify_code(Some(code), Some(400)),
                AwsFailure::Throttled,
                "{code}"
            );
        }
        assert_eq!(classify_code(None, Some(429)), AwsFailure::Throttled);
        assert_eq!(
            classify_code(Some("InternalFailure"), Some(500)),
            AwsFailure::Transient
        );
        assert_eq!(classify_code(None, Some(503)), AwsFailure::Transient);
        for code in [
            "InvalidChangeBatch",
            "InvalidInput",
            "AccessDenied",
            "NoSuchHostedZone",
        ] {
            assert_eq!(
                classify_code(Some(code), Some(400)),
                AwsFailure::Permanent,
                "{code}"
            );
        }
    }

    #[test]
    fn writes_retry_only_throttling() {
        let e = |failure| Error::Aws {
            service: "route53",
            operation: "X",
            failure,
            message: String::new(),
        };
        assert!(should_retry(
            &e(AwsFailure::Throttled),
            Idempotency::NonIdempotent
        ));
        assert!(!should_retry(
            &e(AwsFailure::Transient),
            Idempotency::NonIdempotent
        ));
        assert!(should_retry(
            &e(AwsFailure::Transient),
            Idempotency::Idempotent
        ));
        assert!(!should_retry(
            &e(AwsFailure::Permanent),
            Idempotency::Idempotent
        ));
    }

    #[test]
    fn hints_are_actionable() {
        let h = hint(
            "route53",
            "ChangeResourceRecordSets",
            Idempotency::NonIdempotent,
            AwsFailure::Permanent,
            Some("InvalidChangeBatch"),
        );
        assert!(h.contains("nothing was written"), "{h}");
        let h = hint(
            "elbv2",
            "DescribeTargetGroups",
            Idempotency::Idempotent,
            AwsFailure::Permanent,
            Some("AccessDenied"),
        );
        assert!(
            h.contains("elasticloadbalancing:DescribeTargetGroups"),
            "{h}"
        );
    }

    use aws_sdk_route53::operation::get_change::GetChangeError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn failure(code: &str, status: u16) -> SdkError<GetChangeError, HttpResponse> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("told so")
            .build();
        let raw = HttpResponse::new(
            aws_smithy_runtime_api::http::StatusCode::try_from(status).expect("status"),
            SdkBody::empty(),
        );
        SdkError::service_error(GetChangeError::generic(meta), raw)
    }

    fn count(op: &str, outcome: &str) -> u64 {
        METRICS
            .aws_requests
            .with_label_values(&["test", op, outcome])
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_and_every_attempt_counted() {
        let n = AtomicU32::new(0);
        let v = call("test", "Throttled2", Idempotency::NonIdempotent, || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move {
                if i < 2 {
                    Err(failure("Throttling", 400))
                } else {
                    Ok(7)
                }
            }
        })
        .await
        .expect("third attempt succeeds");
        assert_eq!(v, 7);
        assert_eq!(n.load(Ordering::SeqCst), 3);
        assert_eq!(count("Throttled2", "throttled"), 2);
        assert_eq!(count("Throttled2", "success"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_five_attempts() {
        let n = AtomicU32::new(0);
        let e = call("test", "Always503", Idempotency::Idempotent, || {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(failure("ServiceUnavailable", 503)) }
        })
        .await
        .expect_err("never succeeds");
        assert_eq!(n.load(Ordering::SeqCst), 5);
        assert_eq!(e.kind(), "aws_transient");
        assert_eq!(count("Always503", "error"), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_write_failures_are_not_retried() {
        let n = AtomicU32::new(0);
        let e = call("test", "Write500", Idempotency::NonIdempotent, || {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(failure("InternalFailure", 500)) }
        })
        .await
        .expect_err("fails");
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(
            e.to_string().contains("may or may not have been applied"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried_and_say_what_to_do() {
        let n = AtomicU32::new(0);
        let e = call(
            "route53",
            "ChangeResourceRecordSets",
            Idempotency::NonIdempotent,
            || {
                n.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(failure("InvalidChangeBatch", 400)) }
            },
        )
        .await
        .expect_err("fails");
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let msg = e.to_string();
        assert!(msg.contains("InvalidChangeBatch: told so"), "{msg}");
        assert!(
            msg.contains("nothing was written; check the record spec"),
            "{msg}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn absent_codes_answer_none() {
        let v = call_optional("test", "Missing", &["NoSuchHostedZone"], || async {
            Err::<(), _>(failure("NoSuchHostedZone", 404))
        })
        .await
        .expect("answered");
        assert_eq!(v, None);
    }
}
