//! Pure arithmetic on splits: step interpolation, rounding, ECS task counts, drift.

use crate::spec::{EcsBackend, Weights};

/// `start + (target - start) * pct/100` for every backend of `target`, rounded by largest remainder
/// so the result is integers summing to 100. Each value is within 1 of the exact one, and
/// `pct = 100` gives `target` exactly.
pub fn interpolate(start: &Weights, target: &Weights, pct: u32) -> Weights {
    let pct = i64::from(pct.min(100));
    // Work in hundredths of a percent so the exact value is an integer.
    let exact: Vec<(&String, i64)> = target
        .iter()
        .map(|(name, &t)| {
            let s = i64::from(start.get(name).copied().unwrap_or(0));
            (name, s * 100 + (i64::from(t) - s) * pct)
        })
        .collect();
    let mut out: Weights = exact
        .iter()
        .map(|(n, v)| ((*n).clone(), (v.div_euclid(100)) as u32))
        .collect();
    let assigned: u32 = out.values().sum();
    let total: u32 = target.values().sum();
    let mut missing = total.saturating_sub(assigned);
    if missing > 0 {
        let mut order: Vec<(&String, i64)> =
            exact.iter().map(|(n, v)| (*n, v.rem_euclid(100))).collect();
        // Largest remainder first; ties go to the backend earlier in name order (deterministic).
        order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (name, rem) in order {
            if missing == 0 {
                break;
            }
            if rem > 0 {
                *out.get_mut(name).expect("present") += 1;
                missing -= 1;
            }
        }
    }
    out
}

/// ECS desired count for a share in percent: clamp(ceil(tasksAtFullTraffic * share/100), min, max).
pub fn tasks_for(ecs: &EcsBackend, share: u32) -> u32 {
    let need = (u64::from(ecs.tasks_at_full_traffic) * u64::from(share)).div_ceil(100) as u32;
    need.clamp(ecs.min_tasks.min(ecs.max_tasks()), ecs.max_tasks())
}

/// Half the L1 distance between two splits, as a ratio 0-1 (0 = identical).
pub fn drift(observed: &Weights, wanted: &Weights) -> f64 {
    let mut names: Vec<&String> = observed.keys().chain(wanted.keys()).collect();
    names.sort();
    names.dedup();
    let l1: u64 = names
        .iter()
        .map(|n| {
            let o = i64::from(observed.get(*n).copied().unwrap_or(0));
            let w = i64::from(wanted.get(*n).copied().unwrap_or(0));
            (o - w).unsigned_abs()
        })
        .sum();
    l1 as f64 / 200.0
}

/// Route53 weights (0-255 each, any sum) as percentages summing to 100, or None when all are 0.
pub fn normalize(raw: &Weights) -> Option<Weights> {
    let sum: u64 = raw.values().map(|&v| u64::from(v)).sum();
    if sum == 0 {
        return None;
    }
    if sum == 100 {
        return Some(raw.clone());
    }
    // Scale to 100 with the same largest-remainder rounding.
    let hundredths: Weights = raw
        .iter()
        .map(|(k, &v)| (k.clone(), ((u64::from(v) * 10_000) / sum) as u32))
        .collect();
    let mut out: Weights = hundredths
        .iter()
        .map(|(k, v)| (k.clone(), v / 100))
        .collect();
    let mut missing = 100 - out.values().sum::<u32>();
    let mut order: Vec<(&String, u32)> = hundredths.iter().map(|(k, v)| (k, v % 100)).collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (k, _) in order {
        if missing == 0 {
            break;
        }
        *out.get_mut(k).expect("present") += 1;
        missing -= 1;
    }
    Some(out)
}

/// Route53 weights as Route53 answers them: a set whose weights are all 0 is answered evenly
/// across its records, the same as every record at weight 1.
pub fn route53_shares(raw: &Weights) -> Weights {
    if raw.values().all(|&v| v == 0) {
        raw.keys().map(|k| (k.clone(), 1)).collect()
    } else {
        raw.clone()
    }
}

/// Compact `a=1 b=99` rendering for logs.
pub fn show(w: &Weights) -> String {
    w.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(pairs: &[(&str, u32)]) -> Weights {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn interpolates_the_issue_example() {
        let start = w(&[("lambda", 100), ("fargate", 0)]);
        let target = w(&[("lambda", 0), ("fargate", 100)]);
        assert_eq!(
            interpolate(&start, &target, 5),
            w(&[("lambda", 95), ("fargate", 5)])
        );
        assert_eq!(
            interpolate(&start, &target, 25),
            w(&[("lambda", 75), ("fargate", 25)])
        );
        assert_eq!(interpolate(&start, &target, 100), target);
        assert_eq!(interpolate(&start, &target, 0), start);
    }

    #[test]
    fn rounds_to_a_sum_of_100() {
        let start = w(&[("a", 100), ("b", 0), ("c", 0)]);
        let target = w(&[("a", 0), ("b", 50), ("c", 50)]);
        let mid = interpolate(&start, &target, 33);
        assert_eq!(mid.values().sum::<u32>(), 100);
        assert_eq!(mid, w(&[("a", 67), ("b", 17), ("c", 16)]));
    }

    #[test]
    fn tasks_follow_share() {
        let ecs = EcsBackend {
            cluster: "prod".into(),
            service: "api".into(),
            tasks_at_full_traffic: 20,
            min_tasks: 2,
            max_tasks: Some(40),
        };
        assert_eq!(tasks_for(&ecs, 0), 2);
        assert_eq!(tasks_for(&ecs, 5), 2);
        assert_eq!(tasks_for(&ecs, 25), 5);
        assert_eq!(tasks_for(&ecs, 26), 6);
        assert_eq!(tasks_for(&ecs, 100), 20);
    }

    #[test]
    fn drift_and_normalize() {
        assert_eq!(
            drift(&w(&[("a", 75), ("b", 25)]), &w(&[("a", 50), ("b", 50)])),
            0.25
        );
        assert_eq!(drift(&w(&[("a", 50)]), &w(&[("a", 50)])), 0.0);
        assert_eq!(
            normalize(&w(&[("a", 200), ("b", 55)])),
            Some(w(&[("a", 78), ("b", 22)]))
        );
        assert_eq!(normalize(&w(&[("a", 0), ("b", 0)])), None);
    }

    fn split_strategy() -> impl Strategy<Value = Weights> {
        (1usize..6)
            .prop_flat_map(|n| prop::collection::vec(0u32..1000, n))
            .prop_filter("not all zero", |v| v.iter().any(|&x| x > 0))
            .prop_map(|raw| {
                let named: Weights = raw
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (format!("b{i}"), v))
                    .collect();
                normalize(&named).expect("not all zero")
            })
    }

    proptest! {
        #[test]
        fn interpolation_sums_to_100_and_stays_close(
            (start, target) in (1usize..6).prop_flat_map(|n| {
                let s = prop::collection::vec(0u32..1000, n).prop_filter("nz", |v| v.iter().any(|&x| x > 0));
                let t = prop::collection::vec(0u32..1000, n).prop_filter("nz", |v| v.iter().any(|&x| x > 0));
                (s, t)
            }).prop_map(|(s, t)| {
                let name = |v: Vec<u32>| -> Weights { v.into_iter().enumerate().map(|(i, x)| (format!("b{i}"), x)).collect() };
                (normalize(&name(s)).unwrap(), normalize(&name(t)).unwrap())
            }),
            pct in 0u32..=100,
        ) {
            let mid = interpolate(&start, &target, pct);
            prop_assert_eq!(mid.values().sum::<u32>(), 100);
            for (k, &v) in &mid {
                let s = f64::from(start[k]);
                let exact = s + (f64::from(target[k]) - s) * f64::from(pct) / 100.0;
                prop_assert!((f64::from(v) - exact).abs() < 1.0, "{k}: {v} vs {exact}");
            }
            if pct == 100 { prop_assert_eq!(&mid, &target); }
            if pct == 0 { prop_assert_eq!(&mid, &start); }
        }

        #[test]
        fn normalized_splits_sum_to_100(s in split_strategy()) {
            prop_assert_eq!(s.values().sum::<u32>(), 100);
        }
    }
}
