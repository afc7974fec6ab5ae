//! Splits of several accounts in one cycle: the splits are grouped by `spec.aws`, and each group
//! runs the ordinary cycle with its own role's clients and context, concurrently, so one account
//! that cannot be reached (a role that cannot be assumed, a throttled account) holds up nobody
//! else. Every AWS call of a group is counted under its account.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;

use super::{clone_err, cycle_in, Context, Outcome, Work};
use crate::aws::accounts::scope;
use crate::spec::{AwsSpec, TrafficSplit};

pub(super) async fn cycle(
    ctx: &Context,
    work: Vec<Work>,
    now_ms: u64,
    apply: bool,
) -> Vec<Outcome> {
    let Some(accounts) = ctx.accounts.clone() else {
        return cycle_in(ctx, work, now_ms, apply).await;
    };
    let mut groups: BTreeMap<Option<AwsSpec>, Vec<Work>> = BTreeMap::new();
    for w in work {
        groups
            .entry(w.doc.split.spec.aws.clone())
            .or_default()
            .push(w);
    }
    let runs = groups.into_iter().map(|(spec, group)| {
        let accounts = accounts.clone();
        async move {
            let Some(spec) = spec else {
                let account = accounts.default_account();
                return scope(account, cycle_in(ctx, group, now_ms, apply)).await;
            };
            match accounts.clients(&spec).await {
                Ok((account, aws)) => {
                    let role_ctx = ctx.role_context(&spec, aws);
                    scope(account, cycle_in(&role_ctx, group, now_ms, apply)).await
                }
                Err(e) => group
                    .into_iter()
                    .map(|w| Outcome {
                        name: w.doc.split.name().to_string(),
                        result: Err(clone_err(&e)),
                        gates: w.gates,
                    })
                    .collect(),
            }
        }
    });
    join_all(runs).await.into_iter().flatten().collect()
}

impl Context {
    /// The context of an assumed role, created on its first cycle and kept.
    fn role_context(&self, spec: &AwsSpec, aws: crate::aws::Aws) -> Arc<Context> {
        self.roles
            .lock()
            .expect("roles lock")
            .entry(spec.clone())
            .or_insert_with(|| {
                let mut c = Context::new(aws.clone(), self.owner.clone(), self.dry_run);
                c.gates = self.gates.with_aws(aws);
                Arc::new(c)
            })
            .clone()
    }

    /// The AWS account a split's calls go to (its role's account, or the controller's own):
    /// the `account` of `trafficshift_split_info`. `None` when the context has no registry.
    pub fn account_of(&self, split: &TrafficSplit) -> Option<Arc<str>> {
        self.accounts
            .as_ref()
            .map(|a| a.account_of(split.spec.aws.as_ref()))
    }
}
