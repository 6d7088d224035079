//! Every message an actor in legate accepts, one enum per actor. Variants are commands.

use std::net::SocketAddr;

/// To the RootSupervisor.
#[derive(Debug)]
pub enum RootMsg {
    /// Graceful shutdown: stop accepting and drain every connection.
    Drain,
    /// Forwarded to the current ListenerManager.
    ListenerManager(ListenerManagerMsg),
    /// Forwarded to the current ClusterManager.
    ClusterManager(ClusterManagerMsg),
}

/// To the ListenerManager.
#[derive(Debug)]
pub enum ListenerManagerMsg {
    /// Stop accepting on every listener and drain their connections.
    Drain,
    /// Test hook: make the connection whose peer is `peer` fail.
    InjectConnectionFault { peer: SocketAddr },
    /// Test hook: make the ListenerManager itself fail.
    InjectFault,
}

/// To one Connection actor.
#[derive(Debug)]
pub enum ConnectionMsg {
    /// Finish in-flight requests, then close.
    Drain,
    /// Test hook: fail as a bug would (panic in the handler).
    InjectFault,
}

/// To the ClusterManager.
#[derive(Debug)]
pub enum ClusterManagerMsg {
    /// Time to re-resolve the STRICT_DNS cluster at this index.
    RefreshDns { cluster: usize },
    /// A resolution finished: (address, hostname, weight) per resolved host, or the error.
    DnsResolved {
        cluster: usize,
        result: Result<Vec<(SocketAddr, String, u32)>, String>,
    },
    /// Test hook: make the ClusterManager fail.
    InjectFault,
}

/// To one EndpointPool actor.
#[derive(Debug)]
pub enum EndpointPoolMsg {
    /// Periodic: close connections idle past the idle timeout.
    Sweep,
    /// The host left its cluster: close idle connections and stop.
    Close,
}
