//! The supervised actor tree. Actors own lifecycle and state; none of them sits on a request's
//! path (requests read the snapshots these actors publish).
//!
//! ```text
//! RootSupervisor
//! ├── ClusterManager   membership, DNS refresh → publishes each cluster's HostSet
//! │   └── EndpointPool (one per host)   idle eviction, close on removal
//! ├── ListenerManager  accept loops, listener states, drain
//! │   └┈┈ Connection (one per downstream connection)   its task is the actor (no ractor)
//! └── Admin            the admin HTTP API
//! ```
//!
//! Supervision is one-for-one: a failed child is restarted alone, within a restart budget
//! ([`supervision::RestartBudget`]); past the budget the failure escalates to the parent.
//! Connections are not restarted (their socket is gone): a failed connection actor closes only its
//! own connection and is counted. They are not ractor actors (┈┈): ractor's channels and task
//! would be most of an idle connection's memory, so a connection's own task is its actor, with a
//! one-word mailbox and the ListenerManager's policy (catch, count, close) applied at the task's
//! edge. Nothing links them to a ListenerManager incarnation, so a manager restart leaves open
//! connections and their in-flight requests alone.

pub mod admin;
pub mod cluster_manager;
pub mod connection;
pub mod endpoint_pool;
pub mod listener_manager;
pub mod messages;
pub mod root;
pub mod supervision;
