//! Test fakes shared by the reconcile tests: one hosted zone with Route53's batch rules, ECS
//! services, alias targets, and split fixtures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Context, Outcome, Report, Work};
use crate::aws::{
    Alarms, AliasTarget, Aws, Change, ChangeAction, Dns, Ecs, EcsService, RecordSet, Targets, Zone,
};
use crate::error::AwsFailure;
use crate::spec::{SplitDoc, TrafficSplit, Weights};
use crate::{Error, Result};

type Hook = Box<dyn FnOnce(&mut Vec<RecordSet>) + Send>;

/// One hosted zone with Route53's batch rules (all or nothing; DELETE must match exactly;
/// CREATE must find nothing) and a hook that edits the zone just before the next batch: a
/// hand edit between the controller's read and its write.
#[derive(Default)]
pub(super) struct Zone53 {
    pub(super) records: Mutex<Vec<RecordSet>>,
    pub(super) before_next_change: Mutex<Option<Hook>>,
}

impl Zone53 {
    /// The record set named `name` as the zone holds it now.
    pub(super) fn record(&self, name: &str) -> RecordSet {
        self.records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no record {name}"))
    }
}

#[async_trait]
impl Dns for Zone53 {
    async fn find_zone(&self, _: &str) -> Result<Zone> {
        Ok(Zone {
            id: "Z1".into(),
            name: "abceed.example.".into(),
            record_count: self.records.lock().unwrap().len() as i64,
            private: false,
        })
    }
    async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
        Ok(self.records.lock().unwrap().clone())
    }
    async fn list_from(&self, _: &str, name: &str) -> Result<Vec<RecordSet>> {
        let under = format!(".{name}");
        Ok(self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == name || r.name.ends_with(&under))
            .cloned()
            .collect())
    }
    async fn change(&self, _: &str, _: &str, changes: &[Change]) -> Result<String> {
        if let Some(hook) = self.before_next_change.lock().unwrap().take() {
            hook(&mut self.records.lock().unwrap());
        }
        let mut zone = self.records.lock().unwrap();
        let mut next = zone.clone();
        let key = |r: &RecordSet| (r.name.clone(), r.rtype.clone(), r.set_identifier.clone());
        for c in changes {
            let at = next.iter().position(|r| key(r) == key(&c.record));
            let problem = match (c.action, at) {
                (ChangeAction::Delete, Some(i)) if next[i] == c.record => {
                    next.remove(i);
                    None
                }
                (ChangeAction::Delete, _) => Some("values do not match"),
                (ChangeAction::Create, Some(_)) => Some("it already exists"),
                (ChangeAction::Create, None) | (ChangeAction::Upsert, None) => {
                    next.push(c.record.clone());
                    None
                }
                (ChangeAction::Upsert, Some(i)) => {
                    next[i] = c.record.clone();
                    None
                }
            };
            if let Some(p) = problem {
                return Err(Error::Aws {
                    service: "route53",
                    operation: "ChangeResourceRecordSets",
                    failure: AwsFailure::Permanent,
                    message: format!("InvalidChangeBatch: {} {p}", c.record.name),
                });
            }
        }
        *zone = next;
        Ok("C1".into())
    }
    async fn insync(&self, _: &str) -> Result<bool> {
        Ok(true)
    }
}

/// ECS services at 20 running tasks behind target group "tg".
pub(super) struct Services;

#[async_trait]
impl Ecs for Services {
    async fn describe(&self, cluster: &str, services: &[String]) -> Result<Vec<EcsService>> {
        Ok(services
            .iter()
            .map(|s| EcsService {
                cluster: cluster.into(),
                service: s.clone(),
                arn: format!("arn:{s}"),
                status: "ACTIVE".into(),
                desired: 20,
                running: 20,
                pending: 0,
                deployments: 1,
                rollout_state: Some("COMPLETED".into()),
                target_groups: vec!["tg".into()],
            })
            .collect())
    }
    async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
        Ok(())
    }
}

/// Alias targets; the domain `boom.example` fails its first lookup and panics on the next
/// (a bug reached while planning one split).
#[derive(Default)]
pub(super) struct Aliases {
    boom_calls: Mutex<u32>,
}

#[async_trait]
impl Targets for Aliases {
    async fn api_gateway_domain(&self, domain: &str) -> Result<AliasTarget> {
        if domain == "boom.example" {
            let mut n = self.boom_calls.lock().unwrap();
            *n += 1;
            if *n > 1 {
                panic!("a bug in one split's planning");
            }
            return Err(Error::NotFound("not yet".into()));
        }
        Ok(AliasTarget {
            dns_name: format!("d-{domain}."),
            hosted_zone_id: "ZAPI".into(),
            evaluate_target_health: false,
        })
    }
    async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
        Ok(AliasTarget {
            dns_name: "alb.example.".into(),
            hosted_zone_id: "ZALB".into(),
            evaluate_target_health: false,
        })
    }
    async fn target_health(&self, _: &str) -> Result<(u32, u32)> {
        // Every one of the 20 tasks is a healthy target: capacity serves.
        Ok((20, 20))
    }
}

pub(super) struct NoAlarms;

#[async_trait]
impl Alarms for NoAlarms {
    async fn alarm_states(&self, _: &[String]) -> Result<Vec<(String, String)>> {
        Ok(vec![])
    }
}

pub(super) fn context(dns: Arc<Zone53>) -> Context {
    let aws = Aws {
        dns,
        ecs: Arc::new(Services),
        targets: Arc::new(Aliases::default()),
        alarms: Arc::new(NoAlarms),
        autoscaling: Arc::new(crate::aws::autoscaling::NoAutoscaling),
    };
    Context::new(aws, "test", false)
}

pub(super) fn work(name: &str) -> Work {
    let mut split = TrafficSplit::test().with_steps(&[50, 100], 0);
    split.metadata.name = name.into();
    split.spec.record.name = format!("{name}.abceed.example.");
    Work {
        doc: SplitDoc {
            split: split.into(),
            file: format!("{name}.yaml").into(),
            line: 1,
            hash: "h".into(),
        },
        gates: BTreeMap::new(),
    }
}

pub(super) fn weights_at(dns: &Zone53, name: &str) -> Weights {
    dns.records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.name == format!("{name}.abceed.example.") && r.weight.is_some())
        .map(|r| (r.set_identifier.clone().unwrap(), r.weight.unwrap() as u32))
        .collect()
}

pub(super) fn by_name(outcomes: Vec<Outcome>) -> BTreeMap<String, Result<Report>> {
    outcomes.into_iter().map(|o| (o.name, o.result)).collect()
}

pub(super) fn w(pairs: &[(&str, u32)]) -> Weights {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Weighted records of `name` at lambda 100 / fargate 0, no state TXT yet.
pub(super) fn adoptable(dns: &Zone53, name: &str) {
    for (b, weight, target) in [
        ("lambda", 100, "d-api.abceed.example."),
        ("fargate", 0, "alb.example."),
    ] {
        dns.records.lock().unwrap().push(RecordSet {
            name: format!("{name}.abceed.example."),
            rtype: "A".into(),
            set_identifier: Some(b.into()),
            weight: Some(weight),
            ttl: None,
            alias: Some(AliasTarget {
                dns_name: target.into(),
                hosted_zone_id: if b == "lambda" { "ZAPI" } else { "ZALB" }.into(),
                evaluate_target_health: false,
            }),
            values: vec![],
            health_check_id: None,
            other_routing: false,
        });
    }
}
