//! One retry policy for every AWS call. The SDK's own retries are disabled (see `connect`) so that
//! every attempt, throttled ones included, is counted in `trafficshift_aws_requests_total`.

use std::future::Future;
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
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

/// Longest AWS error line, `service operation: ...` included. Events, `/status`, `trafficshift
/// status`, logs at info and above show this line; the full SDK error is logged at debug only.
pub const AWS_LINE_MAX: usize = 300;

/// Turn a failed SDK call into `Error::Aws`: one line of at most `AWS_LINE_MAX` bytes with the
/// service and operation, the HTTP status (or "no response"), AWS's error code and message, and
/// what happens now (for writes: whether the change may have been applied).
pub fn to_error<E, R>(
    service: &'static str,
    operation: &'static str,
    idempotency: Idempotency,
    err: &SdkError<E, R>,
    status: Option<u16>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let failure = classify(err, status);
    let http = match status {
        Some(s) => format!("HTTP {s}"),
        None => "no response".to_string(),
    };
    let code = match err {
        SdkError::ServiceError(inner) => inner.err().code(),
        _ => None,
    };
    // What AWS (or the network) said, before it is cut to fit.
    let what = match err {
        SdkError::ServiceError(inner) => {
            let e = inner.err();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_string(),
                (None, Some(msg)) => msg.to_string(),
                (None, None) => "no error code".to_string(),
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_string(),
        SdkError::DispatchFailure(d) => {
            let kind = match d.as_connector_error() {
                Some(c) if c.is_timeout() => "timed out",
                Some(c) if c.is_io() => "connection failed",
                Some(c) if c.is_user() => "request not sent",
                _ => "connection lost",
            };
            format!("{kind}: {}", crate::gates::root_cause(err))
        }
        SdkError::ResponseError(_) => {
            format!("unreadable response: {}", crate::gates::root_cause(err))
        }
        _ => format!("request not built: {}", crate::gates::root_cause(err)),
    };
    let hint = hint(service, operation, idempotency, failure, code);
    Error::Aws {
        service,
        operation,
        failure,
        message: line(service, operation, &http, &what, &hint),
    }
}

/// `{http}, {what}; {hint}` cut so that `{service} {operation}: ` plus it fits `AWS_LINE_MAX`:
/// AWS's message gives way first, so the status, code and hint always survive.
fn line(service: &str, operation: &str, http: &str, what: &str, hint: &str) -> String {
    let prefix = service.len() + operation.len() + 3;
    let fixed = prefix + http.len() + 2 + 2 + hint.len();
    let room = AWS_LINE_MAX.saturating_sub(fixed).max(24);
    let what = crate::sanitize::clean(what, room);
    let full = format!("{http}, {what}; {hint}");
    crate::sanitize::clean(&full, AWS_LINE_MAX.saturating_sub(prefix))
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
            let mut h = if write {
                "throttled, nothing was written; retried on the next reconcile".to_string()
            } else {
                "throttled; retried on the next reconcile".to_string()
            };
            if service == "route53" {
                h.push_str(" (lower --route53-rps if this persists)");
            }
            h
        }
        AwsFailure::Transient if write => {
            "the change may have been applied; the next reconcile re-reads live state".to_string()
        }
        AwsFailure::Transient => "retried on the next reconcile".to_string(),
        AwsFailure::Permanent => {
            let what = match code.unwrap_or_default() {
                "InvalidChangeBatch" | "InvalidInput" if service == "route53" => {
                    "check the record spec".to_string()
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
                _ => "retrying will not help until the cause is fixed".to_string(),
            };
            if write {
                format!("nothing was written; {what}")
            } else {
                what
            }
        }
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
                    // The whole SDK error (raw response included) is for debugging only; every
                    // other surface gets the one-line summary.
                    tracing::debug!(service, operation, error = ?err, "AWS request failed");
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
        assert!(h.starts_with("nothing was written; "), "{h}");
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
            .with_label_values(&["test", op, outcome, &crate::aws::accounts::current()])
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
        assert_eq!(
            e.to_string(),
            "test Write500: HTTP 500, InternalFailure: told so; the change may have been applied; \
             the next reconcile re-reads live state"
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
        assert_eq!(
            e.to_string(),
            "route53 ChangeResourceRecordSets: HTTP 400, InvalidChangeBatch: told so; nothing was \
             written; check the record spec"
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

    use aws_smithy_runtime_api::client::result::ConnectorError;

    fn line_of(e: &Error) -> String {
        let s = e.to_string();
        assert!(s.len() <= AWS_LINE_MAX, "{} bytes: {s}", s.len());
        assert!(!s.contains('\n'), "{s:?}");
        s
    }

    #[test]
    fn long_aws_messages_are_cut_and_the_hint_survives() {
        let meta = ErrorMetadata::builder()
            .code("InvalidChangeBatch")
            .message(format!("[Tried to create\n{}]", "a record ".repeat(200)))
            .build();
        let raw = HttpResponse::new(
            aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("status"),
            SdkBody::from("<ErrorResponse>...</ErrorResponse>"),
        );
        let err: SdkError<GetChangeError, HttpResponse> =
            SdkError::service_error(GetChangeError::generic(meta), raw);
        let e = to_error(
            "route53",
            "ChangeResourceRecordSets",
            Idempotency::NonIdempotent,
            &err,
            Some(400),
        );
        let s = line_of(&e);
        assert!(
            s.starts_with("route53 ChangeResourceRecordSets: HTTP 400, InvalidChangeBatch: [Tried to create a record"),
            "{s}"
        );
        assert!(
            s.ends_with("nothing was written; check the record spec"),
            "{s}"
        );
        assert!(!s.contains("ServiceError") && !s.contains("raw"), "{s}");
    }

    #[test]
    fn a_dropped_write_says_no_response_and_maybe_applied() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection closed before message completed",
        );
        let err: SdkError<GetChangeError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
        let e = to_error(
            "ecs",
            "UpdateService",
            Idempotency::NonIdempotent,
            &err,
            None,
        );
        assert_eq!(
            line_of(&e),
            "ecs UpdateService: no response, connection failed: connection closed before message \
             completed; the change may have been applied; the next reconcile re-reads live state"
        );
        let e = to_error(
            "ecs",
            "DescribeServices",
            Idempotency::Idempotent,
            &failure("ThrottlingException", 400),
            Some(400),
        );
        assert_eq!(
            line_of(&e),
            "ecs DescribeServices: HTTP 400, ThrottlingException: told so; throttled; retried on the next reconcile"
        );
    }
}
