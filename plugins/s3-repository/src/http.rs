//! One signed S3 request over `wasi:http`, retried with exponential backoff when the service
//! throttles, fails on its side or the connection breaks. The answer is the final response
//! whatever its status; callers decide what a status means for their operation.

use shoal_plugin_sdk::host;
use shoal_plugin_sdk::repository::RepositoryError;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme as WasiScheme,
};
use wasi::io::streams::StreamError;

use crate::settings::{Scheme, Settings};
use crate::sigv4::{self, Unsigned};
use crate::xml;

const MS: u64 = 1_000_000;
const CONNECT_TIMEOUT_NS: u64 = 3_000 * MS;
const FIRST_BYTE_TIMEOUT_NS: u64 = 10_000 * MS;
const BETWEEN_BYTES_TIMEOUT_NS: u64 = 10_000 * MS;
const FIRST_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 2_000;
const READ_BYTES: u64 = 1 << 20;

/// A request on the repository's bucket.
pub struct Request<'a> {
    pub method: Method,
    /// The object key, or `None` for a request on the bucket itself (listing).
    pub key: Option<&'a str>,
    pub query: Vec<(String, String)>,
    /// Headers beyond the signed ones (`range`, `content-type`).
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
    /// The body's SHA-256 when the caller knows it already.
    pub body_sha256: Option<&'a str>,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }

    /// What went wrong, from S3's XML error body when there is one.
    pub fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        match (xml::first(&text, "Code"), xml::first(&text, "Message")) {
            (Some(code), Some(message)) => format!("HTTP {}: {code}: {message}", self.status),
            (Some(code), None) => format!("HTTP {}: {code}", self.status),
            _ => format!("HTTP {}", self.status),
        }
    }

    /// The failure this response stands for, in the repository's terms.
    pub fn error(&self, what: &str) -> RepositoryError {
        let message = format!("{what}: {}", self.describe());
        match self.status {
            404 => RepositoryError::NotFound(message),
            401 | 403 => RepositoryError::AccessDenied(message),
            429 | 500..=599 => RepositoryError::Unavailable(message),
            _ => RepositoryError::Invalid(message),
        }
    }

    fn is_transient(&self) -> bool {
        match self.status {
            429 | 500 | 502 | 503 | 504 => true,
            400 => {
                let text = String::from_utf8_lossy(&self.body);
                matches!(
                    xml::first(&text, "Code").as_deref(),
                    Some("RequestTimeout" | "SlowDown" | "RequestTimeTooSkewed")
                )
            }
            _ => false,
        }
    }
}

enum Attempt {
    Answered(Response),
    Refused(RepositoryError),
    Transient(String),
}

/// SHA-256 of a request body or blob, hashed by the host at native speed (bodies are parts
/// of many megabytes; signing strings stay with `sigv4`).
pub fn sha256_hex(data: &[u8]) -> String {
    let hasher = shoal_plugin_sdk::repository::Sha256::new();
    hasher.update(data);
    hasher.hex_digest()
}

/// Sends `request`, retrying transient failures up to `max_retries` times.
pub fn send(settings: &Settings, request: &Request<'_>) -> Result<Response, RepositoryError> {
    let computed;
    let payload_sha256 = match request.body_sha256 {
        Some(sha) => sha,
        None => {
            computed = sha256_hex(request.body);
            &computed
        }
    };
    let mut backoff_ms = FIRST_BACKOFF_MS;
    let mut attempt = 0;
    loop {
        let reason = match try_once(settings, request, payload_sha256) {
            Attempt::Answered(response) if response.is_transient() => response.describe(),
            Attempt::Answered(response) => return Ok(response),
            Attempt::Refused(err) => return Err(err),
            Attempt::Transient(reason) => reason,
        };
        if attempt >= settings.max_retries {
            return Err(RepositoryError::Unavailable(format!(
                "{} {} failed after {} attempts: {reason}",
                method_name(&request.method),
                request.key.unwrap_or("(bucket)"),
                attempt + 1
            )));
        }
        attempt += 1;
        host::counter_add("retries", 1);
        shoal_plugin_sdk::log::warn(&format!(
            "{} {} failed ({reason}); retry {attempt} of {} in {backoff_ms} ms",
            method_name(&request.method),
            request.key.unwrap_or("(bucket)"),
            settings.max_retries
        ));
        // A little jitter from the clock keeps retrying nodes from moving in step.
        let jitter = host::monotonic_now() % (backoff_ms / 4 + 1);
        wasi::clocks::monotonic_clock::subscribe_duration((backoff_ms + jitter) * MS).block();
        backoff_ms = (backoff_ms * 4).min(MAX_BACKOFF_MS);
    }
}

fn method_name(method: &Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        _ => "OTHER",
    }
}

fn transport_error(code: ErrorCode) -> Attempt {
    match code {
        ErrorCode::HttpRequestDenied => Attempt::Refused(RepositoryError::AccessDenied(
            "the node did not grant this plugin the endpoint's host".into(),
        )),
        other => Attempt::Transient(format!("{other:?}")),
    }
}

fn try_once(settings: &Settings, request: &Request<'_>, payload_sha256: &str) -> Attempt {
    let path = settings.request_path(request.key);
    let authority = settings.request_authority();
    let query = sigv4::canonical_query(&request.query);
    let signed = sigv4::sign(
        settings,
        &Unsigned {
            authority: &authority,
            method: method_name(&request.method),
            path: &path,
            query: &request.query,
            payload_sha256,
            epoch_ms: host::wall_clock_now(),
        },
    );
    let mut headers: Vec<(String, Vec<u8>)> = signed
        .into_iter()
        .chain(request.headers.iter().cloned())
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    // Some services want a length even on an empty DELETE; GET and HEAD carry none.
    if !matches!(request.method, Method::Get | Method::Head) {
        headers.push((
            "content-length".into(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    let fields = match Fields::from_list(&headers) {
        Ok(fields) => fields,
        Err(err) => {
            return Attempt::Refused(RepositoryError::Invalid(format!(
                "bad request header: {err:?}"
            )));
        }
    };
    let outgoing = OutgoingRequest::new(fields);
    let path_with_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let scheme = match settings.scheme {
        Scheme::Http => WasiScheme::Http,
        Scheme::Https => WasiScheme::Https,
    };
    let built = outgoing
        .set_method(&request.method)
        .and_then(|()| outgoing.set_scheme(Some(&scheme)))
        .and_then(|()| outgoing.set_authority(Some(&authority)))
        .and_then(|()| outgoing.set_path_with_query(Some(&path_with_query)));
    if built.is_err() {
        return Attempt::Refused(RepositoryError::Invalid(format!(
            "cannot build a request for [{authority}{path_with_query}]"
        )));
    }
    let Ok(body) = outgoing.body() else {
        return Attempt::Refused(RepositoryError::Invalid("request body taken twice".into()));
    };
    let options = RequestOptions::new();
    // Unsupported timeouts are left to the host's defaults.
    let _ = options.set_connect_timeout(Some(CONNECT_TIMEOUT_NS));
    let _ = options.set_first_byte_timeout(Some(FIRST_BYTE_TIMEOUT_NS));
    let _ = options.set_between_bytes_timeout(Some(BETWEEN_BYTES_TIMEOUT_NS));
    let future = match outgoing_handler::handle(outgoing, Some(options)) {
        Ok(future) => future,
        Err(code) => return transport_error(code),
    };
    // A body write can fail because the service already answered (an early error, or the
    // whole body went through and the request completed before the final flush) or because
    // the connection broke. A response settles it: the service checks the length and the
    // signed SHA-256 of the payload, so a success means the body arrived whole.
    let written = if request.body.is_empty() {
        Ok(())
    } else {
        write_body(&body, request.body)
    };
    let finished = OutgoingBody::finish(body, None);
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return transport_error(code),
        Some(Err(())) | None => return Attempt::Transient("no response".into()),
    };
    match read_response(response, &request.method) {
        Ok(response) => Attempt::Answered(response),
        Err(reason) => match (written, finished) {
            (Err(write_failed), _) => Attempt::Transient(format!("{write_failed}; {reason}")),
            (Ok(()), Err(code)) => transport_error(code),
            (Ok(()), Ok(())) => Attempt::Transient(reason),
        },
    }
}

fn write_body(body: &OutgoingBody, mut data: &[u8]) -> Result<(), String> {
    let stream = body
        .write()
        .map_err(|()| "request body stream taken twice".to_string())?;
    let failed = |err: StreamError| format!("sending the request body: {err:?}");
    while !data.is_empty() {
        let permitted = stream.check_write().map_err(failed)?;
        if permitted == 0 {
            stream.subscribe().block();
            continue;
        }
        let take = data.len().min(permitted as usize);
        stream.write(&data[..take]).map_err(failed)?;
        data = &data[take..];
    }
    stream.blocking_flush().map_err(failed)
}

fn read_response(response: IncomingResponse, method: &Method) -> Result<Response, String> {
    let status = response.status();
    let headers = response.headers().entries();
    let mut body = Vec::new();
    if !matches!(method, Method::Head) {
        let incoming = response
            .consume()
            .map_err(|()| "response body taken twice".to_string())?;
        let stream = incoming
            .stream()
            .map_err(|()| "response body stream taken twice".to_string())?;
        loop {
            match stream.blocking_read(READ_BYTES) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(err) => return Err(format!("reading the response body: {err:?}")),
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
