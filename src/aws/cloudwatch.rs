//! CloudWatch alarm states for rollout gates.

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::AlarmType;
use aws_sdk_cloudwatch::Client;

use super::retry::{self, Idempotency};
use super::Alarms;
use crate::Result;

const SERVICE: &str = "cloudwatch";
/// DescribeAlarms accepts at most 100 alarm names per call.
const BATCH: usize = 100;

/// The `Alarms` edge backed by CloudWatch.
pub struct CloudWatchAlarms {
    client: Client,
}

impl CloudWatchAlarms {
    pub fn new(client: Client) -> Self {
        CloudWatchAlarms { client }
    }
}

#[async_trait]
impl Alarms for CloudWatchAlarms {
    async fn alarm_states(&self, names: &[String]) -> Result<Vec<(String, String)>> {
        let mut states = Vec::with_capacity(names.len());
        for batch in names.chunks(BATCH) {
            let mut token: Option<String> = None;
            loop {
                let out = retry::call(SERVICE, "DescribeAlarms", Idempotency::Idempotent, || {
                    self.client
                        .describe_alarms()
                        .set_alarm_names(Some(batch.to_vec()))
                        // Without AlarmTypes, DescribeAlarms answers only metric alarms.
                        .alarm_types(AlarmType::MetricAlarm)
                        .alarm_types(AlarmType::CompositeAlarm)
                        .set_next_token(token.clone())
                        .max_records(100)
                        .send()
                })
                .await?;
                for a in out.metric_alarms.unwrap_or_default() {
                    if let (Some(n), Some(s)) = (a.alarm_name, a.state_value) {
                        states.push((n, s.as_str().to_string()));
                    }
                }
                for a in out.composite_alarms.unwrap_or_default() {
                    if let (Some(n), Some(s)) = (a.alarm_name, a.state_value) {
                        states.push((n, s.as_str().to_string()));
                    }
                }
                match out.next_token {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        Ok(states)
    }
}
