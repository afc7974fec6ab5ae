//! `prometheus`: one instant query whose single sample must lie within the gate's bounds.

use serde::Deserialize;

use crate::spec::{OnNoData, PrometheusGate};

use super::http::{describe, read_capped, redact, timed_out, Capped};
use super::{GateChecker, GateOutcome};

/// Prometheus answers larger than this are refused: a gate query returns one sample.
const PROMETHEUS_BODY_CAP: usize = 1024 * 1024;

impl GateChecker {
    pub(super) async fn prometheus(&self, g: &PrometheusGate) -> GateOutcome {
        let timeout = g.timeout.0;
        let address = g.address.trim_end_matches('/');
        let base = redact(address);
        let mut url = match reqwest::Url::parse(&format!("{address}/api/v1/query")) {
            Ok(u) => u,
            Err(e) => {
                return GateOutcome::fail(format!("invalid prometheus address {base:?}: {e}"))
            }
        };
        url.query_pairs_mut().append_pair("query", &g.query);
        if let Some(why) = self.refused(&url) {
            return GateOutcome::fail(format!("prometheus at {base}: {why}"));
        }

        let exchange = async {
            let resp = self
                .http_client()
                .get(url.clone())
                .timeout(timeout)
                .send()
                .await?;
            let status = resp.status();
            let body = read_capped(resp, PROMETHEUS_BODY_CAP).await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return GateOutcome::fail(format!("prometheus at {base}: {}", timed_out(timeout)))
            }
            Ok(Err(e)) => {
                return GateOutcome::fail(format!(
                    "prometheus at {base}: {}",
                    describe(&e, timeout)
                ))
            }
            Ok(Ok(x)) => x,
        };
        let Capped::Complete(body) = body else {
            return GateOutcome::fail(format!(
                "prometheus at {base}: response larger than 1 MiB; the query must return one sample"
            ));
        };
        evaluate_prometheus(g, status, &body)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromResponse {
    status: String,
    data: Option<PromData>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromData {
    result_type: String,
    result: serde_json::Value,
}

/// Judge a Prometheus `/api/v1/query` answer against the gate's bounds.
fn evaluate_prometheus(
    g: &PrometheusGate,
    status: reqwest::StatusCode,
    body: &[u8],
) -> GateOutcome {
    let resp: PromResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) if status.is_success() => {
            return GateOutcome::fail(format!("prometheus answered malformed JSON: {e}"))
        }
        Err(_) => return GateOutcome::fail(format!("prometheus answered {status}")),
    };
    if resp.status != "success" {
        let kind = resp.error_type.as_deref().unwrap_or("error");
        let msg = resp.error.as_deref().unwrap_or("no error message");
        return GateOutcome::fail(format!("prometheus query failed ({kind}): {msg}"));
    }
    let Some(data) = resp.data else {
        return GateOutcome::fail("prometheus answered success without data");
    };
    let sample = match data.result_type.as_str() {
        "scalar" => Some(&data.result),
        "vector" => {
            let Some(series) = data.result.as_array() else {
                return GateOutcome::fail("prometheus vector result is not a list");
            };
            match series.as_slice() {
                [] => None,
                [one] => match one.get("value") {
                    Some(v) => Some(v),
                    None => {
                        return GateOutcome::fail(
                            "query returned a histogram sample; the gate needs a float value",
                        )
                    }
                },
                many => {
                    return GateOutcome::fail(format!(
                        "query returned {} series; aggregate it to one (e.g. sum(...) or max(...))",
                        many.len()
                    ))
                }
            }
        }
        other => {
            return GateOutcome::fail(format!(
                "query returned a {other}; the gate needs an instant vector or a scalar"
            ))
        }
    };
    let value = match sample.map(sample_value) {
        None => None,
        Some(Ok(v)) if v.is_nan() => None,
        Some(Ok(v)) => Some(v),
        Some(Err(msg)) => return GateOutcome::fail(msg),
    };
    let Some(v) = value else {
        return match g.on_no_data {
            OnNoData::Fail => GateOutcome::fail("no data (onNoData: fail)"),
            OnNoData::Pass => GateOutcome::pass("no data (onNoData: pass)"),
        };
    };
    let outcome = match (g.min, g.max) {
        (_, Some(max)) if v > max => GateOutcome::fail(format!("value {v} is above max {max}")),
        (Some(min), _) if v < min => GateOutcome::fail(format!("value {v} is below min {min}")),
        (Some(min), Some(max)) => GateOutcome::pass(format!("value {v} within [{min}, {max}]")),
        (None, Some(max)) => GateOutcome::pass(format!("value {v} <= max {max}")),
        (Some(min), None) => GateOutcome::pass(format!("value {v} >= min {min}")),
        (None, None) => GateOutcome::pass(format!("value {v}")),
    };
    outcome.with_value(v)
}

/// A Prometheus sample `[<unix time>, "<value>"]` -> the value. Prometheus writes NaN and
/// infinities as "NaN", "+Inf" and "-Inf".
fn sample_value(sample: &serde_json::Value) -> Result<f64, String> {
    let text = sample
        .as_array()
        .and_then(|pair| pair.get(1))
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("malformed prometheus sample {sample}"))?;
    text.parse::<f64>()
        .map_err(|_| format!("prometheus sample value {text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::fakes::*;
    use crate::spec::Gate;

    fn with_prom(mut g: Gate, f: impl FnOnce(&mut PrometheusGate)) -> Gate {
        f(g.prometheus.as_mut().expect("prometheus gate"));
        g
    }

    #[tokio::test]
    async fn prometheus_single_sample_within_bounds() {
        let base = local_server().await;
        let c = plain_checker();
        let o = c.check(&split(), &prom_gate(&base, "one")).await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.value, Some(0.5));
        assert_eq!(o.message, "value 0.5 <= max 1");

        // A trailing slash and a path prefix in the address both work.
        let o = c
            .check(&split(), &prom_gate(&format!("{base}/prefix/"), "one"))
            .await;
        assert!(o.passing, "{o:?}");

        let o = c
            .check(
                &split(),
                &with_prom(prom_gate(&base, "one"), |p| p.min = Some(0.6)),
            )
            .await;
        assert!(!o.passing);
        assert_eq!(o.message, "value 0.5 is below min 0.6");
        assert_eq!(o.value, Some(0.5));

        let o = c.check(&split(), &prom_gate(&base, "scalar")).await;
        assert!(!o.passing);
        assert_eq!(o.message, "value 7 is above max 1");
        assert_eq!(o.value, Some(7.0));

        let o = c.check(&split(), &prom_gate(&base, "inf")).await;
        assert!(!o.passing, "+Inf is above any max: {o:?}");

        // The query is URL-encoded: braces, quotes, spaces, & and / arrive intact.
        let o = c
            .check(
                &split(),
                &with_prom(prom_gate(&base, SPECIAL_QUERY), |p| p.max = Some(100.0)),
            )
            .await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.value, Some(42.0));
    }

    #[tokio::test]
    async fn prometheus_no_data_follows_on_no_data() {
        let base = local_server().await;
        let c = plain_checker();
        for q in ["empty", "nan"] {
            let o = c.check(&split(), &prom_gate(&base, q)).await;
            assert!(!o.passing, "{q}: {o:?}");
            assert_eq!(o.message, "no data (onNoData: fail)");
            let o = c
                .check(
                    &split(),
                    &with_prom(prom_gate(&base, q), |p| p.on_no_data = OnNoData::Pass),
                )
                .await;
            assert!(o.passing, "{q}: {o:?}");
            assert_eq!(o.message, "no data (onNoData: pass)");
        }
    }

    #[tokio::test]
    async fn prometheus_bad_answers_fail() {
        let base = local_server().await;
        let c = plain_checker();
        let cases = [
            ("many", "query returned 3 series; aggregate it to one"),
            ("matrix", "query returned a matrix"),
            ("malformed", "malformed JSON"),
            (
                "bad",
                "prometheus query failed (bad_data): parse error at char 3",
            ),
            ("big", "response larger than 1 MiB"),
            ("slow", "timed out after 500ms"),
        ];
        for (q, want) in cases {
            let o = c.check(&split(), &prom_gate(&base, q)).await;
            assert!(!o.passing, "{q}: {o:?}");
            assert!(
                o.message.contains(want),
                "{q}: {:?} lacks {want:?}",
                o.message
            );
        }
        let o = c.check(&split(), &prom_gate("not a url", "one")).await;
        assert!(!o.passing);
        assert!(
            o.message.contains("invalid prometheus address"),
            "{}",
            o.message
        );
    }

    #[tokio::test]
    async fn remote_messages_are_bounded_and_clean() {
        let base = local_server().await;
        let o = plain_checker()
            .check(&split(), &prom_gate(&base, "noisy"))
            .await;
        assert!(!o.passing);
        assert!(o.message.len() <= 512, "{} bytes", o.message.len());
        assert!(!o.message.chars().any(char::is_control), "{:?}", o.message);
        assert!(
            o.message.starts_with("prometheus query failed (bad_data)"),
            "{}",
            o.message
        );
    }
}
