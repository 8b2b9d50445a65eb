//! Reads real production traces (Azure LLM inference 2023 CSV, Mooncake JSONL) into
//! request arrivals with prompt and output lengths.

use std::time::Duration;

/// One recorded request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRequest {
    /// Arrival, relative to the first request.
    pub offset: Duration,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// Why a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trace line {line}: {message}")]
pub struct TraceError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The sample traces shipped in the binary (see `traces/README.md` for attribution).
pub mod samples {
    /// Azure conversation trace, first 3,000 rows.
    pub const AZURE_CONV: &str = include_str!("../../traces/azure-llm-2023-conv-sample.csv");
    /// Azure coding trace, first 1,500 rows.
    pub const AZURE_CODE: &str = include_str!("../../traces/azure-llm-2023-code-sample.csv");
    /// Mooncake conversation trace, first 1,500 rows.
    pub const MOONCAKE: &str = include_str!("../../traces/mooncake-conversation-sample.jsonl");
}

/// The text of a trace: a shipped sample by name (`azure-conv`, `azure-code`, `mooncake`) or
/// a file.
pub fn read(name_or_path: &str) -> std::io::Result<String> {
    match name_or_path {
        "azure-conv" => Ok(samples::AZURE_CONV.to_owned()),
        "azure-code" => Ok(samples::AZURE_CODE.to_owned()),
        "mooncake" => Ok(samples::MOONCAKE.to_owned()),
        path => std::fs::read_to_string(path),
    }
}

/// Parses either format, recognised by its first line.
pub fn parse(text: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let first = text.lines().next().unwrap_or_default().trim_start();
    let mut out = if first.starts_with('{') {
        parse_mooncake(text)?
    } else {
        parse_azure(text)?
    };
    if out.is_empty() {
        return Err(TraceError {
            line: 1,
            message: "the trace has no requests".into(),
        });
    }
    out.sort_by_key(|r| r.offset);
    let base = out[0].offset;
    for r in &mut out {
        r.offset -= base;
    }
    Ok(out)
}

fn bad(line: usize, message: impl Into<String>) -> TraceError {
    TraceError {
        line,
        message: message.into(),
    }
}

/// `TIMESTAMP,ContextTokens,GeneratedTokens` with `YYYY-MM-DD HH:MM:SS.fffffff` timestamps.
pub fn parse_azure(text: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || (n == 1 && line.starts_with("TIMESTAMP")) {
            continue;
        }
        let mut cols = line.split(',');
        let (Some(ts), Some(ctx), Some(gen_)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(bad(n, "expected TIMESTAMP,ContextTokens,GeneratedTokens"));
        };
        // Before 1970 or past what a Duration holds is not a trace (found by fuzzing).
        let offset = timestamp(ts)
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| bad(n, format!("bad timestamp {ts:?}")))?;
        out.push(TraceRequest {
            offset,
            input_tokens: ctx
                .trim()
                .parse()
                .map_err(|_| bad(n, "bad ContextTokens"))?,
            output_tokens: gen_
                .trim()
                .parse()
                .map_err(|_| bad(n, "bad GeneratedTokens"))?,
        });
    }
    Ok(out)
}

/// Seconds since the Unix epoch of `YYYY-MM-DD HH:MM:SS[.frac]`.
fn timestamp(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim().split_once(' ')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, s) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

#[derive(serde::Deserialize)]
struct MooncakeRow {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
}

/// One JSON object per line: `timestamp` (ms), `input_length`, `output_length`.
pub fn parse_mooncake(text: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: MooncakeRow = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        let offset = Duration::try_from_secs_f64(row.timestamp.max(0.0) / 1000.0)
            .map_err(|_| bad(i + 1, format!("bad timestamp {}", row.timestamp)))?;
        out.push(TraceRequest {
            offset,
            input_tokens: row.input_length,
            output_tokens: row.output_length,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_samples_parse() {
        let conv = parse(samples::AZURE_CONV).unwrap();
        assert_eq!(conv.len(), 3000);
        assert_eq!(conv[0].offset, Duration::ZERO);
        assert_eq!((conv[0].input_tokens, conv[0].output_tokens), (374, 44));
        let span = conv[2999].offset.as_secs_f64();
        assert!((500.0..700.0).contains(&span), "≈10 minutes, got {span}");
        assert_eq!(parse(samples::AZURE_CODE).unwrap().len(), 1500);
        let moon = parse(samples::MOONCAKE).unwrap();
        assert_eq!(moon.len(), 1500);
        assert_eq!((moon[0].input_tokens, moon[0].output_tokens), (6758, 500));
        assert!(moon.windows(2).all(|w| w[0].offset <= w[1].offset));
    }

    #[test]
    fn timestamps_no_duration_holds_are_refused() {
        // Found by fuzzing: these panicked converting to a Duration.
        let azure = "TIMESTAMP,ContextTokens,GeneratedTokens\n1969-12-31 23:59:59.5,10,2\n";
        assert!(parse_azure(azure).is_err());
        assert!(
            parse_mooncake(r#"{"timestamp":1e300,"input_length":1,"output_length":1}"#).is_err()
        );
    }

    #[test]
    fn azure_timestamps_cross_midnight() {
        let t = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-12-31 23:59:59.5,10,2\n2024-01-01 00:00:00.7500000,20,3\n";
        let r = parse(t).unwrap();
        assert_eq!(r[1].offset, Duration::from_millis(1250));
    }

    #[test]
    fn bad_rows_name_their_line() {
        let e = parse("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,x,3\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse("{\"timestamp\": 1}\n").is_err());
        assert!(parse("").is_err());
    }
}
