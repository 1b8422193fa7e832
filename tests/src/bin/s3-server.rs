//! A real S3-compatible server for the tests: `s3s-fs` (objects as files under a directory)
//! behind `s3s`, which verifies SigV4 signatures against one access key.
//!
//! `s3-server ADDR ROOT ACCESS_KEY SECRET_KEY`; prints `listening on ADDR` once it accepts
//! connections. Buckets are directories under ROOT. SIGUSR1 makes every ranged read wait
//! [`SLOW_READ`] before it is answered (a slow link, so a restore can be watched while it
//! copies); SIGUSR2 makes reads fast again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::{Service, service_fn};
use tokio::signal::unix::{SignalKind, signal};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

const SLOW_READ: Duration = Duration::from_millis(400);

/// Flips `slow` on SIGUSR1 and off on SIGUSR2.
fn follow_signals(slow: Arc<AtomicBool>) -> anyhow::Result<()> {
    for (kind, value) in [
        (SignalKind::user_defined1(), true),
        (SignalKind::user_defined2(), false),
    ] {
        let mut signals = signal(kind)?;
        let slow = slow.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                slow.store(value, Ordering::Relaxed);
            }
        });
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, root, access_key, secret_key] = args.as_slice() else {
        anyhow::bail!("usage: s3-server ADDR ROOT ACCESS_KEY SECRET_KEY");
    };
    let addr: SocketAddr = addr.parse()?;
    let store = s3s_fs::FileSystem::new(root).map_err(|err| anyhow::anyhow!("{err:?}"))?;
    let mut builder = S3ServiceBuilder::new(store);
    builder.set_auth(SimpleAuth::from_single(
        access_key.as_str(),
        secret_key.as_str(),
    ));
    let s3 = builder.build();
    let slow = Arc::new(AtomicBool::new(false));
    follow_signals(slow.clone())?;
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let s3 = s3.clone();
        let delay = (slow.load(Ordering::Relaxed)
            && request.headers().contains_key(hyper::header::RANGE))
        .then_some(SLOW_READ);
        async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Service::call(&s3, request).await
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let http = Builder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let connection = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
