//! Redis limiter throughput: checks per second one at a time, from concurrent tasks (the
//! multiplexed connection pipelines them implicitly), and in explicit pipelines of 64.
//!
//! Starts its own `redis-server` on a free port (killed by PID at the end):
//!
//! ```sh
//! cargo run --release -p weir-flow --example redis_ops
//! ```

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_flow::Rate;
use weir_flow::redis::{Fallback, RedisAlgorithm, RedisConfig, RedisLimiter};

const RUN: Duration = Duration::from_secs(3);

/// Kills the server by PID when dropped, also when a check panics.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = format!("redis://127.0.0.1:{port}");
    for (name, alg) in [
        (
            "gcra",
            RedisAlgorithm::Gcra {
                rate: Rate::per_second(1_000_000),
                burst: 1000,
            },
        ),
        (
            "sliding window",
            RedisAlgorithm::SlidingWindow {
                limit: 1_000_000,
                window: Duration::from_secs(1),
            },
        ),
    ] {
        let cfg = RedisConfig {
            timeout: Duration::from_secs(5),
            fallback: Fallback::FailClosed,
            ..RedisConfig::default()
        };
        let l = RedisLimiter::connect(&url, alg, cfg).await.unwrap();

        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < RUN {
            l.check_redis(&format!("k{}", n % 1000), 1).await.unwrap();
            n += 1;
        }
        let sequential = n as f64 / start.elapsed().as_secs_f64();

        let start = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < RUN {
                        l.check_redis(&format!("k{}", (n + t) % 1000), 1)
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        let concurrent = n as f64 / start.elapsed().as_secs_f64();

        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        let reqs: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < RUN {
            let d = l.check_many(&reqs).await;
            assert_eq!(d.len(), 64);
            n += 64;
        }
        let pipelined = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{name}: sequential {sequential:.0} checks/s, 32 concurrent tasks {concurrent:.0} checks/s, pipelines of 64 {pipelined:.0} checks/s"
        );
    }
}
