//! Envoy's response flags (`%RESPONSE_FLAGS%`): why a request ended the way it did.

use std::fmt;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    pub const FAILED_LOCAL_HEALTH_CHECK: Self = Self(1 << 0);
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 1);
    pub const UPSTREAM_REQUEST_TIMEOUT: Self = Self(1 << 2);
    pub const LOCAL_RESET: Self = Self(1 << 3);
    pub const UPSTREAM_REMOTE_RESET: Self = Self(1 << 4);
    pub const UPSTREAM_CONNECTION_FAILURE: Self = Self(1 << 5);
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 6);
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 7);
    pub const NO_ROUTE_FOUND: Self = Self(1 << 8);
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 9);
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 10);
    pub const NO_CLUSTER_FOUND: Self = Self(1 << 11);
    pub const STREAM_IDLE_TIMEOUT: Self = Self(1 << 12);
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 13);

    /// Envoy's short names, in Envoy's order.
    const NAMES: [(Self, &'static str); 14] = [
        (Self::FAILED_LOCAL_HEALTH_CHECK, "LH"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Self::LOCAL_RESET, "LR"),
        (Self::UPSTREAM_REMOTE_RESET, "UR"),
        (Self::UPSTREAM_CONNECTION_FAILURE, "UF"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::NO_ROUTE_FOUND, "NR"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
        (Self::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (Self::UPSTREAM_PROTOCOL_ERROR, "UPE"),
        (Self::NO_CLUSTER_FOUND, "NC"),
    ];

    pub fn set(&mut self, other: Self) {
        self.0 |= other.0;
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ResponseFlags {
    /// Flags joined by `,`; empty when none is set (the log formatter prints `-`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFlags as F;

    #[test]
    fn display_in_envoy_order() {
        let mut f = F::default();
        assert_eq!(f.to_string(), "");
        f.set(F::UPSTREAM_CONNECTION_FAILURE);
        f.set(F::NO_HEALTHY_UPSTREAM);
        assert_eq!(f.to_string(), "UH,UF");
    }
}
