//! A real S3-compatible server for the tests: `s3s-fs` (objects as files under a directory)
//! behind `s3s`, which verifies SigV4 signatures against one access key.
//!
//! `s3-server ADDR ROOT ACCESS_KEY SECRET_KEY`; prints `listening on ADDR` once it accepts
//! connections. Buckets are directories under ROOT.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

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
    let service = builder.build();
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
