//! What a cycle decides on, read in batches across its splits: hosted zones and their records,
//! ECS services and their scalable targets, alias targets. Zone ids and alias targets rarely
//! change and are cached for a while.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::aws::{AliasTarget, EcsService, RecordSet, ScalableTarget, Zone};
use crate::plan::Target;
use crate::spec::{fqdn, TrafficSplit};
use crate::{Error, Result};

use super::{clone_err, Context, Outcome, Pending, Work};

/// How long zone ids and resolved alias targets are reused before being read again.
const CACHE_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
pub(super) struct Cache {
    zones: HashMap<String, (Zone, Instant)>,
    targets: HashMap<String, (AliasTarget, Instant)>,
}

impl Context {
    pub(super) async fn zone(&self, name_or_id: &str) -> Result<Zone> {
        let key = name_or_id.trim_end_matches('.').to_ascii_lowercase();
        if let Some((z, at)) = self.cache.lock().expect("cache lock").zones.get(&key) {
            if at.elapsed() < CACHE_TTL {
                return Ok(z.clone());
            }
        }
        let z = self.aws.dns.find_zone(name_or_id).await?;
        self.cache
            .lock()
            .expect("cache lock")
            .zones
            .insert(key, (z.clone(), Instant::now()));
        Ok(z)
    }

    /// Keep the cached record count true (it chooses between a full pass and targeted lists):
    /// set it from a full pass, or move it by what an applied batch created and deleted.
    pub(super) fn update_zone_count(&self, zone_id: &str, f: impl Fn(i64) -> i64) {
        let mut cache = self.cache.lock().expect("cache lock");
        for (z, _) in cache.zones.values_mut().filter(|(z, _)| z.id == zone_id) {
            z.record_count = f(z.record_count).max(0);
        }
    }

    pub(super) async fn cached_target<F, Fut>(&self, key: String, f: F) -> Result<AliasTarget>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<AliasTarget>>,
    {
        if let Some((t, at)) = self.cache.lock().expect("cache lock").targets.get(&key) {
            if at.elapsed() < CACHE_TTL {
                return Ok(t.clone());
            }
        }
        let t = f().await?;
        self.cache
            .lock()
            .expect("cache lock")
            .targets
            .insert(key, (t.clone(), Instant::now()));
        Ok(t)
    }
}

/// What the ECS and Application Auto Scaling describes of a cycle found.
pub(super) struct Live {
    /// By (cluster, service name) and by (cluster, service ARN).
    pub(super) services: HashMap<(String, String), EcsService>,
    /// Clusters whose describe failed: their splits fail with this error.
    pub(super) cluster_errors: HashMap<String, Error>,
    pub(super) scalable: Result<HashMap<(String, String), ScalableTarget>>,
}

/// Zones and listings: one pass per zone, or targeted lists when cheaper. Splits whose zone
/// cannot be found or listed go to `outcomes` with that error; the others come back with their
/// records.
pub(super) async fn zones_and_listings(
    ctx: &Context,
    work: Vec<Work>,
    outcomes: &mut Vec<Outcome>,
) -> Vec<Pending> {
    let mut by_zone: BTreeMap<String, Vec<Work>> = BTreeMap::new();
    for w in work {
        by_zone
            .entry(w.doc.split.spec.record.hosted_zone.clone())
            .or_default()
            .push(w);
    }
    let mut pending: Vec<Pending> = Vec::new();
    for (zone_ref, group) in by_zone {
        let zone = match ctx.zone(&zone_ref).await {
            Ok(z) => z,
            Err(e) => {
                fail_all(group, &e, outcomes);
                continue;
            }
        };
        let mut names: Vec<String> = group
            .iter()
            .map(|w| fqdn(&w.doc.split.spec.record.name))
            .collect();
        names.sort();
        names.dedup();
        let full_pass_cost = (zone.record_count.max(1) as usize).div_ceil(300);
        let listing: Result<HashMap<String, Vec<RecordSet>>> = if names.len() < full_pass_cost {
            let mut m = HashMap::new();
            let mut err = None;
            for n in &names {
                match ctx.aws.dns.list_from(&zone.id, n).await {
                    Ok(r) => {
                        m.insert(n.clone(), r);
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => Ok(m),
            }
        } else {
            ctx.aws.dns.list_all(&zone.id).await.map(|all| {
                ctx.update_zone_count(&zone.id, |_| all.len() as i64);
                let mut m: HashMap<String, Vec<RecordSet>> = HashMap::new();
                for n in &names {
                    let txt = crate::state::txt_name(n);
                    m.insert(
                        n.clone(),
                        all.iter()
                            .filter(|r| &r.name == n || r.name == txt)
                            .cloned()
                            .collect(),
                    );
                }
                m
            })
        };
        match listing {
            Ok(m) => {
                for w in group {
                    let n = fqdn(&w.doc.split.spec.record.name);
                    let records = m.get(&n).cloned().unwrap_or_default();
                    pending.push(Pending {
                        work: w,
                        zone: zone.clone(),
                        records,
                        report: None,
                        error: None,
                    });
                }
            }
            Err(e) => fail_all(group, &e, outcomes),
        }
    }
    pending
}

/// A failure shared by every split of a zone (its lookup or listing failed).
fn fail_all(group: Vec<Work>, e: &Error, outcomes: &mut Vec<Outcome>) {
    for w in group {
        outcomes.push(Outcome {
            name: w.doc.split.name().to_string(),
            result: Err(clone_err(e)),
            gates: w.gates,
        });
    }
}

/// ECS: one batched describe per cluster, and the scalable targets of every ECS service.
pub(super) async fn ecs(ctx: &Context, pending: &[Pending]) -> Live {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in pending {
        for b in &p.work.doc.split.spec.backends {
            if let Some(e) = &b.ecs {
                wanted
                    .entry(e.cluster.clone())
                    .or_default()
                    .push(e.service.clone());
            }
        }
    }
    let mut services: HashMap<(String, String), EcsService> = HashMap::new();
    let mut cluster_errors: HashMap<String, Error> = HashMap::new();
    // Application Auto Scaling: one batched describe for every ECS service of the cycle.
    let pairs: Vec<(String, String)> = wanted
        .iter()
        .flat_map(|(c, svcs)| svcs.iter().map(move |s| (c.clone(), s.clone())))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let scalable: Result<HashMap<(String, String), ScalableTarget>> = if pairs.is_empty() {
        Ok(HashMap::new())
    } else {
        ctx.aws.autoscaling.ecs_targets(&pairs).await
    };
    for (cluster, mut svcs) in wanted {
        svcs.sort();
        svcs.dedup();
        match ctx.aws.ecs.describe(&cluster, &svcs).await {
            Ok(found) => {
                for s in found {
                    services.insert((cluster.clone(), s.service.clone()), s.clone());
                    // Also index by the name the document used (it may be an ARN).
                    services.insert((cluster.clone(), s.arn.clone()), s);
                }
            }
            Err(e) => {
                cluster_errors.insert(cluster, e);
            }
        }
    }
    Live {
        services,
        cluster_errors,
        scalable,
    }
}

/// Resolve each distinct alias target of the cycle once, into the cache.
pub(super) async fn warm_targets(
    ctx: &Context,
    pending: &[Pending],
    services: &HashMap<(String, String), EcsService>,
) {
    let mut domains = std::collections::BTreeSet::new();
    let mut tgs = std::collections::BTreeSet::new();
    for p in pending {
        for b in &p.work.doc.split.spec.backends {
            if let Some(a) = &b.api_gateway {
                domains.insert(a.domain_name.clone());
            }
            if let Some(e) = &b.ecs {
                if let Some(tg) = services
                    .get(&(e.cluster.clone(), e.service.clone()))
                    .and_then(|s| s.target_groups.first())
                {
                    tgs.insert(tg.clone());
                }
            }
        }
    }
    // Failures are reported by the split that needs the target, below.
    for d in domains {
        let _ = ctx
            .cached_target(format!("apigw:{d}"), || {
                ctx.aws.targets.api_gateway_domain(&d)
            })
            .await;
    }
    for tg in tgs {
        let _ = ctx
            .cached_target(format!("tg:{tg}"), || ctx.aws.targets.target_group_lb(&tg))
            .await;
    }
}

pub(super) async fn resolve_targets(
    ctx: &Context,
    split: &TrafficSplit,
    services: &HashMap<(String, String), EcsService>,
    cluster_errors: &HashMap<String, Error>,
) -> Result<BTreeMap<String, Target>> {
    let cname = !split.spec.record.record_type.is_alias();
    let mut out = BTreeMap::new();
    for b in &split.spec.backends {
        let alias = if let Some(api) = &b.api_gateway {
            let d = api.domain_name.clone();
            ctx.cached_target(format!("apigw:{d}"), || {
                ctx.aws.targets.api_gateway_domain(&d)
            })
            .await?
        } else if let Some(e) = &b.ecs {
            if let Some(err) = cluster_errors.get(&e.cluster) {
                return Err(clone_err(err));
            }
            let svc = services.get(&(e.cluster.clone(), e.service.clone())).ok_or_else(|| {
                Error::NotFound(format!(
                    "ECS service {} not found (or INACTIVE) in cluster {}: check spec.backends[{}].ecs",
                    e.service, e.cluster, b.name
                ))
            })?;
            let tg = svc.target_groups.first().ok_or_else(|| {
                Error::NotFound(format!(
                    "ECS service {}/{} has no load balancer target group; trafficshift routes to its ALB",
                    e.cluster, e.service
                ))
            })?;
            let tg = tg.clone();
            ctx.cached_target(format!("tg:{tg}"), || ctx.aws.targets.target_group_lb(&tg))
                .await?
        } else if let Some(t) = &b.target {
            if let Some(a) = &t.alias {
                AliasTarget {
                    dns_name: fqdn(&a.dns_name),
                    hosted_zone_id: a.hosted_zone_id.clone(),
                    evaluate_target_health: a.evaluate_target_health,
                }
            } else if let Some(c) = &t.cname {
                out.insert(b.name.clone(), Target::Cname(fqdn(c)));
                continue;
            } else {
                return Err(Error::Other(format!(
                    "backend {} has an empty target",
                    b.name
                )));
            }
        } else {
            return Err(Error::Other(format!("backend {} has no kind", b.name)));
        };
        let t = if cname {
            // `dualstack.` is for A/AAAA aliases; a CNAME keeps the name it always had.
            let n = &alias.dns_name;
            Target::Cname(n.strip_prefix("dualstack.").unwrap_or(n).to_string())
        } else {
            Target::Alias(alias)
        };
        out.insert(b.name.clone(), t);
    }
    Ok(out)
}
