//! The Admin actor: serves the admin API on `admin.address`. Requests are answered from the
//! shared server context; commands that change the server (`/quitquitquit`) act through it.

use super::supervision::AbortOnDrop;
use crate::server::ServerContext;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub struct AdminActor;

pub struct AdminState {
    _accept: Option<AbortOnDrop>,
}

impl Actor for AdminActor {
    type Msg = ();
    type State = AdminState;
    type Arguments = Arc<ServerContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        ctx: Arc<ServerContext>,
    ) -> Result<AdminState, ActorProcessingErr> {
        let accept = ctx.admin_socket.clone().map(|socket| {
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    let stream = match socket.accept().await {
                        Ok((s, _)) => s,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(crate::admin::handle(&ctx, req).await) }
                        });
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }))
        });
        Ok(AdminState { _accept: accept })
    }
}
