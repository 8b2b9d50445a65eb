//! Orders the providers that serve a model for one request. Pure: no I/O, no clock.

/// The providers to try, in order, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Provider indices, first choice first.
    pub order: Vec<usize>,
    /// Why the first choice was made.
    pub reason: String,
}

/// Rotates through `serving` (round robin by `turn`), the others following as failover.
pub fn plan(serving: &[usize], turn: usize) -> Plan {
    if serving.is_empty() {
        return Plan {
            order: Vec::new(),
            reason: "no provider serves this model".into(),
        };
    }
    let start = turn % serving.len();
    let order: Vec<usize> = serving[start..]
        .iter()
        .chain(&serving[..start])
        .copied()
        .collect();
    Plan {
        reason: format!(
            "round_robin: turn {} of {} candidate(s); the rest are failover",
            start + 1,
            serving.len()
        ),
        order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_every_candidate_for_failover() {
        assert_eq!(plan(&[4, 7, 9], 0).order, vec![4, 7, 9]);
        assert_eq!(plan(&[4, 7, 9], 1).order, vec![7, 9, 4]);
        assert_eq!(plan(&[4, 7, 9], 5).order, vec![9, 4, 7]);
        assert!(plan(&[], 3).order.is_empty());
    }
}
