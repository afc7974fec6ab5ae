//! Per split: classification of its records, gates, the rollout decision, then the Route53,
//! ECS and scalable-target changes that carry it out, all as data (the apply follows).

use std::collections::{BTreeMap, HashMap};

use futures::future::join_all;
use futures::FutureExt;

use crate::aws::{EcsService, RecordSet, ScalableTarget};
use crate::plan;
use crate::retire;
use crate::rollout::{self, Decision, EcsObs, Note};
use crate::spec::{TrafficSplit, Weights};
use crate::weights::{drift, show};
use crate::{Error, Result};

use super::autoscaling::autoscaling_changes;
use super::gating::{awaits_capacity, check_gates, gates_matter, least_healthy, summarize};
use super::observe::{resolve_targets, Live};
use super::{clone_err, Context, EcsChange, Pending, Report};

/// Plan every split of the cycle concurrently; each ends with a report or an error.
pub(super) async fn plan_all(ctx: &Context, pending: &mut [Pending], live: &Live, now_ms: u64) {
    join_all(pending.iter_mut().map(|p| plan_split(ctx, p, live, now_ms))).await;
}

async fn plan_split(ctx: &Context, p: &mut Pending, live: &Live, now_ms: u64) {
    // Planning is pure code over remote input, and property-tested not to panic. Should a bug
    // slip through anyway, it costs this split its cycle, never the other splits or the process:
    // nothing is written for it, and the panic is reported as its error.
    let planned = std::panic::AssertUnwindSafe(plan_split_inner(ctx, p, live, now_ms))
        .catch_unwind()
        .await;
    match planned {
        Ok(Ok(r)) => p.report = Some(r),
        Ok(Err(e)) => p.error = Some(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            p.error = Some(Error::Other(format!(
                "internal error while planning (nothing written; please report it): {what}"
            )));
        }
    }
}

async fn plan_split_inner(
    ctx: &Context,
    p: &mut Pending,
    live: &Live,
    now_ms: u64,
) -> Result<Report> {
    let now = now_ms / 1000;
    let doc = p.work.doc.split.clone();
    let refs: Vec<&RecordSet> = p.records.iter().collect();
    // Backends the document dropped but the owned TXT still names take part as fixed targets at
    // weight 0 until retired (see `retire`).
    let leaving = retire::leaving(&doc, &ctx.owner, &refs);
    let split = retire::with_leaving(&doc, &leaving);
    let targets = resolve_targets(ctx, &split, &live.services, &live.cluster_errors).await?;
    if retire::handed_back(&doc, &refs, &targets) {
        return Ok(handed_back_report(&doc));
    }
    let obs = plan::classify(&split, &ctx.owner, &refs, &targets)?;

    // A new rollout (or a retried one) forgets the gate history of the previous one.
    if obs
        .state
        .as_ref()
        .is_none_or(|s| !rollout::same_generation(&s.generation, &split))
        || crate::overrides::retrying(obs.state.as_ref())
    {
        p.work.gates.retain(|_, r| r.consecutive_failures == 0);
    }
    let (mut ecs_obs, ecs_live) = ecs_of(&split, &live.services);
    if crate::overrides::suspended(obs.state.as_ref()) {
        // `trafficshift suspend`: on-call edits Route53 by hand; nothing is written, not even
        // a drift correction, and no gate is run.
        return Ok(suspended_report(&split, &obs, ecs_live));
    }

    let mut notes = Vec::new();
    if let Some(why) = &obs.state_problem {
        notes.push(Note {
            warning: true,
            reason: "StateInvalid",
            message: format!(
                "the stored rollout state cannot be read ({why}); starting a new rollout from what Route53 shows"
            ),
        });
    }
    // Before the gates: trafficShare compares the share with the weights Route53 holds now.
    ctx.traffic
        .observe_weights(split.name(), obs.weights.as_ref(), now);
    // The traffic poller counts an ECS backend's requests by these target groups.
    ctx.traffic.observe_target_groups(
        split.name(),
        ecs_live
            .iter()
            .map(|(b, s)| (b.clone(), s.target_groups.clone()))
            .collect(),
    );
    if gates_matter(&split, &obs) {
        let capacity_wait = awaits_capacity(&split, &obs, now);
        notes.extend(
            check_gates(
                ctx,
                &split,
                &mut p.work.gates,
                capacity_wait,
                &ecs_live,
                now,
            )
            .await,
        );
    }
    let summary = summarize(&split, &p.work.gates, now);

    let window = crate::windows::hold(split.spec.rollout.as_ref(), now);
    let decide = |ecs: &BTreeMap<String, EcsObs>| {
        rollout::decide(&rollout::Inputs {
            split: &split,
            owner: &ctx.owner,
            stored: obs.state.as_ref(),
            observed: obs.weights.as_ref(),
            ecs,
            gates: &summary,
            now_ms,
            window: window.as_ref(),
        })
    };
    let mut d: Decision = decide(&ecs_obs);
    // Target health costs a call per target group: read it only for the backends whose weight
    // is about to rise (the decision says which), then decide again with it.
    if !d.needs_target_health.is_empty() {
        for b in &d.needs_target_health {
            if let (Some(o), Some(s)) = (ecs_obs.get_mut(b), ecs_live.get(b)) {
                o.healthy = Some(least_healthy(ctx, s).await?);
            }
        }
        d = decide(&ecs_obs);
    }
    notes.extend(d.notes.iter().cloned());

    // Autoscaled services first: their bounds go into the state the batch below writes.
    let has_ecs = split.spec.backends.iter().any(|b| b.ecs.is_some());
    let none = HashMap::new();
    let scalable = match &live.scalable {
        Ok(s) => s,
        // Without knowing whether an autoscaler owns a desired count, writing it could fight it.
        Err(e) if has_ecs => return Err(clone_err(e)),
        Err(_) => &none,
    };
    let autoscaling = autoscaling_changes(ctx, &split, obs.state.as_ref(), &mut d, scalable);

    let intended = obs
        .state
        .as_ref()
        .map(|s| s.current.clone())
        .unwrap_or_default();
    let retirement = retire::advance(
        &doc,
        &leaving,
        obs.state.as_ref(),
        &mut d.state,
        d.write.is_some(),
        now,
    );
    notes.extend(retirement.notes.iter().cloned());
    let collapse = d
        .write
        .as_ref()
        .and_then(|_| retire::collapse(&doc, &obs, obs.state.as_ref(), &d.state, &leaving));
    let route53 = match (&d.write, collapse) {
        (Some(_), Some(c)) => {
            notes.push(Note {
                warning: false,
                reason: "HandedBack",
                message: format!(
                    "handed back as plain record: {} now points where backend {} did",
                    crate::spec::fqdn(&doc.spec.record.name),
                    doc.spec.backends[0].name
                ),
            });
            c
        }
        (Some(w), None) if !retirement.delete.is_empty() => {
            // The set as it is after the batch: without the retired records.
            let rest: Vec<retire::Leaving> = leaving
                .iter()
                .filter(|l| !retirement.delete.contains(&l.record))
                .cloned()
                .collect();
            let after = retire::with_leaving(&doc, &rest);
            let mut w = w.clone();
            w.retain(|k, _| after.spec.backends.iter().any(|b| &b.name == k));
            let mut c = plan::route53_changes(&after, &obs, &w, &d.state, &targets, &intended)?;
            for r in &retirement.delete {
                c.insert(
                    0,
                    plan::PlannedChange {
                        change: crate::aws::Change {
                            action: crate::aws::ChangeAction::Delete,
                            record: r.clone(),
                        },
                        why: format!(
                            "retire {}: drained, not in the document",
                            r.set_identifier.as_deref().unwrap_or("-")
                        ),
                        drift: false,
                    },
                );
            }
            c
        }
        (Some(w), None) => plan::route53_changes(&split, &obs, w, &d.state, &targets, &intended)?,
        (None, _) => vec![],
    };
    if let Some(wf) = retirement.waiting_for {
        // A retirement still in progress is not a finished migration.
        if d.status == rollout::SplitState::Complete {
            d.status = rollout::SplitState::Progressing;
        }
        d.waiting_for = Some(match d.waiting_for.take() {
            Some(x) => format!("{x}; {wf}"),
            None => wf,
        });
    }
    let drift_corrected = route53.iter().any(|c| c.drift);
    if drift_corrected {
        notes.push(Note {
            warning: true,
            reason: "DriftCorrected",
            message: format!(
                "Route53 showed {} where trafficshift applied {}; putting it back",
                show(&obs.raw_weights),
                show(&intended)
            ),
        });
    }

    let ecs_changes = ecs_changes(&split, &d, scalable, &ecs_live);

    let step_weights = d.state.current.clone();
    let drift_ratio = drift(
        obs.weights.as_ref().unwrap_or(&Weights::new()),
        &step_weights,
    );
    let drain_until = d
        .state
        .drains
        .values()
        .filter(|x| x.until > now)
        .map(|x| x.until)
        .max();
    Ok(Report {
        state: d.status,
        step: d.state.step,
        steps: d.steps,
        progress: d.progress,
        waiting_for: d.waiting_for.clone(),
        next_step_at: d.next_step_at,
        target: split.spec.weights.clone(),
        step_weights,
        observed: obs.weights.clone(),
        drift: if obs.weights.is_none() {
            1.0
        } else {
            drift_ratio
        },
        ecs: ecs_live,
        route53,
        ecs_changes,
        autoscaling,
        notes,
        drift_corrected,
        rolled_back: d.rolled_back,
        applied: false,
        drain_until,
        pending_change: None,
        control: d.state.control.clone(),
    })
}

/// The report of a split whose name was handed back as a plain record: nothing to do.
fn handed_back_report(doc: &TrafficSplit) -> Report {
    let full: Weights = doc
        .spec
        .backends
        .iter()
        .map(|b| (b.name.clone(), 100))
        .collect();
    Report {
        state: rollout::SplitState::Complete,
        step: 0,
        steps: 0,
        progress: 1.0,
        waiting_for: Some(
            "nothing: handed back as plain record (plainWhenSingle); trafficshift leaves it alone"
                .into(),
        ),
        next_step_at: None,
        target: doc.spec.weights.clone(),
        step_weights: full.clone(),
        observed: Some(full),
        drift: 0.0,
        ecs: BTreeMap::new(),
        route53: vec![],
        ecs_changes: vec![],
        autoscaling: vec![],
        notes: vec![],
        drift_corrected: false,
        rolled_back: false,
        applied: false,
        drain_until: None,
        pending_change: None,
        control: None,
    }
}

/// The report of a suspended split: what Route53 shows, no change.
fn suspended_report(
    split: &TrafficSplit,
    obs: &plan::Observed,
    ecs: BTreeMap<String, EcsService>,
) -> Report {
    let st = obs.state.as_ref();
    let step_weights = st.map(|s| s.current.clone()).unwrap_or_default();
    let control = st.and_then(|s| s.control.clone());
    Report {
        state: rollout::SplitState::Suspended,
        step: st.map_or(0, |s| s.step),
        steps: split.spec.steps().len(),
        progress: 0.0,
        waiting_for: control
            .as_ref()
            .map(|o| format!("trafficshift unsuspend ({})", o.describe())),
        next_step_at: None,
        target: split.spec.weights.clone(),
        drift: obs
            .weights
            .as_ref()
            .map_or(1.0, |w| drift(w, &step_weights)),
        step_weights,
        observed: obs.weights.clone(),
        ecs,
        route53: vec![],
        ecs_changes: vec![],
        autoscaling: vec![],
        notes: vec![],
        drift_corrected: false,
        rolled_back: false,
        applied: false,
        drain_until: None,
        pending_change: None,
        control,
    }
}

/// What the rollout decision sees of each ECS backend, and the services themselves, by backend.
fn ecs_of(
    split: &TrafficSplit,
    services: &HashMap<(String, String), EcsService>,
) -> (BTreeMap<String, EcsObs>, BTreeMap<String, EcsService>) {
    let mut ecs_obs = BTreeMap::new();
    let mut ecs_live = BTreeMap::new();
    for b in &split.spec.backends {
        if let Some(e) = &b.ecs {
            if let Some(s) = services.get(&(e.cluster.clone(), e.service.clone())) {
                ecs_obs.insert(
                    b.name.clone(),
                    EcsObs {
                        desired: s.desired,
                        running: s.running,
                        stable: s.is_stable(),
                        deployments: s.deployments,
                        rollout_failed: s.rollout_state.as_deref() == Some("FAILED"),
                        load_balanced: !s.target_groups.is_empty(),
                        healthy: None,
                    },
                );
                ecs_live.insert(b.name.clone(), s.clone());
            }
        }
    }
    (ecs_obs, ecs_live)
}

/// The desired-count changes of the ECS backends that no autoscaler owns.
fn ecs_changes(
    split: &TrafficSplit,
    d: &Decision,
    scalable: &HashMap<(String, String), ScalableTarget>,
    ecs_live: &BTreeMap<String, EcsService>,
) -> Vec<EcsChange> {
    let mut ecs_changes = Vec::new();
    for b in &split.spec.backends {
        let Some(e) = &b.ecs else { continue };
        if scalable.contains_key(&(e.cluster.clone(), e.service.clone())) {
            // Application Auto Scaling owns this desired count; see `autoscaling_changes`.
            continue;
        }
        let Some(&want) = d.ecs_desired.get(&b.name) else {
            continue;
        };
        if let Some(live) = ecs_live.get(&b.name) {
            if live.desired != want as i32 {
                ecs_changes.push(EcsChange {
                    backend: b.name.clone(),
                    cluster: e.cluster.clone(),
                    service: e.service.clone(),
                    from: live.desired,
                    to: want as i32,
                });
            }
        }
    }
    ecs_changes
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::reconcile::cycle;
    use crate::reconcile::fakes::{by_name, context, w, weights_at, work, Zone53};

    fn txt_at(dns: &Zone53) -> Option<String> {
        dns.records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == "_trafficshift.api.abceed.example.")
            .map(|r| crate::state::from_txt_values(&r.values))
    }

    #[tokio::test]
    async fn a_removed_backend_is_retired_across_a_restart_then_the_name_is_handed_back() {
        let dns = Arc::new(Zone53::default());
        let t0 = 1_764_000_000_000;
        let ctx = context(dns.clone());
        by_name(cycle(&ctx, vec![work("api")], t0, true).await)["api"]
            .as_ref()
            .unwrap();
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 0), ("fargate", 100)])
        );

        // `lambda` leaves the document (drainDelay 120 s in the fixture).
        let mut gone = work("api");
        Arc::make_mut(&mut gone.doc.split)
            .spec
            .backends
            .retain(|b| b.name == "fargate");
        Arc::make_mut(&mut gone.doc.split).spec.weights = w(&[("fargate", 100)]);
        let out = by_name(cycle(&ctx, vec![gone.clone()], t0 + 1_000, true).await);
        let r = out["api"].as_ref().expect("no Conflict");
        assert!(
            r.waiting_for
                .as_deref()
                .unwrap()
                .contains("retiring lambda (drains until"),
            "{:?}",
            r.waiting_for
        );
        assert_eq!(
            r.state.as_str(),
            "Progressing",
            "not finished while retiring"
        );
        assert!(txt_at(&dns).unwrap().contains(",retire=lambda@1764000122"));

        // A restart (no memory) mid-drain keeps the record and the clock.
        let ctx = context(dns.clone());
        by_name(cycle(&ctx, vec![gone.clone()], t0 + 60_000, true).await)["api"]
            .as_ref()
            .unwrap();
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        assert!(txt_at(&dns).unwrap().contains(",retire=lambda@1764000122"));

        // Drained: the record goes with the state that no longer names it.
        let out = by_name(cycle(&ctx, vec![gone.clone()], t0 + 122_000, true).await);
        let r = out["api"].as_ref().unwrap();
        assert!(r.applied);
        assert_eq!(weights_at(&dns, "api"), w(&[("fargate", 100)]));
        let txt = txt_at(&dns).unwrap();
        assert!(!txt.contains("lambda"), "{txt}");

        // plainWhenSingle: one batch turns the set into a plain record and removes the TXT.
        Arc::make_mut(&mut gone.doc.split)
            .spec
            .record
            .plain_when_single = true;
        let out = by_name(cycle(&ctx, vec![gone.clone()], t0 + 123_000, true).await);
        assert!(out["api"].as_ref().unwrap().applied);
        assert_eq!(txt_at(&dns), None);
        let plain = dns.record("api.abceed.example.");
        assert_eq!(plain.set_identifier, None);
        assert_eq!(plain.alias.unwrap().dns_name, "alb.example.");
        let zone = dns.records.lock().unwrap().clone();

        // Handed back: nothing to do, no Conflict, not adopted again.
        let out = by_name(cycle(&ctx, vec![gone], t0 + 124_000, true).await);
        let r = out["api"]
            .as_ref()
            .expect("no Conflict after the hand-back");
        assert!(r.route53.is_empty());
        assert!(r
            .waiting_for
            .as_deref()
            .unwrap()
            .contains("handed back as plain record"));
        assert_eq!(*dns.records.lock().unwrap(), zone);
    }

    #[tokio::test]
    async fn a_panic_while_planning_one_split_costs_only_that_split() {
        let dns = Arc::new(Zone53::default());
        let ctx = context(dns.clone());
        let mut boom = work("boom");
        Arc::make_mut(&mut boom.doc.split).spec.backends[0]
            .api_gateway
            .as_mut()
            .unwrap()
            .domain_name = "boom.example".into();
        let out = by_name(cycle(&ctx, vec![boom, work("web")], 1_764_000_000_000, true).await);
        let err = out["boom"].as_ref().unwrap_err().to_string();
        assert!(err.contains("a bug in one split's planning"), "{err}");
        assert!(out["web"].as_ref().unwrap().applied);
        assert_eq!(
            weights_at(&dns, "web"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        assert!(
            weights_at(&dns, "boom").is_empty(),
            "nothing written for boom"
        );
    }
}
