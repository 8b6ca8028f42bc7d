//! Prometheus' text exposition format (version 0.0.4), written by hand: a family's
//! `# HELP` and `# TYPE` lines, then its samples, label values escaped (backslash,
//! double quote, newline), histograms as cumulative `_bucket{le=…}` lines ending in
//! `+Inf`, then `_sum` and `_count`. Pure, so each rule has a test; `promtool check
//! metrics` reads what it writes in `tests/tests/metrics.rs`.

use std::fmt::Write;

/// `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape's text, built family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its help and type. Its samples are written next.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// A histogram's samples: `counts[i]` observations fell at or below `bounds[i]` (and
    /// above the bound before it); `counts[bounds.len()]`, if there, above them all.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            self.text.push_str(&bucket);
            self.labels(labels, Some(&format_value(*bound)));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let count: u64 = counts.iter().sum();
        self.text.push_str(&bucket);
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.text, " {count}");
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (name, value)) in all.enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "{name}=\"{}\"", escape_label_value(value));
        }
        self.text.push('}');
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

/// A label value as the format writes it: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: `\` → `\\`, newline → `\n` (quotes stay as they are).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: whole numbers without a fraction, `NaN`, `+Inf`, `-Inf`.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("two\nlines"), "two\\nlines");
        assert_eq!(escape_label_value("plain-host:5000"), "plain-host:5000");
        let mut out = Exposition::default();
        out.sample("x_total", &[("registry", "evil\"}\n# TYPE"), ("status", "ok")], 1.0);
        assert_eq!(out.into_string(), "x_total{registry=\"evil\\\"}\\n# TYPE\",status=\"ok\"} 1\n");
    }

    #[test]
    fn a_family_has_help_and_type_then_its_samples() {
        let mut out = Exposition::default();
        out.family("pinion_devices", Kind::Gauge, "Devices by state.\nback\\slash");
        out.sample("pinion_devices", &[("state", "online")], 3.0);
        out.sample("pinion_devices", &[], 0.5);
        assert_eq!(
            out.into_string(),
            "# HELP pinion_devices Devices by state.\\nback\\\\slash\n\
             # TYPE pinion_devices gauge\n\
             pinion_devices{state=\"online\"} 3\n\
             pinion_devices 0.5\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf_with_sum_and_count() {
        let mut out = Exposition::default();
        // 2 at or below 0.1, 1 in (0.1, 1], 0 in (1, 10], 4 above 10.
        out.histogram("d_seconds", &[("registry", "r")], &[0.1, 1.0, 10.0], &[2, 1, 0, 4], 61.25);
        assert_eq!(
            out.into_string(),
            "d_seconds_bucket{registry=\"r\",le=\"0.1\"} 2\n\
             d_seconds_bucket{registry=\"r\",le=\"1\"} 3\n\
             d_seconds_bucket{registry=\"r\",le=\"10\"} 3\n\
             d_seconds_bucket{registry=\"r\",le=\"+Inf\"} 7\n\
             d_seconds_sum{registry=\"r\"} 61.25\n\
             d_seconds_count{registry=\"r\"} 7\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(0.005), "0.005");
        assert_eq!(format_value(1_765_119_600.25), "1765119600.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }
}
