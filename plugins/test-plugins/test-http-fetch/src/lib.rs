//! A repository plugin whose `get(name)` fetches the URL `name` over `wasi:http`, to test the
//! host's HTTP grants: a granted host answers, any other is refused as access-denied.

use shoal_plugin_sdk::repository::{BlobMeta, RepositoryError, RepositoryPlugin};
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

fn refused(code: ErrorCode) -> RepositoryError {
    match code {
        ErrorCode::HttpRequestDenied => {
            RepositoryError::AccessDenied("the host refused the request".into())
        }
        other => RepositoryError::Unavailable(format!("{other:?}")),
    }
}

fn fetch(url: &str) -> Result<Vec<u8>, RepositoryError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| RepositoryError::Invalid(format!("not an http URL: {url}")))?;
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_string()),
    };
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |_| RepositoryError::Invalid(format!("bad URL parts in {url}"));
    request.set_method(&Method::Get).map_err(invalid)?;
    request.set_scheme(Some(&Scheme::Http)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(&path)).map_err(invalid)?;
    let future = outgoing_handler::handle(request, None).map_err(refused)?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or_else(|| RepositoryError::Unavailable("no response".into()))?
        .map_err(|()| RepositoryError::Unavailable("response taken twice".into()))?
        .map_err(refused)?;
    let body = response
        .consume()
        .map_err(|()| RepositoryError::Unavailable("no body".into()))?;
    let stream = body
        .stream()
        .map_err(|()| RepositoryError::Unavailable("no body stream".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => out.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(err) => {
                return Err(RepositoryError::Unavailable(format!(
                    "reading the body: {err:?}"
                )));
            }
        }
    }
    Ok(out)
}

struct HttpFetch;

fn unsupported<T>() -> Result<T, RepositoryError> {
    Err(RepositoryError::Invalid(
        "this test plugin only implements get".into(),
    ))
}

impl RepositoryPlugin for HttpFetch {
    fn put_start(_: String, _: u64, _: String) -> Result<u64, RepositoryError> {
        unsupported()
    }
    fn put_chunk(_: u64, _: Vec<u8>) -> Result<(), RepositoryError> {
        unsupported()
    }
    fn put_finish(_: u64) -> Result<(), RepositoryError> {
        unsupported()
    }
    fn put(_: String, _: Vec<u8>, _: String) -> Result<(), RepositoryError> {
        unsupported()
    }
    fn get(name: String, _: u64, _: Option<u64>) -> Result<Vec<u8>, RepositoryError> {
        fetch(&name)
    }
    fn exists(_: String) -> Result<bool, RepositoryError> {
        unsupported()
    }
    fn list_blobs(_: String) -> Result<Vec<BlobMeta>, RepositoryError> {
        unsupported()
    }
    fn delete(_: String) -> Result<(), RepositoryError> {
        unsupported()
    }
    fn verify() -> Result<(), RepositoryError> {
        unsupported()
    }
}

shoal_plugin_sdk::export_repository_plugin!(HttpFetch);
