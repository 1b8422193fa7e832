//! The repository operations on S3: whole and multipart uploads checked against the announced
//! length and SHA-256 before anything becomes visible, ranged reads, listings across pages.

use std::cell::RefCell;
use std::collections::HashMap;

use shoal_plugin_sdk::host;
use shoal_plugin_sdk::repository::{BlobMeta, RepositoryError, RepositoryPlugin, Sha256};
use wasi::http::types::Method;

use crate::http::{self, Request, Response};
use crate::settings::{self, Settings};
use crate::xml;

/// An upload in progress: bytes are hashed as they arrive and sent in parts of
/// `buffer_size`; a blob that fits in one part is sent whole at the end.
struct Upload {
    name: String,
    expected_length: u64,
    expected_sha256: String,
    received: u64,
    hasher: Sha256,
    buffer: Vec<u8>,
    multipart: Option<Multipart>,
}

struct Multipart {
    upload_id: String,
    /// ETags of the parts sent, part `i + 1` at `i`.
    etags: Vec<String>,
}

thread_local! {
    static UPLOADS: RefCell<HashMap<u64, Upload>> = RefCell::new(HashMap::new());
    static NEXT_UPLOAD: RefCell<u64> = const { RefCell::new(1) };
}

/// Blob names are `/`-separated plain components, as on a filesystem repository, so a
/// repository can move between backends.
fn check_name(name: &str) -> Result<(), RepositoryError> {
    let plain = !name.is_empty()
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if plain {
        Ok(())
    } else {
        Err(RepositoryError::Invalid(format!(
            "invalid blob name [{name}]"
        )))
    }
}

fn request<'a>(method: Method, key: Option<&'a str>) -> Request<'a> {
    Request {
        method,
        key,
        query: Vec::new(),
        headers: Vec::new(),
        body: &[],
        body_sha256: None,
    }
}

fn expect_success(response: Response, what: &str) -> Result<Response, RepositoryError> {
    if (200..300).contains(&response.status) {
        Ok(response)
    } else {
        Err(response.error(what))
    }
}

fn put_whole(
    settings: &Settings,
    name: &str,
    data: &[u8],
    sha256: &str,
) -> Result<(), RepositoryError> {
    let key = settings.key(name);
    let response = http::send(
        settings,
        &Request {
            body: data,
            body_sha256: Some(sha256),
            ..request(Method::Put, Some(&key))
        },
    )?;
    expect_success(response, &format!("uploading blob [{name}]")).map(drop)
}

fn start_multipart(settings: &Settings, name: &str) -> Result<Multipart, RepositoryError> {
    let key = settings.key(name);
    let response = http::send(
        settings,
        &Request {
            query: vec![("uploads".into(), String::new())],
            ..request(Method::Post, Some(&key))
        },
    )?;
    let response = expect_success(response, &format!("starting the upload of blob [{name}]"))?;
    let upload_id = xml::first(&String::from_utf8_lossy(&response.body), "UploadId")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            RepositoryError::Unavailable(format!(
                "starting the upload of blob [{name}]: no UploadId in the answer"
            ))
        })?;
    Ok(Multipart {
        upload_id,
        etags: Vec::new(),
    })
}

fn send_part(
    settings: &Settings,
    name: &str,
    multipart: &mut Multipart,
    data: &[u8],
) -> Result<(), RepositoryError> {
    let key = settings.key(name);
    let number = multipart.etags.len() + 1;
    let response = http::send(
        settings,
        &Request {
            query: vec![
                ("partNumber".into(), number.to_string()),
                ("uploadId".into(), multipart.upload_id.clone()),
            ],
            body: data,
            ..request(Method::Put, Some(&key))
        },
    )?;
    let what = format!("uploading part {number} of blob [{name}]");
    let response = expect_success(response, &what)?;
    let etag = response
        .header("etag")
        .ok_or_else(|| RepositoryError::Unavailable(format!("{what}: no ETag in the answer")))?;
    multipart.etags.push(etag);
    Ok(())
}

fn complete_multipart(
    settings: &Settings,
    name: &str,
    multipart: &Multipart,
) -> Result<(), RepositoryError> {
    let key = settings.key(name);
    let mut body = String::from("<CompleteMultipartUpload>");
    for (index, etag) in multipart.etags.iter().enumerate() {
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            index + 1,
            xml::escape(etag)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let response = http::send(
        settings,
        &Request {
            query: vec![("uploadId".into(), multipart.upload_id.clone())],
            headers: vec![("content-type".into(), "application/xml".into())],
            body: body.as_bytes(),
            ..request(Method::Post, Some(&key))
        },
    )?;
    let what = format!("completing the upload of blob [{name}]");
    let response = expect_success(response, &what)?;
    // S3 may answer 200 and report a failure in the body.
    if String::from_utf8_lossy(&response.body).contains("<Error>") {
        return Err(RepositoryError::Unavailable(format!(
            "{what}: {}",
            response.describe()
        )));
    }
    host::counter_add("multipart_uploads", 1);
    Ok(())
}

/// Abandons a multipart upload so its parts stop costing storage; best effort, since a
/// failure here leaves only invisible parts (which bucket lifecycle rules also clean).
fn abort_multipart(settings: &Settings, name: &str, multipart: &Multipart) {
    let key = settings.key(name);
    let outcome = http::send(
        settings,
        &Request {
            query: vec![("uploadId".into(), multipart.upload_id.clone())],
            ..request(Method::Delete, Some(&key))
        },
    );
    if !matches!(outcome, Ok(ref response) if (200..300).contains(&response.status)) {
        shoal_plugin_sdk::log::warn(&format!(
            "could not abort the multipart upload of blob [{name}]; its parts stay until the bucket cleans them"
        ));
    }
}

/// Room for one part plus the largest chunk the host sends (4 MiB) and some, reserved up
/// front: a buffer left to grow by doubling could overshoot the plugin's memory limit.
const CHUNK_HEADROOM: u64 = 8 << 20;

fn start(name: String, expected_length: u64, sha256: String) -> Result<u64, RepositoryError> {
    let settings = settings::current()?;
    check_name(&name)?;
    let id = NEXT_UPLOAD.with(|next| {
        let mut next = next.borrow_mut();
        let id = *next;
        *next += 1;
        id
    });
    let upload = Upload {
        name,
        expected_length,
        expected_sha256: sha256.to_ascii_lowercase(),
        received: 0,
        hasher: Sha256::new(),
        buffer: Vec::with_capacity(
            expected_length.min(settings.part_bytes + CHUNK_HEADROOM) as usize
        ),
        multipart: None,
    };
    UPLOADS.with(|uploads| uploads.borrow_mut().insert(id, upload));
    Ok(id)
}

fn take_upload(id: u64) -> Result<Upload, RepositoryError> {
    UPLOADS
        .with(|uploads| uploads.borrow_mut().remove(&id))
        .ok_or_else(|| RepositoryError::Invalid(format!("no upload [{id}] in progress")))
}

/// Sends every full part the buffer holds.
fn send_full_parts(settings: &Settings, upload: &mut Upload) -> Result<(), RepositoryError> {
    let part = settings.part_bytes as usize;
    while upload.buffer.len() >= part {
        let multipart = match upload.multipart.as_mut() {
            Some(multipart) => multipart,
            None => upload
                .multipart
                .insert(start_multipart(settings, &upload.name)?),
        };
        send_part(settings, &upload.name, multipart, &upload.buffer[..part])?;
        upload.buffer.drain(..part);
    }
    Ok(())
}

fn chunk(id: u64, data: &[u8]) -> Result<(), RepositoryError> {
    let settings = settings::current()?;
    // Held outside the table while parts are sent; put back only if all went well.
    let mut upload = take_upload(id)?;
    upload.received += data.len() as u64;
    if upload.received > upload.expected_length {
        let err = RepositoryError::Invalid(format!(
            "blob [{}] is longer than the announced {} bytes",
            upload.name, upload.expected_length
        ));
        return abandon(settings, upload, err);
    }
    upload.hasher.update(data);
    upload.buffer.extend_from_slice(data);
    if let Err(err) = send_full_parts(settings, &mut upload) {
        return abandon(settings, upload, err);
    }
    UPLOADS.with(|uploads| uploads.borrow_mut().insert(id, upload));
    Ok(())
}

fn abandon<T>(
    settings: &Settings,
    upload: Upload,
    err: RepositoryError,
) -> Result<T, RepositoryError> {
    if let Some(multipart) = &upload.multipart {
        abort_multipart(settings, &upload.name, multipart);
    }
    Err(err)
}

fn finish(id: u64) -> Result<(), RepositoryError> {
    let settings = settings::current()?;
    let mut upload = take_upload(id)?;
    if upload.received != upload.expected_length {
        let err = RepositoryError::Invalid(format!(
            "blob [{}] has {} bytes, {} were announced",
            upload.name, upload.received, upload.expected_length
        ));
        return abandon(settings, upload, err);
    }
    let actual = upload.hasher.hex_digest();
    if actual != upload.expected_sha256 {
        let err = RepositoryError::Invalid(format!(
            "blob [{}] has SHA-256 {actual}, {} was announced",
            upload.name, upload.expected_sha256
        ));
        return abandon(settings, upload, err);
    }
    let Some(mut multipart) = upload.multipart.take() else {
        return put_whole(settings, &upload.name, &upload.buffer, &actual);
    };
    let sent = if upload.buffer.is_empty() {
        Ok(())
    } else {
        send_part(settings, &upload.name, &mut multipart, &upload.buffer)
    }
    .and_then(|()| complete_multipart(settings, &upload.name, &multipart));
    if sent.is_err() {
        abort_multipart(settings, &upload.name, &multipart);
    }
    sent
}

fn list(settings: &Settings, prefix: &str) -> Result<Vec<BlobMeta>, RepositoryError> {
    let key_prefix = if prefix.is_empty() && !settings.base_path.is_empty() {
        format!("{}/", settings.base_path)
    } else {
        settings.key(prefix)
    };
    let mut blobs = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut query = vec![
            ("list-type".to_string(), "2".to_string()),
            ("prefix".to_string(), key_prefix.clone()),
        ];
        if let Some(token) = &continuation {
            query.push(("continuation-token".to_string(), token.clone()));
        }
        let response = http::send(
            settings,
            &Request {
                query,
                ..request(Method::Get, None)
            },
        )?;
        let response = expect_success(response, &format!("listing blobs under [{prefix}]"))?;
        let text = String::from_utf8_lossy(&response.body);
        for entry in xml::blocks(&text, "Contents") {
            let (Some(key), Some(size)) = (xml::first(entry, "Key"), xml::first(entry, "Size"))
            else {
                continue;
            };
            blobs.push(BlobMeta {
                name: settings.blob_name(&key).to_string(),
                size: size.parse().unwrap_or(0),
            });
        }
        let truncated = xml::first(&text, "IsTruncated").as_deref() == Some("true");
        continuation = xml::first(&text, "NextContinuationToken");
        if !truncated || continuation.is_none() {
            break;
        }
    }
    blobs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(blobs)
}

/// The S3 repository.
pub struct S3Repository;

impl RepositoryPlugin for S3Repository {
    fn put_start(
        name: String,
        expected_length: u64,
        sha256_hex: String,
    ) -> Result<u64, RepositoryError> {
        start(name, expected_length, sha256_hex)
    }

    fn put_chunk(upload: u64, data: Vec<u8>) -> Result<(), RepositoryError> {
        chunk(upload, &data)
    }

    fn put_finish(upload: u64) -> Result<(), RepositoryError> {
        finish(upload)
    }

    fn put(name: String, data: Vec<u8>, sha256_hex: String) -> Result<(), RepositoryError> {
        let settings = settings::current()?;
        check_name(&name)?;
        let actual = crate::http::sha256_hex(&data);
        if !actual.eq_ignore_ascii_case(&sha256_hex) {
            return Err(RepositoryError::Invalid(format!(
                "blob [{name}] has SHA-256 {actual}, {sha256_hex} was announced"
            )));
        }
        put_whole(settings, &name, &data, &actual)
    }

    fn get(name: String, offset: u64, length: Option<u64>) -> Result<Vec<u8>, RepositoryError> {
        let settings = settings::current()?;
        check_name(&name)?;
        let range = match length {
            Some(0) => return Ok(Vec::new()),
            Some(length) => Some(format!(
                "bytes={offset}-{}",
                offset.saturating_add(length - 1)
            )),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        let key = settings.key(&name);
        let response = http::send(
            settings,
            &Request {
                headers: range.into_iter().map(|r| ("range".into(), r)).collect(),
                ..request(Method::Get, Some(&key))
            },
        )?;
        match response.status {
            200 | 206 => Ok(response.body),
            // A range starting at or past the end: nothing to read, as on a file.
            416 => Ok(Vec::new()),
            _ => Err(response.error(&format!("reading blob [{name}]"))),
        }
    }

    fn exists(name: String) -> Result<bool, RepositoryError> {
        let settings = settings::current()?;
        check_name(&name)?;
        let key = settings.key(&name);
        let response = http::send(settings, &request(Method::Head, Some(&key)))?;
        match response.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(response.error(&format!("checking blob [{name}]"))),
        }
    }

    fn list_blobs(prefix: String) -> Result<Vec<BlobMeta>, RepositoryError> {
        list(settings::current()?, &prefix)
    }

    fn delete(name: String) -> Result<(), RepositoryError> {
        let settings = settings::current()?;
        check_name(&name)?;
        let key = settings.key(&name);
        let response = http::send(settings, &request(Method::Delete, Some(&key)))?;
        match response.status {
            200..=299 | 404 => Ok(()),
            _ => Err(response.error(&format!("deleting blob [{name}]"))),
        }
    }

    fn verify() -> Result<(), RepositoryError> {
        shoal_plugin_sdk::repository::verify_by_round_trip::<Self>()
    }
}
