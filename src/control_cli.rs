//! `trafficshift promote|abort|retry|pause|resume|suspend|unsuspend NAME`: write an on-call
//! override into the split's state TXT through Route53, with the compare-and-swap the controller
//! itself uses (DELETE of the exact value read + CREATE of the next one in one batch). IAM is the
//! access control and CloudTrail the audit; it works while the controller is down, and every
//! replica reads it with the state. What the override does is `overrides`' business.

use std::path::PathBuf;

use clap::Args;

use crate::aws::connect::{connect, AwsOptions};
use crate::aws::{Change, ChangeAction, RecordSet};
use crate::cli::{exit, AwsArgs};
use crate::overrides::{self, Action, Override};
use crate::spec::{fqdn, load_paths};
use crate::state::{
    from_txt_values, to_txt_values, txt_name, txt_value_len, Payload, RolloutState,
    MAX_TXT_VALUE_CHARS,
};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The split (metadata.name of its document).
    pub name: String,
    /// Config file or directory holding the split's document; repeatable (env: comma-separated).
    #[arg(
        long = "config",
        env = "TRAFFICSHIFT_CONFIG",
        value_delimiter = ',',
        required = true
    )]
    pub config: Vec<PathBuf>,
    /// Why, recorded with the override (shown in status and events; at most 200 characters kept).
    #[arg(long, env = "TRAFFICSHIFT_REASON", default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Go to the target weights in one step (capacity first), instead of skipping one hold.
    #[arg(long, env = "TRAFFICSHIFT_PROMOTE_FULL")]
    pub full: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// A refusal: printed, exit 1, nothing written.
fn refuse(name: &str, action: Action, why: &str) -> i32 {
    eprintln!("refused: {} {name}: {why}", action.as_str());
    exit::FAILURE
}

/// Run one control command; the exit code (0 written, 1 refused or failed).
pub async fn run(action: Action, a: ControlArgs) -> Result<i32> {
    let loaded = load_paths(&a.config);
    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("{e}");
        }
        return Ok(exit::FAILURE);
    }
    let Some(doc) = loaded.docs.iter().find(|d| d.split.name() == a.name) else {
        return Ok(refuse(
            &a.name,
            action,
            "no TrafficSplit of that name in the given --config",
        ));
    };
    let split = &doc.split;
    let record = fqdn(&split.spec.record.name);
    let txt = txt_name(&record);

    let aws = connect(&AwsOptions::default()).await;
    let zone = aws.dns.find_zone(&split.spec.record.hosted_zone).await?;
    // The controller may write the TXT between the read and the write; the write then fails as
    // a whole and is decided again on a fresh read (the action may no longer make sense).
    let mut actor = None;
    for _ in 0..FENCED_ATTEMPTS {
        match attempt(aws.dns.as_ref(), &zone.id, split, action, &a, &mut actor).await? {
            Attempt::Refused(why) => return Ok(refuse(&a.name, action, &why)),
            Attempt::Raced => continue,
            Attempt::Written { before, after, rev } => {
                println!(
                    "split {}: {} written to {txt} (rev {} -> {})",
                    split.name(),
                    action.as_str(),
                    rev - 1,
                    rev
                );
                println!("  override: {before} -> {after}");
                println!(
                    "  the controller acts on it within one resync (10 s while a rollout is active); `trafficshift status {}` shows it",
                    split.name()
                );
                return Ok(exit::OK);
            }
        }
    }
    Err(Error::Fenced(format!(
        "{txt} changed between read and write {FENCED_ATTEMPTS} times (the controller writes its state); nothing was written, run the command again"
    )))
}

enum Attempt {
    Refused(String),
    /// The TXT changed between the read and the write: nothing was written.
    Raced,
    Written {
        before: String,
        after: String,
        rev: u64,
    },
}

/// One read of the state TXT, its checks, and the fenced write of the override.
async fn attempt(
    dns: &dyn crate::aws::Dns,
    zone_id: &str,
    split: &crate::spec::TrafficSplit,
    action: Action,
    a: &ControlArgs,
    actor: &mut Option<String>,
) -> Result<Attempt> {
    let record = fqdn(&split.spec.record.name);
    let txt = txt_name(&record);
    let read = |records: Vec<RecordSet>| {
        records
            .into_iter()
            .filter(|r| r.name == txt && r.rtype == "TXT")
            .collect::<Vec<_>>()
    };
    let found = read(dns.list_from(zone_id, &record).await?);
    let old = match found.as_slice() {
        [] => return Ok(Attempt::Refused(format!(
            "{txt} does not exist: trafficshift has not written this split yet, so there is no rollout to steer"
        ))),
        [one] => one.clone(),
        _ => return Ok(Attempt::Refused(format!(
            "{txt} has {} TXT records; expected one",
            found.len()
        ))),
    };
    let payload = from_txt_values(&old.values);
    let payload = Payload::parse(&payload);
    match payload.owner() {
        Some(o) if o == a.aws.owner_id => {}
        Some(o) => {
            return Ok(Attempt::Refused(format!(
                "{record} is owned by trafficshift owner {o:?}, not {:?} (--owner-id)",
                a.aws.owner_id
            )))
        }
        None => {
            return Ok(Attempt::Refused(format!(
                "{txt} was not written by trafficshift; the split is not owned"
            )))
        }
    }
    let state = match payload.decode() {
        Ok(s) => s,
        Err(why) => {
            return Ok(Attempt::Refused(format!(
                "the state in {txt} cannot be read ({why})"
            )))
        }
    };
    if state.split != split.name() {
        return Ok(Attempt::Refused(format!(
            "{txt} belongs to split {:?}",
            state.split
        )));
    }
    if let Some(why) = overrides::refusal(action, &state) {
        return Ok(Attempt::Refused(why));
    }

    let actor = match actor {
        Some(x) => x.clone(),
        None => actor.insert(caller_arn().await?).clone(),
    };
    let o = Override::new(action, &actor, crate::status::now_unix(), &a.reason);
    let written = RolloutState {
        rev: state.rev.saturating_add(1),
        ..overrides::with_override(&state, o.clone())
    };
    let new_payload = written.encode();
    // The controller keeps the override while the state grows (drains, bounds): it must fit the
    // longest state this document can have, not only today's.
    let len = txt_value_len(&new_payload).max(crate::spec::validate::longest_state_len(
        split,
        Some(o.clone()),
    ));
    if len > MAX_TXT_VALUE_CHARS {
        return Ok(Attempt::Refused(format!(
            "the state with this override can need {len} characters, more than Route53's {MAX_TXT_VALUE_CHARS} for a TXT value; use a shorter --reason"
        )));
    }
    let changes = [
        Change {
            action: ChangeAction::Delete,
            record: old.clone(),
        },
        Change {
            action: ChangeAction::Create,
            record: RecordSet {
                values: to_txt_values(&new_payload),
                ..old.clone()
            },
        },
    ];
    let comment = format!("trafficshift {} {}", action.as_str(), split.name());
    if let Err(e) = dns.change(zone_id, &comment, &changes).await {
        // The batch deletes exactly what was read: a rejection after a change of the TXT means
        // someone (the controller) wrote in between.
        let now = read(dns.list_from(zone_id, &record).await.unwrap_or_default());
        if now.first().is_some_and(|r| r.values != old.values) {
            return Ok(Attempt::Raced);
        }
        return Err(e);
    }
    Ok(Attempt::Written {
        before: state
            .control
            .as_ref()
            .map(Override::describe)
            .unwrap_or_else(|| "none".into()),
        after: o.describe(),
        rev: written.rev,
    })
}

/// Reads and writes of the TXT tried before giving up when the controller keeps writing it.
const FENCED_ATTEMPTS: u32 = 3;

/// Who is calling: the ARN `sts:GetCallerIdentity` answers, recorded with the override.
async fn caller_arn() -> Result<String> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let out = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| {
            Error::Other(format!(
                "sts:GetCallerIdentity failed ({}): the override records who made it, so the command needs working AWS credentials",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            ))
        })?;
    out.arn
        .ok_or_else(|| Error::Other("sts:GetCallerIdentity returned no ARN".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::aws::{Dns, Zone};
    use crate::spec::TrafficSplit;
    use crate::state::Phase;

    /// One zone's records, changed the way Route53 does: a DELETE must match exactly, or the
    /// whole batch is refused. `race` writes a new TXT value just before the next `n` batches,
    /// as a controller would between the command's read and write.
    #[derive(Default)]
    struct Zone53 {
        records: Mutex<Vec<RecordSet>>,
        race: Mutex<u32>,
        batches: Mutex<u32>,
    }

    #[async_trait]
    impl Dns for Zone53 {
        async fn find_zone(&self, _: &str) -> Result<Zone> {
            Err(Error::Other(
                "the command resolves the zone before its attempts".into(),
            ))
        }
        async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
            Ok(self.records.lock().unwrap().clone())
        }
        async fn list_from(&self, _: &str, _: &str) -> Result<Vec<RecordSet>> {
            Ok(self.records.lock().unwrap().clone())
        }
        async fn change(&self, _: &str, _: &str, changes: &[Change]) -> Result<String> {
            *self.batches.lock().unwrap() += 1;
            let mut recs = self.records.lock().unwrap();
            let mut race = self.race.lock().unwrap();
            if *race > 0 {
                *race -= 1;
                // The controller writes its state (rev + 1) first.
                let txt = recs.iter_mut().find(|r| r.rtype == "TXT").unwrap();
                let s = RolloutState::decode(&from_txt_values(&txt.values)).unwrap();
                txt.values = to_txt_values(
                    &RolloutState {
                        rev: s.rev + 1,
                        ..s
                    }
                    .encode(),
                );
            }
            let mut next = recs.clone();
            for c in changes {
                match c.action {
                    ChangeAction::Delete => {
                        let i = next
                            .iter()
                            .position(|r| *r == c.record)
                            .ok_or_else(|| Error::Other("InvalidChangeBatch: not found".into()))?;
                        next.remove(i);
                    }
                    _ => next.push(c.record.clone()),
                }
            }
            *recs = next;
            Ok("C1".into())
        }
        async fn insync(&self, _: &str) -> Result<bool> {
            Ok(true)
        }
    }

    fn zone_with(split: &TrafficSplit, state: &RolloutState) -> Zone53 {
        let z = Zone53::default();
        z.records.lock().unwrap().push(RecordSet {
            name: txt_name(&fqdn(&split.spec.record.name)),
            rtype: "TXT".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(300),
            alias: None,
            values: to_txt_values(&state.encode()),
            health_check_id: None,
            other_routing: false,
        });
        z
    }

    fn args(owner: &str) -> ControlArgs {
        ControlArgs {
            name: "api".into(),
            config: vec![],
            reason: "why".into(),
            aws: AwsArgs {
                owner_id: owner.into(),
                route53_rps: 5.0,
            },
        }
    }

    fn stored(split: &TrafficSplit, phase: Phase) -> RolloutState {
        let w = |l, f| [("lambda".to_string(), l), ("fargate".to_string(), f)].into();
        RolloutState {
            owner: "test".into(),
            split: split.name().into(),
            generation: crate::rollout::generation(split),
            phase,
            step: 1,
            since: 1,
            start: w(100, 0),
            current: w(75, 25),
            drains: Default::default(),
            capacity_since: None,
            autoscaling: Default::default(),
            retiring: Default::default(),
            rev: 4,
            control: None,
        }
    }

    fn txt_state(z: &Zone53) -> RolloutState {
        let recs = z.records.lock().unwrap();
        RolloutState::decode(&from_txt_values(&recs[0].values)).unwrap()
    }

    #[tokio::test]
    async fn writes_the_override_with_the_fence_and_retries_a_race() {
        let split = TrafficSplit::test().with_steps(&[25, 50, 100], 300);
        let z = zone_with(&split, &stored(&split, Phase::Progressing));
        *z.race.lock().unwrap() = 1;
        let mut actor = Some("arn:aws:iam::1:user/a".to_string());
        let out = attempt(&z, "Z", &split, Action::Abort, &args("test"), &mut actor)
            .await
            .unwrap();
        assert!(
            matches!(out, Attempt::Raced),
            "the first write lost the race"
        );
        assert_eq!(txt_state(&z).rev, 5, "the controller's write stands");
        let out = attempt(&z, "Z", &split, Action::Abort, &args("test"), &mut actor)
            .await
            .unwrap();
        assert!(matches!(out, Attempt::Written { rev: 6, .. }));
        let s = txt_state(&z);
        assert_eq!(s.rev, 6);
        let o = s.control.unwrap();
        assert_eq!(
            (o.action, o.actor.as_str(), o.reason.as_str(), o.done),
            (Action::Abort, "arn:aws:iam::1:user/a", "why", false)
        );
        assert_eq!(z.records.lock().unwrap().len(), 1, "one TXT, replaced");
    }

    #[tokio::test]
    async fn refuses_without_writing() {
        let split = TrafficSplit::test().with_steps(&[25, 50, 100], 300);
        let mut actor = Some("arn".to_string());
        let cases = [
            (
                stored(&split, Phase::Progressing),
                "other",
                Action::Abort,
                "owned by",
            ),
            (
                stored(&split, Phase::Progressing),
                "test",
                Action::Retry,
                "rolled-back",
            ),
            (
                stored(&split, Phase::Complete),
                "test",
                Action::Promote,
                "complete",
            ),
        ];
        for (state, owner, action, why) in cases {
            let z = zone_with(&split, &state);
            let out = attempt(&z, "Z", &split, action, &args(owner), &mut actor)
                .await
                .unwrap();
            match out {
                Attempt::Refused(r) => assert!(r.contains(why), "{action:?}: {r}"),
                _ => panic!("{action:?} by {owner} was not refused"),
            }
            assert_eq!(*z.batches.lock().unwrap(), 0, "nothing written");
        }
        let empty = Zone53::default();
        match attempt(
            &empty,
            "Z",
            &split,
            Action::Pause,
            &args("test"),
            &mut actor,
        )
        .await
        .unwrap()
        {
            Attempt::Refused(r) => assert!(r.contains("does not exist"), "{r}"),
            _ => panic!("no TXT, not refused"),
        }
    }
}
