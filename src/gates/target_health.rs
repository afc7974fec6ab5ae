//! `targetHealth`: enough of the backend's load balancer targets are healthy.

use crate::spec::{TargetHealthGate, TrafficSplit};

use super::{GateChecker, GateOutcome};

impl GateChecker {
    pub(super) async fn target_health(
        &self,
        split: &TrafficSplit,
        g: &TargetHealthGate,
    ) -> GateOutcome {
        let (label, svc) = match self.service_of(split, &g.backend).await {
            Ok(x) => x,
            Err(outcome) => return outcome,
        };
        let Some(tg) = svc.target_groups.first() else {
            return GateOutcome::fail(format!(
                "ECS service {label} has no target group (its loadBalancers list is empty)"
            ));
        };
        let (healthy, total) = match self.aws.targets.target_health(tg).await {
            Ok(x) => x,
            Err(e) => {
                return GateOutcome::fail(format!("cannot read target health of {label}: {e}"))
            }
        };
        if total == 0 {
            return GateOutcome::fail(format!("no targets registered for {label}")).with_value(0.0);
        }
        let percent = f64::from(healthy) * 100.0 / f64::from(total);
        let min = g.min_healthy_percent;
        // Integer comparison: 2 of 3 healthy must not pass a 67% minimum through rounding.
        let ok = u64::from(healthy) * 100 >= u64::from(min) * u64::from(total);
        let message =
            format!("{healthy}/{total} targets of {label} healthy ({percent:.0}%, min {min}%)");
        let outcome = if ok {
            GateOutcome::pass(message)
        } else {
            GateOutcome::fail(message)
        };
        outcome.with_value(percent)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::gates::fakes::*;
    use crate::spec::Gate;

    fn health_gate(min: u32) -> Gate {
        Gate {
            target_health: Some(TargetHealthGate {
                backend: "fargate".into(),
                min_healthy_percent: min,
            }),
            ..gate("health")
        }
    }

    fn health_checker(healthy: u32, total: u32) -> GateChecker {
        let ecs = FakeEcs {
            services: vec![service(20, 20, 1)],
            fail: false,
        };
        let targets = FakeTargets {
            health: HashMap::from([("arn:tg/api".to_string(), (healthy, total))]),
        };
        checker(ecs, targets, FakeAlarms::default())
    }

    #[tokio::test]
    async fn target_health_thresholds() {
        let o = health_checker(9, 10)
            .check(&split(), &health_gate(90))
            .await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.value, Some(90.0));
        assert_eq!(o.message, "9/10 targets of prod/api healthy (90%, min 90%)");

        let o = health_checker(9, 10)
            .check(&split(), &health_gate(100))
            .await;
        assert!(!o.passing);

        // 2/3 is 66.67%: passes 66, fails 67 (no rounding up).
        assert!(
            health_checker(2, 3)
                .check(&split(), &health_gate(66))
                .await
                .passing
        );
        assert!(
            !health_checker(2, 3)
                .check(&split(), &health_gate(67))
                .await
                .passing
        );

        let o = health_checker(0, 0).check(&split(), &health_gate(0)).await;
        assert!(!o.passing, "no registered targets must fail even at 0%");
        assert!(o.message.contains("no targets registered"), "{}", o.message);
    }

    #[tokio::test]
    async fn target_health_without_target_group_fails() {
        let mut svc = service(20, 20, 1);
        svc.target_groups.clear();
        let c = checker(
            FakeEcs {
                services: vec![svc],
                fail: false,
            },
            FakeTargets::default(),
            FakeAlarms::default(),
        );
        let o = c.check(&split(), &health_gate(100)).await;
        assert!(!o.passing);
        assert!(o.message.contains("no target group"), "{}", o.message);
    }
}
