//! CloudEvents 1.0, structured content mode (JSON): the payload for any webhook that is not Slack.
//! <https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md>

use serde_json::{json, Value};

use super::Notification;

pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// `type` is `dev.trafficshift.<Kind>`, `subject` the split, `data` the facts.
pub fn payload(n: &Notification, source: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": n.id,
        "source": source,
        "type": format!("dev.trafficshift.{}", n.kind.as_str()),
        "subject": n.split,
        "time": n.time,
        "datacontenttype": "application/json",
        "data": n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Kind;

    #[test]
    fn structured_event_has_the_documented_fields() {
        let n = Notification {
            kind: Kind::StepAdvanced,
            id: "api-1-0".into(),
            time: "2026-12-02T10:00:00Z".into(),
            split: "api".into(),
            record: "api.example.com. A".into(),
            hosted_zone: "Z1".into(),
            state: Some("Progressing".into()),
            from: Some([("lambda".to_string(), 100), ("fargate".to_string(), 0)].into()),
            to: Some([("lambda".to_string(), 50), ("fargate".to_string(), 50)].into()),
            step: 1,
            steps: 2,
            gate: None,
            message: "step 1/2 (50%)".into(),
            actor: None,
        };
        let v = payload(&n, "/trafficshift/main");
        assert_eq!(
            v,
            json!({
                "specversion": "1.0",
                "id": "api-1-0",
                "source": "/trafficshift/main",
                "type": "dev.trafficshift.StepAdvanced",
                "subject": "api",
                "time": "2026-12-02T10:00:00Z",
                "datacontenttype": "application/json",
                "data": {
                    "split": "api",
                    "record": "api.example.com. A",
                    "hostedZone": "Z1",
                    "state": "Progressing",
                    "from": {"fargate": 0, "lambda": 100},
                    "to": {"fargate": 50, "lambda": 50},
                    "step": 1,
                    "steps": 2,
                    "gate": null,
                    "message": "step 1/2 (50%)",
                    "actor": null
                }
            })
        );
    }
}
