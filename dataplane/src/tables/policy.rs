//! Compiled NetworkPolicy (read side). Placeholder: allows everything, and
//! says so, until the NetworkPolicy compiler lands.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{IpProto, LocalPod};

/// Which side of a connection a policy check is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDirection {
    Egress,
    Ingress,
}

/// The outcome of one policy check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// No policy of this direction selects the pod.
    NotIsolated,
    /// Allowed by a rule; the rule id explains which ([`PolicyTable::describe_rule`]).
    Allowed { rule: u32 },
    /// The pod is isolated and no rule allows this.
    Denied,
}

/// Per-pod, per-direction compiled rules.
#[derive(Debug, Default, Serialize)]
pub struct PolicyTable {}

impl PolicyTable {
    /// A table in which no pod is isolated.
    pub fn allow_all() -> Self {
        PolicyTable {}
    }

    /// May `pod` (local) exchange a new connection with `peer` in `direction`
    /// (egress: pod -> peer:port; ingress: peer -> pod:port)?
    #[inline]
    pub fn check(
        &self,
        _direction: PolicyDirection,
        _pod: &LocalPod,
        _peer: Ipv4Addr,
        _proto: IpProto,
        _port: u16,
    ) -> PolicyVerdict {
        PolicyVerdict::NotIsolated
    }

    /// Human explanation of a rule id: `ns/policy rule N`.
    pub fn describe_rule(&self, rule: u32) -> String {
        format!("rule {rule}")
    }
}
