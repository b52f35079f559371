//! Health of one TURN server as a small state machine: a server becomes healthy after
//! `success_threshold` consecutive good probes and unhealthy after `failure_threshold`
//! consecutive failed ones. A server never probed is not healthy: nothing is handed to
//! clients before it has proven itself.

/// How many consecutive results flip the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub failure: u32,
    pub success: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

impl Health {
    /// The state after one more probe result.
    #[must_use]
    pub fn observe(self, ok: bool, t: Thresholds) -> Health {
        if ok {
            let successes = self.consecutive_successes.saturating_add(1);
            Health {
                healthy: self.healthy || successes >= t.success.max(1),
                consecutive_failures: 0,
                consecutive_successes: successes,
            }
        } else {
            let failures = self.consecutive_failures.saturating_add(1);
            Health {
                healthy: self.healthy && failures < t.failure.max(1),
                consecutive_failures: failures,
                consecutive_successes: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: Thresholds, results: &str) -> Vec<bool> {
        let mut h = Health::default();
        results
            .chars()
            .map(|c| {
                h = h.observe(c == '+', t);
                h.healthy
            })
            .collect()
    }

    fn states(v: &[bool]) -> String {
        v.iter().map(|h| if *h { 'H' } else { 'u' }).collect()
    }

    #[test]
    fn thresholds_flip_the_state() {
        let t = Thresholds {
            failure: 3,
            success: 2,
        };
        // Two successes to become healthy, three failures to leave, and a failure in
        // between resets the success count (and vice versa).
        assert_eq!(states(&run(t, "++--+---++")), "uHHHHHHuuH");
        assert_eq!(states(&run(t, "+-+-++")), "uuuuuH");
        assert_eq!(states(&run(t, "++-+--+--")), "uHHHHHHHH");
    }

    #[test]
    fn thresholds_of_one_follow_each_probe() {
        let t = Thresholds {
            failure: 1,
            success: 1,
        };
        assert_eq!(states(&run(t, "+-+")), "HuH");
        // Zero is treated as one, never as "always".
        let zero = Thresholds {
            failure: 0,
            success: 0,
        };
        assert_eq!(states(&run(zero, "-+-")), "uHu");
    }

    #[test]
    fn counters_track_the_streak() {
        let t = Thresholds {
            failure: 2,
            success: 1,
        };
        let h = Health::default().observe(true, t).observe(false, t);
        assert_eq!(
            h,
            Health {
                healthy: true,
                consecutive_failures: 1,
                consecutive_successes: 0
            }
        );
        let h = h.observe(false, t);
        assert!(!h.healthy);
        assert_eq!(h.consecutive_failures, 2);
    }
}
