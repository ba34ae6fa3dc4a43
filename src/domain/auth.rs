//! Who may do what: operator roles, what a route needs, and the authenticated principal that
//! every admin action is recorded against.
//!
//! Roles are not a ladder: `provisioner` may create products and pair devices but may not
//! start a rollout, and `operator` may start a rollout but may not create a product. Every
//! role may read (`Need::Read`).

use serde::{Deserialize, Serialize};

use super::Error;

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including accounts, keys, MQTT credentials and the audit log.
    Admin,
    /// Devices, firmware, releases, rollouts, configuration, commands.
    Operator,
    /// Read only.
    Viewer,
    /// Products, provisioning, pairing, device registration.
    Provisioner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Provisioner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Provisioner => "provisioner",
        }
    }

    pub fn parse(text: &str) -> Result<Role, Error> {
        Role::ALL.into_iter().find(|role| role.as_str() == text).ok_or_else(|| {
            Error::invalid("invalid_role", format!("unknown role `{text}`: use one of admin, operator, viewer, provisioner"))
        })
    }

    /// Whether this role may do what `need` names.
    pub fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Role::Admin, _)
                | (_, Need::Read)
                | (Role::Operator, Need::Operate | Need::Register)
                | (Role::Provisioner, Need::Provision | Need::Register)
        )
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route needs. Each admin route declares one in code (its extractor) and in its
/// OpenAPI `security` scopes (the roles that `Need::roles` lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// Reading anything an operator may see: every role.
    Read,
    /// Devices, firmware, releases, rollouts, configuration, commands: operator, admin.
    Operate,
    /// Products, provisioning, pairing: provisioner, admin.
    Provision,
    /// Registering a device: operator, provisioner, admin.
    Register,
    /// Accounts, keys, sessions of others, MQTT credentials, audit: admin.
    Admin,
}

impl Need {
    /// The roles that satisfy this need, strongest first.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|role| role.allows(self)).collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Operate => "operate",
            Need::Provision => "provision",
            Need::Register => "register",
            Need::Admin => "admin",
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A user account (password login, then a session cookie).
    User,
    /// A named API key (including the original admin key, named `admin`).
    ApiKey,
    /// A person or service signed in through the OpenID provider.
    Oidc,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "key",
            PrincipalKind::Oidc => "oidc",
        }
    }
}

/// An authenticated operator (person or machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The user name, key name, or OpenID subject's preferred name.
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn new(kind: PrincipalKind, name: impl Into<String>, role: Role) -> Principal {
        Principal { kind, name: name.into(), role }
    }

    /// What records name as the actor: `user:alice`, `key:ci-deploy`, `oidc:bob`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.name)
    }

    /// Refuses with 403 unless this principal's role allows `need`.
    pub fn require(&self, need: Need) -> Result<(), Error> {
        if self.role.allows(need) {
            return Ok(());
        }
        let roles = need.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ");
        Err(Error::Forbidden(format!("this needs the role {roles}; `{}` has the role {}", self.actor(), self.role)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_not_a_ladder() {
        assert!(Role::Admin.allows(Need::Admin));
        assert!(!Role::Operator.allows(Need::Admin));
        assert!(Role::Operator.allows(Need::Operate));
        assert!(!Role::Operator.allows(Need::Provision));
        assert!(Role::Provisioner.allows(Need::Provision));
        assert!(!Role::Provisioner.allows(Need::Operate));
        assert!(Role::Provisioner.allows(Need::Register) && Role::Operator.allows(Need::Register));
        assert!(!Role::Viewer.allows(Need::Register));
        assert!(Role::ALL.iter().all(|role| role.allows(Need::Read)));
    }

    #[test]
    fn needs_list_their_roles() {
        assert_eq!(Need::Admin.roles(), vec![Role::Admin]);
        assert_eq!(Need::Read.roles(), Role::ALL.to_vec());
        assert_eq!(Need::Register.roles(), vec![Role::Admin, Role::Operator, Role::Provisioner]);
    }

    #[test]
    fn a_weak_role_is_refused_with_403_naming_what_is_needed() {
        let viewer = Principal::new(PrincipalKind::ApiKey, "dash", Role::Viewer);
        let Err(Error::Forbidden(message)) = viewer.require(Need::Operate) else { panic!("a viewer may not operate") };
        assert!(message.contains("admin or operator") && message.contains("key:dash"), "{message}");
        assert!(viewer.require(Need::Read).is_ok());
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert!(Role::parse("root").is_err() && Role::parse("Admin").is_err());
    }
}
