//! The writes, in the order that never makes traffic worse: ECS scale-ups, the Route53 batches
//! (per zone, split by split when one is rejected, checked against the fence), then
//! scalable-target bounds and ECS scale-downs once the change that lowered a weight is INSYNC
//! and drained. Submitted changes are tracked here until a later cycle sees them INSYNC.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use crate::aws::Change;
use crate::plan;
use crate::spec::fqdn;
use crate::weights::show;
use crate::{Error, Result};

use super::{clone_err, AasChange, Context, EcsChange, Pending, Report};

/// A submitted Route53 change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InFlight {
    change_id: String,
    submitted: u64,
    /// Backends whose weight this change (or an earlier one it replaced, still PENDING then)
    /// lowered; Route53 applies changes in order, so this one's INSYNC covers them all.
    lowered: Vec<String>,
}

impl Context {
    /// Ask GetChange once for each change of these splits still PENDING. A failed GetChange
    /// leaves the change pending (it is asked again next cycle) and never resubmits anything:
    /// the batch was accepted.
    pub(super) async fn check_inflight(&self, splits: &[&str], now: u64) {
        let ids: std::collections::BTreeSet<String> = {
            let inflight = self.inflight.lock().expect("inflight lock");
            splits
                .iter()
                .filter_map(|s| inflight.get(*s).map(|f| f.change_id.clone()))
                .collect()
        };
        for id in ids {
            match self.aws.dns.insync(&id).await {
                Ok(true) => {
                    let mut inflight = self.inflight.lock().expect("inflight lock");
                    let mut settled = self.settled.lock().expect("settled lock");
                    inflight.retain(|split, f| {
                        if f.change_id != id {
                            return true;
                        }
                        for b in &f.lowered {
                            settled.insert((split.clone(), b.clone()), now);
                        }
                        false
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(change = %id, error = %e, "GetChange failed; the change stays pending and is asked again next cycle")
                }
            }
        }
    }

    /// Why a backend whose weight dropped must not scale down yet, if it must not: the change
    /// that lowered it is not INSYNC, or the drain delay since it was has not passed. Returns
    /// (reason, unix time it may). Backends whose weight did not drop are not held here.
    pub(super) fn scale_down_hold(
        &self,
        split: &str,
        backend: &str,
        drain: Duration,
        now: u64,
    ) -> Option<(String, u64)> {
        if let Some(f) = self
            .inflight
            .lock()
            .expect("inflight lock")
            .get(split)
            .filter(|f| f.lowered.iter().any(|b| b == backend))
        {
            return Some((
                format!(
                    "Route53 change {} (submitted at {}) to be INSYNC before scaling {backend} down",
                    f.change_id, f.submitted
                ),
                now + 1,
            ));
        }
        let key = (split.to_string(), backend.to_string());
        let at = *self.settled.lock().expect("settled lock").get(&key)?;
        let until = at + drain.as_secs();
        (now < until).then(|| {
            (
                format!("DNS caches to drain until {until} (the change lowering {backend} was INSYNC at {at}) before scaling it down"),
                until,
            )
        })
    }
}

async fn set_bounds(ctx: &Context, split: &str, c: &AasChange, why: &str) -> Result<()> {
    info!(split, cluster = %c.cluster, service = %c.service, from_min = c.from.min, from_max = c.from.max, to_min = c.to.min, to_max = c.to.max, reason = why, "scalable target bounds");
    ctx.aws
        .autoscaling
        .set_bounds(&c.cluster, &c.service, c.to)
        .await
}

async fn set_desired(ctx: &Context, split: &str, c: &EcsChange, why: &str) -> Result<()> {
    info!(split, cluster = %c.cluster, service = %c.service, from = c.from, to = c.to, reason = why, "ECS desiredCount");
    ctx.aws.ecs.set_desired(&c.cluster, &c.service, c.to).await
}

/// Apply each split's plan. A split whose write fails keeps that error and makes no later write
/// of this cycle; the other splits go on.
pub(super) async fn apply_all(ctx: &Context, pending: &mut [Pending], now: u64) {
    scale_ups(ctx, pending).await;
    route53_batches(ctx, pending, now).await;
    bounds_and_scale_downs(ctx, pending, now).await;
}

async fn scale_ups(ctx: &Context, pending: &mut [Pending]) {
    // ECS scale-ups first: capacity before traffic.
    for p in pending.iter_mut() {
        let Some(r) = &p.report else { continue };
        let name = p.work.doc.split.name().to_string();
        let ups: Vec<EcsChange> = r
            .ecs_changes
            .iter()
            .filter(|c| c.to > c.from)
            .cloned()
            .collect();
        for c in ups {
            if let Err(e) = set_desired(ctx, &name, &c, "capacity before traffic").await {
                p.error = Some(e);
                break;
            }
        }
    }
}

async fn route53_batches(ctx: &Context, pending: &mut [Pending], now: u64) {
    // Route53: one batch per zone where it fits, each split's changes kept together.
    let mut by_zone: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        if p.error.is_none() && p.report.as_ref().is_some_and(|r| !r.route53.is_empty()) {
            by_zone.entry(p.zone.id.clone()).or_default().push(i);
        }
    }
    for (zone_id, idxs) in by_zone {
        for chunk in batches(pending, &idxs) {
            let changes = changes_of(pending, &chunk);
            for &i in &chunk {
                log_changes(&pending[i]);
            }
            let comment = comment_for(pending, &chunk);
            let res = submit(ctx, &zone_id, &comment, &changes).await;
            match res {
                Ok(id) => {
                    ctx.update_zone_count(&zone_id, |n| n + net_records(&changes));
                    mark_applied(ctx, pending, &chunk, &id, now)
                }
                Err(e) if chunk.len() > 1 && !e.is_retryable() => {
                    // One bad split must not block the zone (external-dns #421): retry alone.
                    warn!(zone = %zone_id, error = %e, "batch rejected; retrying split by split");
                    for &i in &chunk {
                        let changes = changes_of(pending, &[i]);
                        let comment = comment_for(pending, &[i]);
                        match submit(ctx, &zone_id, &comment, &changes).await {
                            Ok(id) => {
                                ctx.update_zone_count(&zone_id, |n| n + net_records(&changes));
                                mark_applied(ctx, pending, &[i], &id, now)
                            }
                            Err(e) => {
                                pending[i].error =
                                    Some(fence_lost(ctx, &zone_id, &pending[i], e).await)
                            }
                        }
                    }
                }
                Err(e) if chunk.len() == 1 => {
                    let i = chunk[0];
                    pending[i].error = Some(fence_lost(ctx, &zone_id, &pending[i], e).await);
                }
                Err(e) => {
                    for &i in &chunk {
                        pending[i].error = Some(clone_err(&e));
                    }
                }
            }
        }
    }
}

async fn bounds_and_scale_downs(ctx: &Context, pending: &mut [Pending], now: u64) {
    // Scalable-target bounds after the batch that records the users' bounds in the TXT (a weight
    // only rose above if the live service already had the tasks), then ECS scale-downs, only for
    // splits whose writes went through and whose last change is INSYNC and drained.
    for p in pending.iter_mut() {
        if p.error.is_some() {
            continue;
        }
        let Some(r) = p.report.as_mut() else { continue };
        let name = p.work.doc.split.name().to_string();
        let drain = p.work.doc.split.spec.drain_delay();
        let mut held = Vec::new();
        let lowered: Vec<&String> = r
            .ecs_changes
            .iter()
            .filter(|c| c.to < c.from)
            .map(|c| &c.backend)
            .chain(
                r.autoscaling
                    .iter()
                    .filter(|c| c.lowers())
                    .map(|c| &c.backend),
            )
            .collect();
        for b in lowered {
            if let Some(h) = ctx.scale_down_hold(&name, b, drain, now) {
                held.push((b.clone(), h));
            }
        }
        for (_, (why, until)) in &held {
            // Postponed, not failed: the report shows only what this cycle does.
            r.waiting_for.get_or_insert_with(|| why.clone());
            r.drain_until = Some(r.drain_until.unwrap_or(0).max(*until));
        }
        let is_held = |b: &String| held.iter().any(|(h, _)| h == b);
        r.ecs_changes
            .retain(|c| c.to >= c.from || !is_held(&c.backend));
        r.autoscaling
            .retain(|c| !c.lowers() || !is_held(&c.backend));
        let bounds = r.autoscaling.clone();
        for c in bounds {
            let why = if c.lowers() {
                "weight lowered and drained: user's bounds back"
            } else {
                "capacity before traffic: minimum raised"
            };
            if let Err(e) = set_bounds(ctx, &name, &c, why).await {
                p.error = Some(e);
                break;
            }
        }
        if p.error.is_some() {
            continue;
        }
        let Some(r) = &p.report else { continue };
        let downs: Vec<EcsChange> = r
            .ecs_changes
            .iter()
            .filter(|c| c.to < c.from)
            .cloned()
            .collect();
        for c in downs {
            if let Err(e) = set_desired(ctx, &name, &c, "weight lowered and drained").await {
                p.error = Some(e);
                break;
            }
        }
        if p.error.is_none() {
            if let Some(r) = p.report.as_mut() {
                r.applied = true;
            }
        }
    }
}

/// A split's rejected batch, checked against its fence: when the state TXT is no longer what the
/// batch was decided on (another controller with this owner id, or a hand edit, came between
/// read and write), the rejection is the fence doing its job. Nothing was written; the split is
/// re-read and re-decided on the next, soon, cycle. Other rejections keep their error.
async fn fence_lost(ctx: &Context, zone_id: &str, p: &Pending, e: Error) -> Error {
    if !matches!(
        e,
        Error::Aws {
            failure: crate::error::AwsFailure::Permanent,
            ..
        }
    ) {
        return e;
    }
    let Some(r) = &p.report else { return e };
    let txt_name = crate::state::txt_name(&fqdn(&p.work.doc.split.spec.record.name));
    let txt_changes: Vec<&Change> = r
        .route53
        .iter()
        .map(|c| &c.change)
        .filter(|c| c.record.name == txt_name && c.record.rtype == "TXT")
        .collect();
    if txt_changes.is_empty() {
        return e;
    }
    // What the batch expected to find: the TXT it deletes, or none when it only creates one.
    let expected = txt_changes
        .iter()
        .find(|c| c.action == crate::aws::ChangeAction::Delete)
        .map(|c| &c.record);
    let Ok(now) = ctx
        .aws
        .dns
        .list_from(zone_id, &fqdn(&p.work.doc.split.spec.record.name))
        .await
    else {
        return e;
    };
    let found = now.iter().find(|r| r.name == txt_name && r.rtype == "TXT");
    if found == expected {
        return e;
    }
    Error::Fenced(format!(
        "{txt_name} changed between read and write (another controller with owner id {:?}, or a hand edit); nothing was written, the split is re-read and re-decided",
        ctx.owner
    ))
}

/// Records a batch adds to its zone (creates minus deletes).
fn net_records(changes: &[Change]) -> i64 {
    changes
        .iter()
        .map(|c| match c.action {
            crate::aws::ChangeAction::Create => 1,
            crate::aws::ChangeAction::Delete => -1,
            crate::aws::ChangeAction::Upsert => 0,
        })
        .sum()
}

/// The Route53 changes of the given splits, in order.
fn changes_of(pending: &[Pending], idxs: &[usize]) -> Vec<Change> {
    idxs.iter()
        .filter_map(|&i| pending[i].report.as_ref())
        .flat_map(|r| r.route53.iter().map(|c| c.change.clone()))
        .collect()
}

fn mark_applied(ctx: &Context, pending: &mut [Pending], idxs: &[usize], change_id: &str, now: u64) {
    let mut inflight = ctx.inflight.lock().expect("inflight lock");
    for &i in idxs {
        let name = pending[i].work.doc.split.name().to_string();
        let mut lowered: Vec<String> = match &pending[i].report {
            Some(Report {
                observed: Some(before),
                step_weights,
                ..
            }) => step_weights
                .iter()
                .filter(|(b, w)| before.get(*b).is_some_and(|old| old > *w))
                .map(|(b, _)| b.clone())
                .collect(),
            _ => Vec::new(),
        };
        if let Some(prev) = inflight.get(&name) {
            lowered.extend(prev.lowered.iter().cloned());
            lowered.sort();
            lowered.dedup();
        }
        inflight.insert(
            name,
            InFlight {
                change_id: change_id.to_string(),
                submitted: now,
                lowered,
            },
        );
        if let Some(r) = pending[i].report.as_mut() {
            r.applied = true;
            r.pending_change = Some(change_id.to_string());
            // The batch was atomic and accepted: Route53's API now shows exactly the step
            // weights (resolvers follow once the change is INSYNC).
            r.observed = Some(r.step_weights.clone());
            r.drift = 0.0;
        }
    }
}

fn comment_for(pending: &[Pending], idxs: &[usize]) -> String {
    let names: Vec<&str> = idxs
        .iter()
        .map(|&i| pending[i].work.doc.split.name())
        .collect();
    let mut c = format!("trafficshift: {}", names.join(","));
    c.truncate(256);
    c
}

fn log_changes(p: &Pending) {
    let Some(r) = &p.report else { return };
    for c in &r.route53 {
        info!(
            split = p.work.doc.split.name(),
            record = %c.change.record.name,
            rtype = %c.change.record.rtype,
            set_id = c.change.record.set_identifier.as_deref().unwrap_or("-"),
            action = ?c.change.action,
            from = %r.observed.as_ref().map(show).unwrap_or_else(|| "none".into()),
            to = %show(&r.step_weights),
            reason = %c.why,
            "Route53 change"
        );
        let action = format!("{:?}", c.change.action).to_ascii_lowercase();
        crate::metrics::METRICS
            .splits
            .update(p.work.doc.split.name(), |s| s.count_route53_change(&action));
    }
}

/// Group splits' changes into batches within Route53's limits, never splitting one split.
fn batches(pending: &[Pending], idxs: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let (mut n, mut elements, mut chars) = (0usize, 0usize, 0usize);
    for &i in idxs {
        let r = pending[i].report.as_ref().expect("has report");
        let cn = r.route53.len();
        let ce: usize = r
            .route53
            .iter()
            .map(|c| plan::change_elements(&c.change))
            .sum();
        let cc: usize = r
            .route53
            .iter()
            .map(|c| plan::change_chars(&c.change))
            .sum();
        if out.is_empty()
            || n + cn > plan::MAX_CHANGES_PER_BATCH
            || elements + ce > plan::MAX_RECORD_ELEMENTS_PER_BATCH
            || chars + cc > plan::MAX_VALUE_CHARS_PER_BATCH
        {
            out.push(Vec::new());
            (n, elements, chars) = (0, 0, 0);
        }
        out.last_mut().expect("pushed").push(i);
        n += cn;
        elements += ce;
        chars += cc;
    }
    out
}

/// Submit one batch and return its change id. INSYNC is not awaited here (see `check_inflight`):
/// an error from this function always means ChangeResourceRecordSets itself failed.
async fn submit(ctx: &Context, zone_id: &str, comment: &str, changes: &[Change]) -> Result<String> {
    plan::check_batch(changes)?;
    ctx.aws.dns.change(zone_id, comment, changes).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::aws::{Alarms, ChangeAction, Dns, Ecs, Targets};
    use crate::aws::{AliasTarget, Aws, EcsService, RecordSet, Zone};
    use crate::reconcile::{cycle, Work};
    use crate::spec::{SplitDoc, TrafficSplit};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Route53 in memory. GetChange answers what `status` says (None: an error).
    #[derive(Default)]
    struct FakeDns {
        records: Mutex<Vec<RecordSet>>,
        changes: AtomicUsize,
        get_changes: AtomicUsize,
        status: Mutex<Option<bool>>,
    }

    #[async_trait]
    impl Dns for FakeDns {
        async fn find_zone(&self, _: &str) -> Result<Zone> {
            Ok(Zone {
                id: "Z1".into(),
                name: "example.com.".into(),
                record_count: 10,
                private: false,
            })
        }
        async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
            Ok(self.records.lock().unwrap().clone())
        }
        async fn list_from(&self, _: &str, name: &str) -> Result<Vec<RecordSet>> {
            let txt = crate::state::txt_name(name);
            Ok(self
                .records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.name == name || r.name == txt)
                .cloned()
                .collect())
        }
        async fn change(&self, _: &str, _: &str, changes: &[Change]) -> Result<String> {
            let n = self.changes.fetch_add(1, Ordering::SeqCst);
            let mut records = self.records.lock().unwrap();
            for c in changes {
                let key =
                    |r: &RecordSet| (r.name.clone(), r.rtype.clone(), r.set_identifier.clone());
                records.retain(|r| key(r) != key(&c.record));
                if c.action != ChangeAction::Delete {
                    records.push(c.record.clone());
                }
            }
            Ok(format!("C{n}"))
        }
        async fn insync(&self, _: &str) -> Result<bool> {
            self.get_changes.fetch_add(1, Ordering::SeqCst);
            (*self.status.lock().unwrap())
                .ok_or_else(|| Error::Other("GetChange: connection reset".into()))
        }
    }

    struct Unused;
    #[async_trait]
    impl Ecs for Unused {
        async fn describe(&self, _: &str, _: &[String]) -> Result<Vec<EcsService>> {
            Ok(vec![])
        }
        async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
            Err(Error::Other("unused".into()))
        }
    }
    #[async_trait]
    impl Targets for Unused {
        async fn api_gateway_domain(&self, _: &str) -> Result<AliasTarget> {
            Err(Error::Other("unused".into()))
        }
        async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
            Err(Error::Other("unused".into()))
        }
        async fn target_health(&self, _: &str) -> Result<(u32, u32)> {
            Err(Error::Other("unused".into()))
        }
    }
    #[async_trait]
    impl Alarms for Unused {
        async fn alarm_states(&self, _: &[String]) -> Result<Vec<(String, String)>> {
            Ok(vec![])
        }
    }

    fn work(name: &str, blue: u32) -> Work {
        let split: TrafficSplit = serde_json::from_value(serde_json::json!({
            "apiVersion": "trafficshift.dev/v1alpha1",
            "kind": "TrafficSplit",
            "metadata": {"name": name},
            "spec": {
                "record": {"hostedZone": "example.com", "name": format!("{name}.example.com"), "type": "CNAME"},
                "backends": [
                    {"name": "blue", "target": {"cname": "blue.example.net"}},
                    {"name": "green", "target": {"cname": "green.example.net"}}
                ],
                "weights": {"blue": blue, "green": 100 - blue}
            }
        }))
        .expect("split");
        Work {
            doc: SplitDoc {
                split: split.into(),
                file: "test.yaml".into(),
                line: 1,
                hash: "h".into(),
            },
            gates: BTreeMap::new(),
        }
    }

    fn ctx(dns: Arc<FakeDns>) -> Context {
        let u = Arc::new(Unused);
        Context::new(
            Aws {
                dns,
                ecs: u.clone(),
                targets: u.clone(),
                alarms: u,
                autoscaling: Arc::new(crate::aws::autoscaling::NoAutoscaling),
            },
            "test",
            false,
        )
    }

    fn weight(dns: &FakeDns, name: &str, backend: &str) -> Option<i64> {
        dns.records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == name && r.set_identifier.as_deref() == Some(backend))
            .and_then(|r| r.weight)
    }

    #[tokio::test]
    async fn a_pending_change_holds_nothing_and_a_failed_get_change_resubmits_nothing() {
        let dns = Arc::new(FakeDns::default());
        *dns.status.lock().unwrap() = Some(false);
        let ctx = ctx(dns.clone());

        // One batch for both splits; the cycle returns without waiting for INSYNC.
        let out = cycle(&ctx, vec![work("a", 100), work("b", 100)], 1_000_000, true).await;
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(dns.changes.load(Ordering::SeqCst), 1);
        assert_eq!(dns.get_changes.load(Ordering::SeqCst), 0, "not awaited");
        let pending: Vec<Option<String>> = out
            .iter()
            .map(|o| o.result.as_ref().unwrap().pending_change.clone())
            .collect();
        assert_eq!(pending, vec![Some("C0".into()), Some("C0".into())]);

        // Still PENDING: split b moves on regardless, and the change is asked once.
        let out = cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_002_000, true).await;
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(dns.get_changes.load(Ordering::SeqCst), 1);
        assert_eq!(dns.changes.load(Ordering::SeqCst), 2);
        assert_eq!(weight(&dns, "b.example.com.", "blue"), Some(40));
        let drain = Duration::from_secs(60);
        assert!(
            ctx.scale_down_hold("b", "blue", drain, 1_003).is_some(),
            "blue dropped in a PENDING change"
        );
        assert_eq!(ctx.scale_down_hold("b", "green", drain, 1_003), None);
        assert_eq!(ctx.scale_down_hold("a", "blue", drain, 1_003), None);

        // GetChange fails: the split does not fail and nothing is submitted again.
        *dns.status.lock().unwrap() = None;
        let out = cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_004_000, true).await;
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(dns.changes.load(Ordering::SeqCst), 2, "no resubmission");
        assert!(dns.get_changes.load(Ordering::SeqCst) >= 2);

        // INSYNC: forgotten, never asked again.
        *dns.status.lock().unwrap() = Some(true);
        cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_006_000, true).await;
        let asked = dns.get_changes.load(Ordering::SeqCst);
        cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_008_000, true).await;
        assert_eq!(dns.get_changes.load(Ordering::SeqCst), asked);
        assert!(ctx.inflight.lock().unwrap().is_empty());
        assert_eq!(
            ctx.scale_down_hold("b", "blue", drain, 1_009).map(|h| h.1),
            Some(1_006 + 60),
            "the drain clock starts when the change was seen INSYNC"
        );
        assert_eq!(ctx.scale_down_hold("b", "blue", drain, 1_066), None);
        assert_eq!(ctx.scale_down_hold("b", "green", drain, 1_009), None);
    }
}

#[cfg(test)]
mod fencing_tests {
    use std::sync::Arc;

    use crate::reconcile::cycle;
    use crate::reconcile::fakes::{adoptable, by_name, context, w, weights_at, work, Zone53};
    use crate::Error;

    #[tokio::test]
    async fn a_fenced_split_is_retried_soon_and_blocks_no_other() {
        let dns = Arc::new(Zone53::default());
        adoptable(&dns, "api");
        adoptable(&dns, "web");
        let ctx = context(dns.clone());
        let now = 1_764_000_000_000;
        let first = by_name(cycle(&ctx, vec![work("api"), work("web")], now, true).await);
        assert!(first.values().all(|r| r.is_ok()), "{first:?}");
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 50), ("fargate", 50)])
        );

        // Someone edits api's state TXT (its TTL) after the next cycle's read, before its write.
        let api_txt = crate::state::txt_name("api.abceed.example.");
        let edit = api_txt.clone();
        *dns.before_next_change.lock().unwrap() = Some(Box::new(move |zone| {
            for r in zone.iter_mut().filter(|r| r.name == edit) {
                r.ttl = Some(299);
            }
        }));
        let second = by_name(cycle(&ctx, vec![work("api"), work("web")], now + 1000, true).await);
        let api_err = second["api"].as_ref().unwrap_err();
        assert!(matches!(api_err, Error::Fenced(_)), "{api_err}");
        assert!(api_err.is_retryable(), "re-read soon, not at resync");
        assert!(
            second["web"].as_ref().unwrap().applied,
            "web is not blocked"
        );
        assert_eq!(
            weights_at(&dns, "web"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 50), ("fargate", 50)]),
            "nothing of the fenced batch applied"
        );
        let edited = dns.record(&api_txt);
        assert_eq!(edited.ttl, Some(299), "the hand edit survives");

        // The next cycle re-reads, re-decides and takes the step, once.
        let third = by_name(cycle(&ctx, vec![work("api")], now + 2000, true).await);
        assert!(third["api"].as_ref().unwrap().applied, "{third:?}");
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        let txt = dns.record(&api_txt);
        let state = crate::state::RolloutState::decode(&crate::state::from_txt_values(&txt.values))
            .unwrap();
        assert_eq!(
            (state.step, state.rev),
            (2, 2),
            "step 2, second write of the TXT"
        );
    }
}
