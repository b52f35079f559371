//! A participant's standing in a conversation: role, ban, mute.
//!
//! Restrictions carry their expiry and are compared with the clock at each use: a
//! temporary mute or ban ends by itself, with no sweeper and no stale cache.

use serde::{Deserialize, Serialize};

use super::Role;

/// A ban or a mute: permanent (`until_ms` absent) or until a moment (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

impl Restriction {
    pub fn active(self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|until| until > now_ms)
    }

    /// Milliseconds left, `None` when permanent.
    pub fn remaining_ms(self, now_ms: i64) -> Option<u64> {
        self.until_ms
            .map(|until| u64::try_from(until.saturating_sub(now_ms)).unwrap_or(0))
    }

    /// "permanently" or "for another N s", for error messages.
    pub fn describe(self, now_ms: i64) -> String {
        match self.remaining_ms(now_ms) {
            None => "permanently".to_owned(),
            Some(ms) => format!("for another {} s", ms.div_ceil(1000)),
        }
    }
}

/// What a participant is in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<Restriction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute: Option<Restriction>,
}

impl Access {
    /// The ban in force at `now_ms`, if any.
    pub fn banned(&self, now_ms: i64) -> Option<Restriction> {
        self.ban.filter(|r| r.active(now_ms))
    }

    /// The mute in force at `now_ms`, if any.
    pub fn muted(&self, now_ms: i64) -> Option<Restriction> {
        self.mute.filter(|r| r.active(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_end_by_themselves() {
        let temp = Restriction {
            until_ms: Some(10_000),
        };
        assert!(temp.active(9_999));
        assert!(!temp.active(10_000));
        assert_eq!(temp.remaining_ms(8_500), Some(1_500));
        assert_eq!(temp.describe(8_500), "for another 2 s");
        let forever = Restriction { until_ms: None };
        assert!(forever.active(i64::MAX));
        assert_eq!(forever.describe(0), "permanently");

        let access = Access {
            role: Role::Member,
            ban: None,
            mute: Some(temp),
        };
        assert_eq!(access.muted(9_000), Some(temp));
        assert_eq!(access.muted(11_000), None);
        assert_eq!(access.banned(0), None);
    }

    #[test]
    fn cache_value_round_trips() {
        let access = Access {
            role: Role::Admin,
            ban: Some(Restriction { until_ms: None }),
            mute: Some(Restriction { until_ms: Some(42) }),
        };
        let text = serde_json::to_string(&access).unwrap();
        assert_eq!(text, r#"{"role":"admin","ban":{},"mute":{"until_ms":42}}"#);
        assert_eq!(serde_json::from_str::<Access>(&text).unwrap(), access);
    }
}
