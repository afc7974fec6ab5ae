//! The split store against the `prometheus` crate it replaced (the oracle).

use super::*;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::collections::{BTreeMap, BTreeSet};

/// The per-split families as the `prometheus` crate kept them before this store: the oracle.
#[derive(Default)]
struct Crate {
    r: Registry,
    gauges: std::cell::RefCell<BTreeMap<String, GaugeVec>>,
    counters: std::cell::RefCell<BTreeMap<String, IntCounterVec>>,
}

impl Crate {
    fn help(name: &str) -> &'static str {
        Family::ALL
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.help())
            .expect("a per-split family")
    }
    fn gauge(&self, name: &str, labels: &[&str]) -> GaugeVec {
        let mut all = self.gauges.borrow_mut();
        all.entry(name.to_string())
            .or_insert_with(|| {
                let g = GaugeVec::new(Opts::new(name, Self::help(name)), labels).expect("valid");
                self.r.register(Box::new(g.clone())).expect("unique");
                g
            })
            .clone()
    }
    fn counter(&self, name: &str, labels: &[&str]) -> IntCounterVec {
        let mut all = self.counters.borrow_mut();
        all.entry(name.to_string())
            .or_insert_with(|| {
                let c =
                    IntCounterVec::new(Opts::new(name, Self::help(name)), labels).expect("valid");
                self.r.register(Box::new(c.clone())).expect("unique");
                c
            })
            .clone()
    }
    fn text(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.r.gather(), &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }
}

/// Family name -> (HELP and TYPE lines, sample lines as a set); also checks that a family's
/// lines are contiguous and come after its HELP and TYPE.
fn families(text: &str) -> BTreeMap<String, (Vec<String>, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut current = String::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            current = rest.split(' ').next().unwrap_or_default().to_string();
            assert!(!out.contains_key(&current), "{current} twice");
        }
        let name = l.split(['{', ' ']).next().unwrap_or_default();
        if !l.starts_with('#') {
            assert!(
                name.starts_with(&current),
                "{l} outside its family {current}"
            );
        }
        let e = out.entry(current.clone()).or_default();
        if l.starts_with('#') {
            e.0.push(l.to_string());
        } else {
            assert!(e.1.insert(l.to_string()), "duplicate series {l}");
        }
    }
    out
}

#[test]
fn same_exposition_as_the_prometheus_crate() {
    let c = Crate::default();
    let store = Splits::default();
    let sb = &["split", "backend"];
    let sg = &["split", "gate"];
    let s = &["split"];
    let split = "we\"ird\\name\n";
    let gates = ["smoke".to_string(), "p99".to_string()];

    // A loaded split: counters at 0, then a cycle's worth of everything.
    store.init(split, &gates);
    for r in RECONCILE_RESULTS {
        c.counter("trafficshift_reconciles_total", &["split", "result"])
            .with_label_values(&[split, r]);
    }
    for k in Error::KINDS {
        c.counter("trafficshift_reconcile_errors_total", &["split", "kind"])
            .with_label_values(&[split, k]);
    }
    for a in ROUTE53_ACTIONS {
        c.counter("trafficshift_route53_changes_total", &["split", "action"])
            .with_label_values(&[split, a]);
    }
    c.counter("trafficshift_drift_corrections_total", s)
        .with_label_values(&[split]);
    c.counter("trafficshift_rollbacks_total", s)
        .with_label_values(&[split]);
    for g in &gates {
        c.counter("trafficshift_gate_failures_total", sg)
            .with_label_values(&[split, g]);
    }
    let h = HistogramVec::new(
        HistogramOpts::new(
            "trafficshift_reconcile_duration_seconds",
            Crate::help("trafficshift_reconcile_duration_seconds"),
        )
        .buckets(DURATION_BUCKETS.to_vec()),
        s,
    )
    .expect("valid");
    c.r.register(Box::new(h.clone())).expect("unique");
    for d in [0.003, 0.01, 0.2, 7.5, 100.0] {
        h.with_label_values(&[split]).observe(d);
        store.update(split, |x| x.observe_duration(d));
    }
    c.counter("trafficshift_reconciles_total", &["split", "result"])
        .with_label_values(&[split, "error"])
        .inc_by(2);
    c.counter("trafficshift_reconcile_errors_total", &["split", "kind"])
        .with_label_values(&[split, "conflict"])
        .inc_by(2);
    c.counter("trafficshift_route53_changes_total", &["split", "action"])
        .with_label_values(&[split, "upsert"])
        .inc();
    c.counter("trafficshift_rollbacks_total", s)
        .with_label_values(&[split])
        .inc();
    c.counter("trafficshift_gate_failures_total", sg)
        .with_label_values(&[split, "p99"])
        .inc();
    store.update(split, |x| {
        x.count_reconcile(false);
        x.count_reconcile(false);
        x.count_error("conflict");
        x.count_error("conflict");
        x.count_route53_change("upsert");
        x.count_rollback();
        x.count_gate_failure("p99");
    });
    for (b, w, obs, ecs, share) in [
        ("blue", 0.8, Some(0.9), None, Some(1.0 / 3.0)),
        ("gr\"een", 0.2, None, Some((3, 2)), None),
    ] {
        c.gauge("trafficshift_target_weight_ratio", sb)
            .with_label_values(&[split, b])
            .set(w);
        c.gauge("trafficshift_step_weight_ratio", sb)
            .with_label_values(&[split, b])
            .set(w / 2.0);
        if let Some(o) = obs {
            c.gauge("trafficshift_observed_weight_ratio", sb)
                .with_label_values(&[split, b])
                .set(o);
        }
        if let Some((d, r)) = ecs {
            c.gauge("trafficshift_ecs_desired_tasks", sb)
                .with_label_values(&[split, b])
                .set(d as f64);
            c.gauge("trafficshift_ecs_running_tasks", sb)
                .with_label_values(&[split, b])
                .set(r as f64);
        }
        if let Some(v) = share {
            c.gauge("trafficshift_traffic_share_ratio", sb)
                .with_label_values(&[split, b])
                .set(v);
            c.gauge("trafficshift_backend_requests_per_second", sb)
                .with_label_values(&[split, b])
                .set(12.5);
        }
        store.update(split, |x| {
            let s = x.backend(b);
            s.target_weight = Some(w);
            s.step_weight = Some(w / 2.0);
            s.observed_weight = obs;
            s.ecs_desired = ecs.map(|e| e.0);
            s.ecs_running = ecs.map(|e| e.1);
            s.traffic_share = share;
            s.requests_per_second = share.map(|_| 12.5);
        });
    }
    for (g, passing, fails, value) in [("smoke", 1, 0, None), ("p99", 0, 1, Some(0.25))] {
        c.gauge("trafficshift_gate_passing", sg)
            .with_label_values(&[split, g])
            .set(passing as f64);
        c.gauge("trafficshift_gate_consecutive_failures", sg)
            .with_label_values(&[split, g])
            .set(fails as f64);
        if let Some(v) = value {
            c.gauge("trafficshift_gate_value", sg)
                .with_label_values(&[split, g])
                .set(v);
        }
        store.update(split, |x| {
            let s = x.gate(g);
            s.passing = Some(passing);
            s.consecutive_failures = Some(fails);
            s.value = value;
        });
    }
    for state in STATES {
        c.gauge("trafficshift_split_state", &["split", "state"])
            .with_label_values(&[split, state])
            .set(f64::from(u8::from(state == "Degraded")));
    }
    for (name, v) in [
        ("trafficshift_drift_ratio", 0.1),
        ("trafficshift_rollout_progress_ratio", 0.5),
        (
            "trafficshift_last_reconcile_success_timestamp_seconds",
            1.7e9,
        ),
        ("trafficshift_rollout_step", 2.0),
        ("trafficshift_rollout_steps", 4.0),
    ] {
        c.gauge(name, s).with_label_values(&[split]).set(v);
    }
    c.gauge(
        "trafficshift_split_info",
        &["split", "record", "zone", "owner", "account"],
    )
    .with_label_values(&[split, "api.example.", "example.", "me", "1234"])
    .set(1.0);
    store.update(split, |x| {
        x.set_state("Degraded");
        x.drift = Some(0.1);
        x.progress = Some(0.5);
        x.last_success = Some(1.7e9);
        x.step = Some(2);
        x.steps = Some(4);
        x.set_info("api.example.", "example.", "me", "1234");
    });

    // A removed split: its gauges go (the crate: remove_label_values), its counters stay.
    store.init("gone", &[]);
    store.update("gone", |x| {
        x.set_state("Complete");
        x.drift = Some(0.0);
        x.backend("b").target_weight = Some(1.0);
    });
    store.forget("gone");
    for r in RECONCILE_RESULTS {
        c.counter("trafficshift_reconciles_total", &["split", "result"])
            .with_label_values(&["gone", r]);
    }
    for k in Error::KINDS {
        c.counter("trafficshift_reconcile_errors_total", &["split", "kind"])
            .with_label_values(&["gone", k]);
    }
    for a in ROUTE53_ACTIONS {
        c.counter("trafficshift_route53_changes_total", &["split", "action"])
            .with_label_values(&["gone", a]);
    }
    c.counter("trafficshift_drift_corrections_total", s)
        .with_label_values(&["gone"]);
    c.counter("trafficshift_rollbacks_total", s)
        .with_label_values(&["gone"]);
    // Gauges only, then forgotten: nothing of it remains.
    store.update("ghost", |x| x.drift = Some(1.0));
    store.forget("ghost");
    assert!(!store.lock().contains_key("ghost"));

    let ours: String = store.chunks().collect();
    let want = c.text();
    assert_eq!(
        families(&ours),
        families(&want),
        "ours:\n{ours}\ncrate:\n{want}"
    );
    // Every per-split family was exercised.
    assert_eq!(families(&ours).len(), Family::ALL.len());
}

#[test]
fn pieces_are_bounded_and_add_up_to_the_whole() {
    let store = Splits::default();
    for i in 0..2000 {
        let name = format!("split-{i:05}");
        store.init(&name, &["g".to_string()]);
        store.update(&name, |x| {
            x.set_state("Complete");
            x.observe_duration(0.2);
        });
    }
    let pieces: Vec<String> = store.chunks().collect();
    assert!(pieces.len() > 10, "{} pieces", pieces.len());
    // A piece stops after the split that crossed the bound.
    assert!(pieces.iter().all(|p| p.len() < CHUNK_BYTES + 4096));
    let whole = pieces.concat();
    let f = families(&whole);
    let state = &f["trafficshift_split_state"];
    assert_eq!(state.1.len(), 2000 * STATES.len());
    assert_eq!(state.0.len(), 2, "HELP and TYPE once");
}
