//! Deterministic http_logs-shaped documents (as in the Rally track): seeded, so tests and
//! benchmarks can compute exact expectations.

use serde_json::{Value, json};

/// xorshift64*: tiny, fast and reproducible across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const PATHS: [&str; 10] = [
    "/english/index.html",
    "/images/logo.gif",
    "/french/news.html",
    "/english/tickets.html",
    "/images/ball.gif",
    "/english/teams/brazil.html",
    "/cgi-bin/search",
    "/english/history.html",
    "/spanish/index.html",
    "/images/cup.jpg",
];
const METHODS: [&str; 3] = ["GET", "POST", "HEAD"];
const STATUSES: [(u64, u64); 5] = [(200, 80), (304, 10), (404, 5), (206, 3), (500, 2)];

/// One http_logs document; `@timestamp` is epoch seconds increasing by 0–2 s per document.
#[derive(Debug, Clone)]
pub struct LogDoc {
    pub timestamp: i64,
    pub clientip: String,
    pub request: String,
    pub status: u64,
    pub size: u64,
}

impl LogDoc {
    pub fn to_json(&self) -> Value {
        json!({
            "@timestamp": self.timestamp * 1000,
            "clientip": self.clientip,
            "request": self.request,
            "status": self.status,
            "size": self.size,
        })
    }
}

/// `count` documents starting at `start_seconds`.
pub fn generate(seed: u64, count: usize, start_seconds: i64) -> Vec<LogDoc> {
    let mut rng = Rng::new(seed);
    let mut timestamp = start_seconds;
    let mut docs = Vec::with_capacity(count);
    for _ in 0..count {
        timestamp += rng.below(3) as i64;
        let method = METHODS[if rng.below(10) < 9 {
            0
        } else {
            1 + rng.below(2) as usize
        }];
        let path = PATHS[rng.below(PATHS.len() as u64) as usize];
        let mut pick = rng.below(100);
        let mut status = 200;
        for (code, weight) in STATUSES {
            if pick < weight {
                status = code;
                break;
            }
            pick -= weight;
        }
        let size = if status == 304 {
            0
        } else {
            200 + rng.below(20_000)
        };
        let clientip = format!(
            "{}.{}.{}.{}",
            10 + rng.below(200),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        );
        docs.push(LogDoc {
            timestamp,
            clientip,
            request: format!("{method} {path} HTTP/1.0"),
            status,
            size,
        });
    }
    docs
}

/// The mapping Shoal and the raw-tantivy baseline index these documents with.
pub fn mapping() -> Value {
    json!({"properties": {
        "@timestamp": {"type": "date", "format": "epoch_millis"},
        "clientip": {"type": "keyword"},
        "request": {"type": "text"},
        "status": {"type": "integer"},
        "size": {"type": "long"},
    }})
}
