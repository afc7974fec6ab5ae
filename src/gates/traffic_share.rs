//! `trafficShare`: every backend's measured share of the requests is within `tolerance`
//! percentage points of its current Route53 weight.
//!
//! The share lags the weights: resolvers keep the old answer for up to a TTL, and the window
//! still holds minutes from before the change. Right after the weights change the gate waits
//! (`settle`, default TTL + window) instead of failing on a share that describes the old weights.

use crate::spec::{OnTrafficNoData, TrafficShareGate, TrafficSplit};
use crate::traffic;

use super::{GateChecker, GateOutcome};

impl GateChecker {
    pub(super) fn traffic_share(
        &self,
        split: &TrafficSplit,
        g: &TrafficShareGate,
        now: u64,
    ) -> GateOutcome {
        let no_data = |why: String| match g.on_no_data {
            OnTrafficNoData::Wait => GateOutcome::wait(format!("traffic share unknown: {why}")),
            OnTrafficNoData::Pass => {
                GateOutcome::pass(format!("traffic share unknown ({why}); onNoData: pass"))
            }
            OnTrafficNoData::Fail => GateOutcome::fail(format!("traffic share unknown: {why}")),
        };
        let Some((weights, since)) = self.traffic.weights(split.name()) else {
            return no_data("the Route53 weights have not been read yet".into());
        };
        let settle = g
            .settle
            .map(|s| s.get().as_secs())
            .unwrap_or(split.spec.record.ttl.max(0) as u64 + split.spec.observe_window().as_secs());
        if let Some(since) = since {
            if now < since.saturating_add(settle) {
                return GateOutcome::wait(format!(
                    "the weights changed {}s ago; the share reflects them after {settle}s (TTL + window)",
                    now.saturating_sub(since)
                ));
            }
        }
        let Some(t) = self.traffic.get(split.name()) else {
            return no_data("no CloudWatch measurement yet".into());
        };
        let Some((dev, worst)) = traffic::deviation(&t.backends, &weights) else {
            return no_data(
                t.problem
                    .unwrap_or_else(|| "no request in the window".into()),
            );
        };
        let share = t.backends[&worst].share.unwrap_or_default() * 100.0;
        let weight = weights.get(&worst).copied().unwrap_or_default();
        let message = format!(
            "{worst} serves {share:.1}% of requests at weight {weight}% ({dev:.1} points off, tolerance {})",
            g.tolerance
        );
        // A small epsilon: 30% of 1000 requests is 30.000000000000004 in floating point.
        let outcome = if dev <= f64::from(g.tolerance) + 1e-9 {
            GateOutcome::pass(message)
        } else {
            GateOutcome::fail(message)
        };
        outcome.with_value(dev)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::gates::fakes::*;
    use crate::spec::{Gate, HumanDuration, Weights};
    use crate::traffic::{shares, SplitTraffic, Store};

    fn share_gate(tolerance: u32, on_no_data: OnTrafficNoData) -> Gate {
        Gate {
            traffic_share: Some(TrafficShareGate {
                tolerance,
                on_no_data,
                settle: Some(HumanDuration(std::time::Duration::from_secs(120))),
            }),
            ..gate("share")
        }
    }

    fn store(weights: &[(&str, u32)], counts: Option<&[(&str, Option<f64>)]>) -> Arc<Store> {
        let s = Arc::new(Store::default());
        let w: Weights = weights.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        s.observe_weights("checkout", Some(&w), 1_000);
        if let Some(c) = counts {
            let c: BTreeMap<String, Option<f64>> =
                c.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            s.set(
                "checkout",
                SplitTraffic {
                    backends: shares(&c, 300),
                    measured_at: 1_000,
                    window_secs: 300,
                    problem: None,
                },
            );
        }
        s
    }

    fn check(s: Arc<Store>, g: &Gate, now: u64) -> GateOutcome {
        let c = plain_checker().with_traffic(s);
        let mut split = split();
        split.metadata.name = "checkout".into();
        c.traffic_share(&split, g.traffic_share.as_ref().unwrap(), now)
    }

    #[test]
    fn within_tolerance_passes_outside_fails() {
        let counts: &[(&str, Option<f64>)] = &[("lambda", Some(300.0)), ("fargate", Some(700.0))];
        let o = check(
            store(&[("lambda", 40), ("fargate", 60)], Some(counts)),
            &share_gate(10, OnTrafficNoData::Wait),
            2_000,
        );
        assert!(o.passing, "10 points off at tolerance 10 passes: {o:?}");
        assert!((o.value.unwrap() - 10.0).abs() < 1e-9);
        let o = check(
            store(&[("lambda", 50), ("fargate", 50)], Some(counts)),
            &share_gate(10, OnTrafficNoData::Wait),
            2_000,
        );
        assert!(!o.passing && !o.waiting, "{o:?}");
        assert!((o.value.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(
            o.message,
            "fargate serves 70.0% of requests at weight 50% (20.0 points off, tolerance 10)"
        );
    }

    #[test]
    fn unknown_share_follows_on_no_data() {
        let counts: &[(&str, Option<f64>)] = &[("lambda", None), ("fargate", Some(700.0))];
        let w = &[("lambda", 30), ("fargate", 70)];
        let o = check(
            store(w, Some(counts)),
            &share_gate(10, OnTrafficNoData::Wait),
            2_000,
        );
        assert!(o.waiting && !o.passing, "{o:?}");
        let o = check(
            store(w, Some(counts)),
            &share_gate(10, OnTrafficNoData::Fail),
            2_000,
        );
        assert!(!o.waiting && !o.passing, "{o:?}");
        let o = check(
            store(w, None),
            &share_gate(10, OnTrafficNoData::Pass),
            2_000,
        );
        assert!(o.passing, "{o:?}");
    }

    #[test]
    fn waits_while_the_share_still_reflects_old_weights() {
        let counts: &[(&str, Option<f64>)] = &[("lambda", Some(300.0)), ("fargate", Some(700.0))];
        let s = store(&[("lambda", 50), ("fargate", 50)], Some(counts));
        let w: Weights = [("lambda".into(), 90), ("fargate".into(), 10)].into();
        s.observe_weights("checkout", Some(&w), 5_000);
        let g = share_gate(10, OnTrafficNoData::Fail);
        let o = check(s.clone(), &g, 5_119);
        assert!(o.waiting, "{o:?}");
        let o = check(s, &g, 5_120);
        assert!(!o.waiting && !o.passing, "judged once settled: {o:?}");
    }
}
