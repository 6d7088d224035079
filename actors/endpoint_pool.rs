//! One actor per upstream host: the owner of its connection pool's lifecycle. Requests never
//! message it (they check connections in and out of the pool directly); it sweeps idle
//! connections and closes the pool when the host leaves its cluster.

use super::messages::EndpointPoolMsg;
use super::supervision::AbortOnDrop;
use crate::cluster::endpoint_pool::IDLE_TIMEOUT;
use crate::cluster::Host;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;

pub struct EndpointPoolActor;

pub struct EndpointPoolState {
    host: Arc<Host>,
    _sweeper: AbortOnDrop,
}

/// Idle connections are checked this often; the idle timeout itself is an hour, so a minute's
/// slack is noise.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl Actor for EndpointPoolActor {
    type Msg = EndpointPoolMsg;
    type State = EndpointPoolState;
    type Arguments = Arc<Host>;

    async fn pre_start(
        &self,
        myself: ActorRef<EndpointPoolMsg>,
        host: Arc<Host>,
    ) -> Result<EndpointPoolState, ActorProcessingErr> {
        let sweeper = myself.send_interval(SWEEP_INTERVAL, || EndpointPoolMsg::Sweep);
        Ok(EndpointPoolState {
            host,
            _sweeper: AbortOnDrop(sweeper),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<EndpointPoolMsg>,
        msg: EndpointPoolMsg,
        state: &mut EndpointPoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EndpointPoolMsg::Sweep => {
                state.host.pool.evict_idle(IDLE_TIMEOUT);
            }
            EndpointPoolMsg::Close => {
                state.host.pool.close();
                myself.stop(None);
            }
        }
        Ok(())
    }
}
