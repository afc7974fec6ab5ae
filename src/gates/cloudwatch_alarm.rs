//! `cloudwatchAlarm`: every named alarm must be OK; INSUFFICIENT_DATA counts as configured.

use crate::spec::{CloudwatchAlarmGate, OnInsufficientData};

use super::{GateChecker, GateOutcome};

impl GateChecker {
    pub(super) async fn cloudwatch_alarm(&self, g: &CloudwatchAlarmGate) -> GateOutcome {
        if g.alarm_names.is_empty() {
            // Nothing checked must not read as healthy.
            return GateOutcome::fail("no alarm names configured");
        }
        let states = match self.aws.alarms.alarm_states(&g.alarm_names).await {
            Ok(s) => s,
            Err(e) => return GateOutcome::fail(format!("cannot read alarm states: {e}")),
        };
        let mut problems = Vec::new();
        let mut no_data = Vec::new();
        for name in &g.alarm_names {
            match states.iter().find(|(n, _)| n == name) {
                None => problems.push(format!("alarm {name} not found")),
                Some((_, state)) if state == "INSUFFICIENT_DATA" => match g.on_insufficient_data {
                    OnInsufficientData::Pass => {}
                    OnInsufficientData::Wait => no_data.push(name.as_str()),
                    OnInsufficientData::Fail => problems.push(format!(
                        "{name} is INSUFFICIENT_DATA (onInsufficientData: fail)"
                    )),
                },
                Some((_, state)) if state != "OK" => problems.push(format!("{name} is {state}")),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            GateOutcome::fail(problems.join("; "))
        } else if !no_data.is_empty() {
            GateOutcome::wait(format!(
                "{} INSUFFICIENT_DATA (onInsufficientData: wait)",
                no_data.join(", ")
            ))
        } else {
            match g.alarm_names.as_slice() {
                [one] => GateOutcome::pass(format!("{one} is OK")),
                many => GateOutcome::pass(format!("all {} alarms OK", many.len())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::fakes::*;
    use crate::spec::Gate;

    fn alarm_gate(names: &[&str]) -> Gate {
        Gate {
            cloudwatch_alarm: Some(CloudwatchAlarmGate {
                alarm_names: names.iter().map(|s| s.to_string()).collect(),
                on_insufficient_data: OnInsufficientData::Wait,
            }),
            ..gate("alarms")
        }
    }

    fn alarms(states: &[(&str, &str)]) -> FakeAlarms {
        FakeAlarms {
            states: states
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn alarms_all_ok_pass() {
        let c = checker(
            FakeEcs::default(),
            FakeTargets::default(),
            alarms(&[("a", "OK"), ("b", "OK")]),
        );
        let o = c.check(&split(), &alarm_gate(&["a", "b"])).await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.message, "all 2 alarms OK");
    }

    fn with_no_data(mut g: Gate, on: OnInsufficientData) -> Gate {
        g.cloudwatch_alarm
            .as_mut()
            .expect("alarm gate")
            .on_insufficient_data = on;
        g
    }

    #[tokio::test]
    async fn alarms_in_alarm_or_missing_fail_whatever_insufficient_data_means() {
        let c = checker(
            FakeEcs::default(),
            FakeTargets::default(),
            alarms(&[
                ("api-fargate-5xx", "ALARM"),
                ("ok", "OK"),
                ("new", "INSUFFICIENT_DATA"),
            ]),
        );
        let g = alarm_gate(&["api-fargate-5xx", "ok", "x", "new"]);
        let o = c.check(&split(), &g).await;
        assert!(
            !o.passing && !o.waiting,
            "a real failure is not a wait: {o:?}"
        );
        assert_eq!(o.message, "api-fargate-5xx is ALARM; alarm x not found");
        let o = c
            .check(&split(), &with_no_data(g, OnInsufficientData::Fail))
            .await;
        assert!(!o.passing && !o.waiting);
        assert_eq!(
            o.message,
            "api-fargate-5xx is ALARM; alarm x not found; new is INSUFFICIENT_DATA (onInsufficientData: fail)"
        );
        let o = c.check(&split(), &alarm_gate(&[])).await;
        assert!(!o.passing, "an empty alarm list must not pass");
    }

    #[tokio::test]
    async fn insufficient_data_waits_passes_or_fails_as_configured() {
        let c = checker(
            FakeEcs::default(),
            FakeTargets::default(),
            alarms(&[("ok", "OK"), ("new", "INSUFFICIENT_DATA")]),
        );
        let g = alarm_gate(&["ok", "new"]);
        // (setting, passing, waiting, message)
        let table = [
            (
                OnInsufficientData::Wait,
                false,
                true,
                "new INSUFFICIENT_DATA (onInsufficientData: wait)",
            ),
            (OnInsufficientData::Pass, true, false, "all 2 alarms OK"),
            (
                OnInsufficientData::Fail,
                false,
                false,
                "new is INSUFFICIENT_DATA (onInsufficientData: fail)",
            ),
        ];
        for (on, passing, waiting, message) in table {
            let o = c.check(&split(), &with_no_data(g.clone(), on)).await;
            assert_eq!(
                (o.passing, o.waiting, o.message.as_str()),
                (passing, waiting, message),
                "{on:?}"
            );
        }
        // The default is wait.
        let parsed: CloudwatchAlarmGate =
            serde_json::from_str(r#"{"alarmNames": ["new"]}"#).expect("parses");
        assert_eq!(parsed.on_insufficient_data, OnInsufficientData::Wait);
    }
}
