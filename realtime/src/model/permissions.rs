//! Who may do what in a conversation: the one permission matrix of the data plane.
//!
//! Roles rank owner > admin > moderator > member. Every decision a handler makes about
//! another user goes through [`check`]; the unit tests below spell out every cell.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A participant's role in a conversation, ordered by rank (`Member` lowest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Moderator,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Member, Role::Moderator, Role::Admin, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The role with its indefinite article, for messages ("an admin").
    pub fn with_article(self) -> String {
        match self {
            Role::Admin | Role::Owner => format!("an {self}"),
            Role::Member | Role::Moderator => format!("a {self}"),
        }
    }

    /// Parses a stored or requested role; unknown strings are `None`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a participant does, possibly to another participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Kick,
    Mute,
    Unmute,
    Ban,
    Unban,
    /// Give the target this role.
    ChangeRole(Role),
    DeleteRoom,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Kick => "kick",
            Action::Mute => "mute",
            Action::Unmute => "unmute",
            Action::Ban => "ban",
            Action::Unban => "unban",
            Action::ChangeRole(_) => "role",
            Action::DeleteRoom => "delete",
        }
    }

    /// Lowest role that may take the action at all.
    fn minimum(self) -> Role {
        match self {
            Action::Send => Role::Member,
            Action::Kick | Action::Mute | Action::Unmute | Action::Ban | Action::Unban => {
                Role::Moderator
            }
            Action::ChangeRole(_) => Role::Admin,
            Action::DeleteRoom => Role::Owner,
        }
    }

    /// True when the action is done to another participant, whose rank then matters.
    fn has_target(self) -> bool {
        !matches!(self, Action::Send | Action::DeleteRoom)
    }
}

/// Decides whether `actor` may take `action` against a participant whose role is
/// `target` (ignored by actions without a target). The rules:
/// - anyone may send (mutes are enforced separately, they are not a role);
/// - moderators and above may kick, mute/unmute and ban/unban participants of a
///   strictly lower rank;
/// - admins and above may change the role of a participant of a strictly lower rank, to a
///   role strictly below their own (nobody can create an owner);
/// - only the owner may delete the conversation.
pub fn check(actor: Role, action: Action, target: Role) -> Result<(), String> {
    if actor < action.minimum() {
        return Err(format!(
            "{} may not {}; it takes at least {}",
            actor.with_article(),
            action.name(),
            action.minimum().with_article()
        ));
    }
    if action.has_target() && target >= actor {
        return Err(format!(
            "{} may not {} {}: only participants of a lower rank",
            actor.with_article(),
            action.name(),
            target.with_article()
        ));
    }
    if let Action::ChangeRole(to) = action
        && to >= actor
    {
        return Err(format!(
            "{} may not grant the role {to}: only roles below their own",
            actor.with_article()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Role = Role::Member;
    const D: Role = Role::Moderator;
    const A: Role = Role::Admin;
    const O: Role = Role::Owner;

    /// Expected decisions, one row per actor (member, moderator, admin, owner), one
    /// column per target (member, moderator, admin, owner): `Y` allowed, `.` refused.
    /// Written out by hand from the rules, independently of `check`.
    fn table(action: Action) -> [&'static str; 4] {
        match action {
            Action::Send => ["YYYY", "YYYY", "YYYY", "YYYY"],
            Action::Kick | Action::Mute | Action::Unmute | Action::Ban | Action::Unban => {
                ["....", "Y...", "YY..", "YYY."]
            }
            Action::ChangeRole(Role::Member) | Action::ChangeRole(Role::Moderator) => {
                ["....", "....", "YY..", "YYY."]
            }
            Action::ChangeRole(Role::Admin) => ["....", "....", "....", "YYY."],
            Action::ChangeRole(Role::Owner) => ["....", "....", "....", "...."],
            Action::DeleteRoom => ["....", "....", "....", "YYYY"],
        }
    }

    fn every_action() -> Vec<Action> {
        let mut all = vec![
            Action::Send,
            Action::Kick,
            Action::Mute,
            Action::Unmute,
            Action::Ban,
            Action::Unban,
            Action::DeleteRoom,
        ];
        all.extend(Role::ALL.map(Action::ChangeRole));
        all
    }

    #[test]
    fn every_cell_of_the_matrix() {
        let mut cells = 0;
        for action in every_action() {
            let rows = table(action);
            for (i, actor) in Role::ALL.into_iter().enumerate() {
                for (j, target) in Role::ALL.into_iter().enumerate() {
                    let expected = rows[i].as_bytes()[j] == b'Y';
                    let got = check(actor, action, target);
                    assert_eq!(
                        got.is_ok(),
                        expected,
                        "{actor} {action:?} {target}: {got:?}"
                    );
                    cells += 1;
                }
            }
        }
        assert_eq!(cells, 11 * 16);
    }

    #[test]
    fn refusals_explain_themselves() {
        assert_eq!(
            check(D, Action::Ban, A).unwrap_err(),
            "a moderator may not ban an admin: only participants of a lower rank"
        );
        assert_eq!(
            check(M, Action::Kick, M).unwrap_err(),
            "a member may not kick; it takes at least a moderator"
        );
        assert!(
            check(A, Action::ChangeRole(A), M)
                .unwrap_err()
                .contains("only roles below their own")
        );
        assert!(check(O, Action::ChangeRole(A), D).is_ok());
    }

    #[test]
    fn roles_rank_and_round_trip() {
        assert!(M < D && D < A && A < O);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Role::parse("root"), None);
    }
}
