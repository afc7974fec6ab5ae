//! Health gates: the checks a rollout step must pass before the next one.
//!
//! A check never returns an error: a timeout, an AWS error or a bad response is a failing outcome
//! whose message says what went wrong, so the rollout's failure threshold treats them alike.
//!
//! One file per kind of gate (`cloudwatch_alarm`, `ecs_stable`, `target_health`, `prometheus`,
//! `http`, `traffic_share`), each adding its check to `GateChecker`; this file dispatches to them. `http` also
//! holds the client HTTP and Prometheus gates share, and the address checks that keep gates
//! off instance metadata and loopback.

mod cloudwatch_alarm;
mod ecs_stable;
#[cfg(test)]
mod fakes;
mod http;
mod prometheus;
mod target_health;
mod traffic_share;

use crate::aws::Aws;
use crate::sanitize;
use crate::spec::{Gate, TrafficSplit};

pub(crate) use http::root_cause;
pub use http::{is_link_local, literal_ip, redact, refused_address};

/// The result of one gate check.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    pub passing: bool,
    /// Neither pass nor failure: the step waits and no failure is counted (e.g. an alarm with
    /// INSUFFICIENT_DATA under `onInsufficientData: wait`). `passing` is false.
    pub waiting: bool,
    /// The measured value, for gates that measure one (Prometheus sample, healthy target percent).
    pub value: Option<f64>,
    /// What was seen, in words; says why when failing.
    pub message: String,
}

impl GateOutcome {
    // Messages carry remote text (Prometheus errors, socket errors); they are bounded and cleaned
    // here, once, before they reach events, /status, logs and metrics.
    fn pass(message: impl Into<String>) -> Self {
        GateOutcome {
            passing: true,
            waiting: false,
            value: None,
            message: sanitize::message(&message.into()),
        }
    }

    fn fail(message: impl Into<String>) -> Self {
        GateOutcome {
            passing: false,
            waiting: false,
            value: None,
            message: sanitize::message(&message.into()),
        }
    }

    pub fn wait(message: impl Into<String>) -> Self {
        GateOutcome {
            passing: false,
            waiting: true,
            value: None,
            message: sanitize::message(&message.into()),
        }
    }

    fn with_value(mut self, value: f64) -> Self {
        self.value = Some(value);
        self
    }
}

/// What HTTP and Prometheus gates may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateOptions {
    /// Let gates connect to loopback addresses (`--allow-loopback-gates`): for tests and local
    /// demos. In a pod, loopback is the controller itself or a sidecar, never a health endpoint.
    pub allow_loopback: bool,
    /// Call HTTP and Prometheus gates at all. `plan` leaves them alone unless `--with-gates`: a
    /// plan in CI should not hit production endpoints as a side effect.
    pub remote: bool,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            allow_loopback: false,
            remote: true,
        }
    }
}

/// Checks gates against AWS, Prometheus and HTTP endpoints.
#[derive(Clone)]
pub struct GateChecker {
    /// Built on the first HTTP or Prometheus gate (building one loads and parses the system's
    /// trusted roots, which most document sets never need); shared by [`GateChecker::with_aws`].
    http: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
    aws: Aws,
    options: GateOptions,
    /// Measured traffic shares and the Route53 weights, for `trafficShare`.
    traffic: std::sync::Arc<crate::traffic::Store>,
}

impl GateChecker {
    /// A checker with the default options: loopback refused, remote gates called.
    pub fn new(aws: Aws) -> Self {
        Self::with_options(aws, GateOptions::default())
    }

    pub fn with_options(aws: Aws, options: GateOptions) -> Self {
        GateChecker {
            http: Default::default(),
            aws,
            options,
            traffic: Default::default(),
        }
    }

    /// Read traffic shares from `store` (the one the traffic poller fills).
    pub fn with_traffic(mut self, store: std::sync::Arc<crate::traffic::Store>) -> Self {
        self.traffic = store;
        self
    }

    /// The same checker (options, HTTP client) reading CloudWatch and ELB through `aws`: a
    /// cross-account split's gates look in its account.
    pub fn with_aws(&self, aws: Aws) -> Self {
        GateChecker {
            http: self.http.clone(),
            aws,
            options: self.options,
            traffic: self.traffic.clone(),
        }
    }

    fn http_client(&self) -> &reqwest::Client {
        self.http
            .get_or_init(|| http::client(self.options.allow_loopback))
    }

    /// Whether `check` calls this gate. Gates it skips stay "not checked yet".
    pub fn will_check(&self, gate: &Gate) -> bool {
        self.options.remote || (gate.http.is_none() && gate.prometheus.is_none())
    }

    /// Run one check of `gate` for `split`. Never fails: errors become failing outcomes.
    pub async fn check(&self, split: &TrafficSplit, gate: &Gate) -> GateOutcome {
        if let Some(g) = &gate.cloudwatch_alarm {
            self.cloudwatch_alarm(g).await
        } else if let Some(g) = &gate.ecs_stable {
            self.ecs_stable(split, g).await
        } else if let Some(g) = &gate.target_health {
            self.target_health(split, g).await
        } else if let Some(g) = &gate.prometheus {
            self.prometheus(g).await
        } else if let Some(g) = &gate.http {
            self.http(g).await
        } else if let Some(g) = &gate.traffic_share {
            self.traffic_share(split, g, crate::status::now_unix())
        } else {
            GateOutcome::fail("gate has no check (set one of cloudwatchAlarm, ecsStable, targetHealth, prometheus, http, trafficShare)")
        }
    }

    /// The ECS service of backend `name`, or a failing outcome saying why there is none.
    async fn service_of(
        &self,
        split: &TrafficSplit,
        name: &str,
    ) -> Result<(String, crate::aws::EcsService), GateOutcome> {
        let backend = split
            .backend(name)
            .ok_or_else(|| GateOutcome::fail(format!("backend {name} is not in this split")))?;
        let ecs = backend
            .ecs
            .as_ref()
            .ok_or_else(|| GateOutcome::fail(format!("backend {name} is not an ecs backend")))?;
        let label = format!("{}/{}", ecs.cluster, ecs.service);
        let services = self
            .aws
            .ecs
            .describe(&ecs.cluster, std::slice::from_ref(&ecs.service))
            .await
            .map_err(|e| GateOutcome::fail(format!("cannot describe ECS service {label}: {e}")))?;
        match services.into_iter().next() {
            Some(s) => Ok((label, s)),
            None => Err(GateOutcome::fail(format!(
                "ECS service {label} not found (missing or INACTIVE)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::fakes::*;

    #[tokio::test]
    async fn gate_without_kind_fails() {
        assert!(
            !plain_checker()
                .check(&split(), &gate("empty"))
                .await
                .passing
        );
    }

    #[tokio::test]
    async fn plan_mode_skips_remote_gates_only() {
        let c = checker_with(
            FakeEcs::default(),
            FakeTargets::default(),
            FakeAlarms::default(),
            GateOptions {
                allow_loopback: false,
                remote: false,
            },
        );
        assert!(!c.will_check(&http_gate("http://x/", 200)));
        assert!(!c.will_check(&prom_gate("http://x/", "q")));
        assert!(c.will_check(&ecs_gate()));
        assert!(plain_checker().will_check(&http_gate("http://x/", 200)));
    }
}
