//! `ecsStable`: the backend's ECS service runs its desired count in one deployment.

use crate::spec::{BackendRef, TrafficSplit};

use super::{GateChecker, GateOutcome};

impl GateChecker {
    pub(super) async fn ecs_stable(&self, split: &TrafficSplit, g: &BackendRef) -> GateOutcome {
        let (label, svc) = match self.service_of(split, &g.backend).await {
            Ok(x) => x,
            Err(outcome) => return outcome,
        };
        let deployments = plural(svc.deployments, "deployment");
        let counts = format!("{}/{} running, {deployments}", svc.running, svc.desired);
        if svc.is_stable() {
            GateOutcome::pass(format!("{label} stable: {counts}"))
        } else {
            let rollout = match svc.rollout_state.as_deref() {
                Some("FAILED") => ", deployment rollout FAILED",
                _ => "",
            };
            GateOutcome::fail(format!("{label} not stable: {counts}{rollout}"))
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::fakes::*;
    use crate::spec::Gate;

    #[tokio::test]
    async fn ecs_stable_passes_and_explains() {
        let ecs = FakeEcs {
            services: vec![service(20, 20, 1)],
            fail: false,
        };
        let c = checker(ecs, FakeTargets::default(), FakeAlarms::default());
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.message, "prod/api stable: 20/20 running, 1 deployment");
    }

    #[tokio::test]
    async fn ecs_unstable_missing_or_error_fail() {
        let ecs = FakeEcs {
            services: vec![service(18, 20, 2)],
            fail: false,
        };
        let c = checker(ecs, FakeTargets::default(), FakeAlarms::default());
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert_eq!(
            o.message,
            "prod/api not stable: 18/20 running, 2 deployments"
        );

        let mut failed = service(20, 20, 1);
        failed.rollout_state = Some("FAILED".into());
        let c = checker(
            FakeEcs {
                services: vec![failed],
                fail: false,
            },
            FakeTargets::default(),
            FakeAlarms::default(),
        );
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert!(o.message.contains("rollout FAILED"), "{}", o.message);

        let o = plain_checker().check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert!(o.message.contains("prod/api not found"), "{}", o.message);

        let c = checker(
            FakeEcs {
                services: vec![],
                fail: true,
            },
            FakeTargets::default(),
            FakeAlarms::default(),
        );
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert!(o.message.contains("AccessDenied"), "{}", o.message);

        let o = plain_checker()
            .check(
                &split(),
                &Gate {
                    ecs_stable: Some(BackendRef {
                        backend: "lambda".into(),
                    }),
                    ..gate("s")
                },
            )
            .await;
        assert!(!o.passing);
        assert_eq!(o.message, "backend lambda is not an ecs backend");
    }
}
