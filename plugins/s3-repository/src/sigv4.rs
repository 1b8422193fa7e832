//! AWS Signature Version 4 for S3 requests: the canonical request, the string to sign and
//! the `Authorization` header, as AWS documents them. The host and every `x-amz-*` header are
//! signed; the payload is signed by its SHA-256, so a changed byte fails the request.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::settings::Settings;

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters stay, `/` stays only in
/// paths.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// `(yyyymmdd, yyyymmddThhmmssZ)` of a time in epoch milliseconds (UTC).
pub fn amz_dates(epoch_ms: i64) -> (String, String) {
    let seconds = epoch_ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!(
        "{date}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
    (date, time)
}

/// What is signed about one request.
pub struct Unsigned<'a> {
    /// `host[:port]` the request goes to.
    pub authority: &'a str,
    pub method: &'a str,
    /// The path exactly as sent (already encoded).
    pub path: &'a str,
    /// Query parameters, not encoded.
    pub query: &'a [(String, String)],
    pub payload_sha256: &'a str,
    pub epoch_ms: i64,
}

/// The canonical query string: encoded pairs sorted by name, `name=value` joined by `&`.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(name, value)| (uri_encode(name, false), uri_encode(value, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers to send with the request: `x-amz-date`, `x-amz-content-sha256`, the session
/// token if any, and `authorization` when the repository has credentials.
pub fn sign(settings: &Settings, request: &Unsigned<'_>) -> Vec<(String, String)> {
    let (date, datetime) = amz_dates(request.epoch_ms);
    let mut headers = vec![
        ("host".to_string(), request.authority.to_string()),
        (
            "x-amz-content-sha256".to_string(),
            request.payload_sha256.to_string(),
        ),
        ("x-amz-date".to_string(), datetime.clone()),
    ];
    let Some(credentials) = &settings.credentials else {
        headers.remove(0);
        return headers;
    };
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".to_string(), token.clone()));
    }
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", value.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        request.payload_sha256
    );
    let scope = format!("{date}/{}/s3/aws4_request", settings.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{datetime}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [settings.region.as_str(), "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    // The transport sets `host` from the request's authority.
    headers.retain(|(name, _)| name != "host");
    headers.push((
        "authorization".to_string(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key
        ),
    ));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse;

    /// The example account of AWS's "Signature Calculations for the Authorization Header"
    /// (Amazon S3 API reference), whose published signatures these tests reproduce.
    fn example_settings() -> Settings {
        parse(
            r#"{"endpoint": "https://s3.amazonaws.com", "bucket": "examplebucket",
                "access_key": "AKIAIOSFODNN7EXAMPLE",
                "secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
        )
        .expect("the example settings parse")
    }

    const MAY_24_2013_MS: i64 = 1_369_353_600_000;

    fn authorization(settings: &Settings, query: &[(&str, &str)]) -> String {
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let headers = sign(
            settings,
            &Unsigned {
                authority: &settings.request_authority(),
                method: "GET",
                path: &settings.request_path(None),
                query: &query,
                payload_sha256: &sha256_hex(b""),
                epoch_ms: MAY_24_2013_MS,
            },
        );
        headers
            .into_iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value)
            .expect("signed requests carry an authorization header")
    }

    #[test]
    fn reproduces_the_signatures_aws_publishes() {
        let settings = example_settings();
        assert_eq!(
            settings.request_authority(),
            "examplebucket.s3.amazonaws.com"
        );
        assert_eq!(
            authorization(&settings, &[("lifecycle", "")]),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        assert!(
            authorization(&settings, &[("prefix", "J"), ("max-keys", "2")]).ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "query parameters are signed sorted by name"
        );
    }

    #[test]
    fn a_changed_secret_or_host_changes_the_signature() {
        let settings = example_settings();
        let expected = authorization(&settings, &[("lifecycle", "")]);
        let mut other_secret = settings.clone();
        if let Some(credentials) = &mut other_secret.credentials {
            credentials.secret_key.push('x');
        }
        assert_ne!(authorization(&other_secret, &[("lifecycle", "")]), expected);
        let path_style = Settings {
            path_style: true,
            ..settings
        };
        assert_ne!(authorization(&path_style, &[("lifecycle", "")]), expected);
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(
            amz_dates(MAY_24_2013_MS),
            ("20130524".to_string(), "20130524T000000Z".to_string())
        );
        assert_eq!(
            amz_dates(951_782_400_000 + 3_723_000).1,
            "20000229T010203Z",
            "a leap day"
        );
        assert_eq!(uri_encode("a b/c~d+é", true), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
