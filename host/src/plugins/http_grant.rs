//! Outgoing HTTP for plugins (`wasi:http`), limited to the hosts granted to the instance: an
//! S3 repository reaches its endpoint and nothing else. A plugin granted no host can make no
//! request at all; a refused request fails with `HTTP-request-denied` and is logged with the
//! plugin's name.

use std::future::Future;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The hosts one plugin instance may call, as `host` or `host:port`.
#[derive(Debug, Clone, Default)]
pub struct HttpAllowList {
    pub plugin: String,
    pub hosts: Vec<String>,
}

impl HttpAllowList {
    /// Whether a request to `authority` (`host[:port]`) is granted: an entry with a port must
    /// match exactly; an entry without one allows any port of that host.
    pub fn allows(&self, authority: &str) -> bool {
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(authority, |(host, _)| host);
        self.hosts.iter().any(|granted| {
            granted.eq_ignore_ascii_case(authority) || granted.eq_ignore_ascii_case(host)
        })
    }
}

type Sent = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for HttpAllowList {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Sent,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, Sent), Error>> + Send> {
        let authority = request
            .uri()
            .authority()
            .map(|authority| authority.as_str().to_string())
            .unwrap_or_default();
        if !self.allows(&authority) {
            tracing::warn!(
                plugin = self.plugin.as_str(),
                host = authority,
                "plugin HTTP request denied: host not granted"
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Sent))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_with_or_without_a_port() {
        let list = HttpAllowList {
            plugin: "s3".into(),
            hosts: vec!["127.0.0.1:9000".into(), "s3.example.com".into()],
        };
        assert!(list.allows("127.0.0.1:9000"));
        assert!(!list.allows("127.0.0.1:9001"));
        assert!(list.allows("s3.example.com:443"));
        assert!(list.allows("S3.Example.com"));
        assert!(!list.allows("evil.example.com"));
        assert!(!list.allows(""));
        assert!(!HttpAllowList::default().allows("127.0.0.1:9000"));
    }
}
