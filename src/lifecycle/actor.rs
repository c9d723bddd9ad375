//! Who caused an event: an admin (name, org, role), a site, the scheduler, recovery, or the
//! system.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An admin role (SPEC section 9), as written in the admin certificate's `unstructuredName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May do everything.
    ProjectAdmin,
    /// May abort, delete, clone and download jobs of its own org, and read all.
    OrgAdmin,
    /// May submit, and abort, delete, clone and download its own jobs, and read all.
    Lead,
    /// May only read.
    Member,
}

impl Role {
    /// The role's text, as certificates and serde write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::ProjectAdmin => "project_admin",
            Role::OrgAdmin => "org_admin",
            Role::Lead => "lead",
            Role::Member => "member",
        }
    }

    /// Whether the role may submit jobs (also the rule for a job's signer).
    pub fn may_submit(self) -> bool {
        matches!(self, Role::ProjectAdmin | Role::Lead)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of the four roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (expected project_admin, org_admin, lead or member)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Role::ProjectAdmin, Role::OrgAdmin, Role::Lead, Role::Member]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A person's identity from a certificate: CN, O and role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The certificate's CN.
    pub name: String,
    /// The certificate's O.
    pub org: String,
    /// The role in the certificate's `unstructuredName`.
    pub role: Role,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.org, self.role)
    }
}

/// Who caused an event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// An admin, named by the identity in its certificate.
    Admin {
        /// CN.
        name: String,
        /// O.
        org: String,
        /// Role.
        role: Role,
    },
    /// A site, by name.
    Site {
        /// The site's name.
        name: String,
    },
    /// The default scheduler.
    Scheduler,
    /// The restart decision of SPEC section 4.
    Recovery,
    /// fedrun itself: timers, the server app, workers.
    System,
}

impl Actor {
    /// The admin actor for an identity.
    pub fn admin(identity: &Identity) -> Actor {
        Actor::Admin {
            name: identity.name.clone(),
            org: identity.org.clone(),
            role: identity.role,
        }
    }

    /// The identity, when the actor is an admin.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Actor::Admin { name, org, role } => Some(Identity {
                name: name.clone(),
                org: org.clone(),
                role: *role,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Admin { name, org, role } => write!(f, "admin {name} ({org}, {role})"),
            Actor::Site { name } => write!(f, "site {name}"),
            Actor::Scheduler => f.write_str("scheduler"),
            Actor::Recovery => f.write_str("recovery"),
            Actor::System => f.write_str("system"),
        }
    }
}
