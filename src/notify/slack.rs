//! Slack incoming-webhook payload (`hooks.slack.com`): a one-line `text` (what notifications and
//! screen readers show) and a section with the facts.
//! <https://api.slack.com/messaging/webhooks>

use serde_json::{json, Value};

use super::Notification;
use crate::weights::show;

/// Slack's mrkdwn treats `&`, `<` and `>` as markup; event messages may quote remote text.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn payload(n: &Notification) -> Value {
    let icon = if n.kind.warning() {
        ":warning:"
    } else {
        ":large_green_circle:"
    };
    let text = format!(
        "{icon} *{}* {}: {}",
        escape(&n.split),
        n.kind.as_str(),
        escape(&n.message)
    );
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Record*\n{}", escape(&n.record))}),
        json!({"type": "mrkdwn", "text": format!("*Step*\n{}/{}", n.step, n.steps)}),
    ];
    if let (Some(from), Some(to)) = (&n.from, &n.to) {
        fields.push(
            json!({"type": "mrkdwn", "text": format!("*Weights*\n{} → {}", show(from), show(to))}),
        );
    }
    if let Some(g) = &n.gate {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Gate*\n{}", escape(g))}));
    }
    if let Some(a) = &n.actor {
        fields.push(json!({"type": "mrkdwn", "text": format!("*By*\n{}", escape(a))}));
    }
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": fields},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Kind;

    #[test]
    fn slack_payload_is_text_plus_fields() {
        let n = Notification {
            kind: Kind::RolledBack,
            id: "x".into(),
            time: "2026-12-02T10:00:00Z".into(),
            split: "api".into(),
            record: "api.example.com. A".into(),
            hosted_zone: "Z1".into(),
            state: Some("RolledBack".into()),
            from: Some([("lambda".to_string(), 50), ("fargate".to_string(), 50)].into()),
            to: Some([("lambda".to_string(), 100), ("fargate".to_string(), 0)].into()),
            step: 1,
            steps: 2,
            gate: Some("errors".into()),
            message: "gate errors failed (5xx > 1% <b>)".into(),
            actor: None,
        };
        let text = ":warning: *api* RolledBack: gate errors failed (5xx &gt; 1% &lt;b&gt;)";
        assert_eq!(
            payload(&n),
            json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": "*Record*\napi.example.com. A"},
                        {"type": "mrkdwn", "text": "*Step*\n1/2"},
                        {"type": "mrkdwn", "text": "*Weights*\nfargate=50 lambda=50 → fargate=0 lambda=100"},
                        {"type": "mrkdwn", "text": "*Gate*\nerrors"},
                    ]},
                ],
            })
        );
    }
}
