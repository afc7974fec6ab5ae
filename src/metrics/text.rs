//! A writer of the Prometheus text exposition format 0.0.4, byte for byte what the `prometheus`
//! crate's `TextEncoder` prints for the same family (label escaping, `f64` formatting), so the
//! per-split families written here and the registry's families read as one exposition.

use std::fmt::Write as _;

/// `# HELP` and `# TYPE` of a family.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape(out, help, false);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One sample line: `name{labels} value`. Labels are written in the order given, which must be
/// the crate's: sorted by label name, then `le` of a histogram bucket last.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    let mut sep = '{';
    for (k, v) in labels {
        out.push(sep);
        out.push_str(k);
        out.push_str("=\"");
        escape(out, v, true);
        out.push('"');
        sep = ',';
    }
    if !labels.is_empty() {
        out.push('}');
    }
    out.push(' ');
    // `Display` of f64, as the crate prints every value (integers without `.0`, `inf`, `NaN`).
    let _ = write!(out, "{value}");
    out.push('\n');
}

/// The crate's escaping: `\` and newline always, `"` in label values.
fn escape(out: &mut String, v: &str, quote: bool) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};

    /// The crate's text of one gauge family with the given series.
    fn crate_text(help: &str, labels: &[&str], series: &[(&[&str], f64)]) -> String {
        let r = Registry::new();
        let g = GaugeVec::new(Opts::new("x_ratio", help), labels).expect("valid");
        r.register(Box::new(g.clone())).expect("unique");
        for (values, v) in series {
            g.with_label_values(values).set(*v);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&r.gather(), &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn same_bytes_as_the_crate_for_awkward_values_and_labels() {
        let help = "a \\ help\nwith \"quotes\"";
        let weird = "a\\b\"c\nd é";
        let values = [
            0.0,
            1.0,
            0.5,
            0.1 + 0.2,
            1e21,
            1e-7,
            -3.0,
            1_700_000_000.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            i64::MAX as f64,
        ];
        for v in values {
            // Label names in the crate's order (sorted), whatever the declaration order.
            let want = crate_text(help, &["split", "backend"], &[(&[weird, "b"], v)]);
            let mut got = String::new();
            header(&mut got, "x_ratio", help, "gauge");
            sample(
                &mut got,
                "x_ratio",
                &[("backend", "b"), ("split", weird)],
                v,
            );
            assert_eq!(got, want, "value {v}");
        }
    }

    #[test]
    fn no_braces_without_labels() {
        let mut got = String::new();
        sample(&mut got, "x", &[], 3.0);
        assert_eq!(got, "x 3\n");
    }
}
