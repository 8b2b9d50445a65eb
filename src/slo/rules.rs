//! `candor rules`: the same alerts as Prometheus alerting rules over Candor's `/metrics`, for
//! users who alert in Alertmanager — error-budget burn on the SLI counters (reference §8.2),
//! the completions-per-minute drop, and open incidents.

use std::fmt::Write as _;
use std::time::Duration;

use super::{BASELINE, MIN_EXPECTED, RECENT, WINDOWS};
use crate::config::SloConfig;

/// Counter of client requests judged for the SLI.
pub const SLI_TOTAL: &str = "candor_sli_requests_total";
/// Of which served within the targets.
pub const SLI_GOOD: &str = "candor_sli_requests_within_targets_total";

/// A duration in Prometheus notation (`1h`, `5m`, `75s`, `250ms`).
pub fn prom_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "1ms".into();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The alert name of burn window `name` (`page_fast` → `CandorErrorBudgetBurnPageFast`).
pub fn alert_name(name: &str) -> String {
    let mut out = String::from("CandorErrorBudgetBurn");
    for part in name.split('_') {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.push(f.to_ascii_uppercase());
            out.push_str(c.as_str());
        }
    }
    out
}

/// The recording-rule name of the error ratio over `d`.
fn ratio_name(d: &str) -> String {
    format!("candor:sli_error_ratio:rate{d}")
}

/// The rules file (YAML) for `cfg`, windows divided by its time scale.
pub fn render(cfg: &SloConfig) -> String {
    let scale =
        |d: Duration| prom_duration(Duration::from_secs_f64(d.as_secs_f64() / cfg.time_scale));
    let budget = format!("{:.6}", 1.0 - cfg.objective)
        .trim_end_matches('0')
        .to_owned();
    let mut spans: Vec<Duration> = WINDOWS.iter().flat_map(|w| [w.short, w.long]).collect();
    spans.sort();
    spans.dedup();
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Candor SLO alerts: objective {:.3} % of requests within the targets; windows and burn\n\
         # rates of the SRE workbook (Sloth's google-30d), time scale {}.\n\
         groups:\n  - name: candor-slo-sli\n    rules:",
        cfg.objective * 100.0,
        cfg.time_scale
    );
    for d in &spans {
        let w = scale(*d);
        let _ = writeln!(
            y,
            "      - record: {}\n        expr: 1 - (sum(rate({SLI_GOOD}[{w}])) / sum(rate({SLI_TOTAL}[{w}])))",
            ratio_name(&w)
        );
    }
    let _ = writeln!(y, "  - name: candor-slo-alerts\n    rules:");
    for w in &WINDOWS {
        let (long, short) = (scale(w.long), scale(w.short));
        let page = if w.severity == crate::detect::Severity::Critical {
            "page"
        } else {
            "ticket"
        };
        let _ = writeln!(
            y,
            "      - alert: {}\n        expr: {} > ({} * {budget}) and {} > ({} * {budget})\n        labels:\n          severity: {page}\n        annotations:\n          summary: Candor is burning its error budget {}x too fast ({} and {} windows)\n          description: Requests served within the targets fell below the objective; see /api/incidents and candor triage.",
            alert_name(w.name),
            ratio_name(&long),
            w.rate,
            ratio_name(&short),
            w.rate,
            w.rate,
            long,
            short,
        );
    }
    let (recent, base) = (scale(RECENT), scale(BASELINE));
    let recent_secs = RECENT.as_secs_f64() / cfg.time_scale;
    let ok = "candor_requests_total{outcome=\"ok\"}";
    let _ = writeln!(
        y,
        "      - alert: CandorCompletionsDrop\n        expr: sum(rate({ok}[{recent}])) < {} * sum(rate({ok}[{base}] offset {recent})) and sum(rate({ok}[{base}] offset {recent})) * {recent_secs} >= {MIN_EXPECTED}\n        labels:\n          severity: page\n        annotations:\n          summary: Successful completions per minute fell below {:.0} % of the hour before\n          description: Clients stopped sending or requests fail before completing; see /api/incidents and candor triage.",
        cfg.completions_drop,
        cfg.completions_drop * 100.0,
    );
    let _ = writeln!(
        y,
        "      - alert: CandorIncidentOpen\n        expr: max by (mode, provider) (candor_open_incidents) > 0\n        labels:\n          severity: ticket\n        annotations:\n          summary: Candor has an open incident\n          description: A detector named a failure mode; see /api/incidents for its evidence."
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_names() {
        assert_eq!(prom_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(prom_duration(Duration::from_secs(300)), "5m");
        assert_eq!(prom_duration(Duration::from_secs(75)), "75s");
        assert_eq!(prom_duration(Duration::from_millis(2500)), "2500ms");
        assert_eq!(alert_name("page_fast"), "CandorErrorBudgetBurnPageFast");
    }

    #[test]
    fn scaled_rules_use_scaled_windows() {
        let cfg = SloConfig {
            time_scale: 60.0,
            ..SloConfig::default()
        };
        let y = render(&cfg);
        // 1 h / 60 = 1 m; 5 m / 60 = 5 s.
        assert!(
            y.contains("candor:sli_error_ratio:rate1m > (14.4 * 0.01"),
            "{y}"
        );
        assert!(
            y.contains("candor:sli_error_ratio:rate5s > (14.4 * 0.01"),
            "{y}"
        );
        assert!(y.contains("CandorCompletionsDrop"));
    }
}
