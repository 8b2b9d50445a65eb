//! A small parser for the Prometheus text exposition format: enough to read gauges,
//! counters and histogram parts by name and label. Pure.

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// Metric name, e.g. `vllm:num_requests_waiting`.
    pub name: &'a str,
    /// Label pairs, unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value.
    pub value: f64,
}

impl Line<'_> {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample line of `text`; comment lines and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Line<'_>> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line {
        name,
        labels,
        value,
    })
}

/// Parses `key="value",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_values_and_skips_comments() {
        let text = "# HELP x y\n# TYPE x gauge\nx 1\n\
                    vllm:num_requests_waiting{engine=\"0\",model_name=\"m \\\"q\\\"\"} 3.0\n\
                    h_bucket{le=\"+Inf\"} 7 1700000000\nbad line here\ninf +Inf\n";
        let lines = parse(text);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].name, "x");
        assert_eq!(lines[1].label("model_name"), Some("m \"q\""));
        assert_eq!(lines[1].value, 3.0);
        assert_eq!(lines[2].label("le"), Some("+Inf"));
        assert!(lines[3].value.is_infinite());
    }
}
