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
    from_txt_values, to_txt_values, txt_name, txt_value_len, RolloutState, MAX_TXT_VALUE_CHARS,
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
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Go to the target weights in one step (capacity first), instead of skipping one hold.
    #[arg(long)]
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
        match attempt(&aws, &zone.id, split, action, &a, &mut actor).await? {
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
    aws: &crate::aws::Aws,
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
    let found = read(aws.dns.list_from(zone_id, &record).await?);
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
    match RolloutState::owner_of(&payload) {
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
    let state = match RolloutState::decode_checked(&payload) {
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
    if let Err(e) = aws.dns.change(zone_id, &comment, &changes).await {
        // The batch deletes exactly what was read: a rejection after a change of the TXT means
        // someone (the controller) wrote in between.
        let now = read(
            aws.dns
                .list_from(zone_id, &record)
                .await
                .unwrap_or_default(),
        );
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
