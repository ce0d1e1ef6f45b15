//! Profiling endpoints, served only when [`HttpConfig::profiling`](crate::HttpConfig) is on:
//!
//! - `GET /debug/pprof/profile?seconds=N&format=pprof|flamegraph`: samples the whole
//!   process's CPU for N seconds (default [`DEFAULT_PROFILE_SECONDS`], at most
//!   [`MAX_PROFILE_SECONDS`]) at [`SAMPLE_HZ`] and answers a gzip-compressed pprof protobuf
//!   (what `go tool pprof` reads) or an SVG flame graph. One profile at a time: the sampler is
//!   process-wide, so a second request meanwhile gets `profile_in_progress`. Shutdown ends a
//!   running profile early, with what was sampled so far.
//! - `GET /debug/heap`: memory as the kernel sees it (`/proc/self/status`: resident, peak
//!   resident, virtual size, threads), the allocator's name and the produce memory budget.
//!
//! Off, both answer 404 `profiling_disabled` with a message saying how to turn them on; they
//! stay in the router and the OpenAPI document either way.
//!
//! The wait runs on the runtime as a timer (`tokio::time::sleep`); building the report
//! (symbolizing the stacks), encoding and compressing run on the blocking pool. The sampler
//! itself is the `pprof` crate's SIGPROF handler: its unsafe code is that crate's, none is here.
//!
//! The allocator's own statistics are not reported: mimalloc exposes them only through unsafe
//! foreign functions (`libmimalloc-sys`), which this workspace forbids, so the figures are
//! the kernel's.

use std::io::Write;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pprof::protos::Message;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AppState, query};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Seconds a profile samples when the request does not say.
pub const DEFAULT_PROFILE_SECONDS: u64 = 10;
/// Longest profile; a request for more is shortened to this.
pub const MAX_PROFILE_SECONDS: u64 = 60;
/// Samples per second of CPU time, per thread. Not 100, so the sampler does not run in
/// lockstep with work that wakes every 10 ms.
pub const SAMPLE_HZ: i32 = 99;

/// Libraries the sampler does not unwind from: unwinding out of a signal taken inside them
/// can deadlock (the unwinder's own locks) or read garbage (the vDSO has no unwind tables).
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// Taken while a profile runs; a second request finds it held and answers 409.
pub type ProfileLock = std::sync::Arc<tokio::sync::Mutex<()>>;

fn ensure_enabled(s: &AppState) -> ApiResult<()> {
    if s.config.profiling {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::ProfilingDisabled,
            "profiling is off; enable /debug/pprof/profile and /debug/heap with \
             [http] profiling = true in the config file or WEIR_HTTP__PROFILING=true",
        ))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProfileFormat {
    /// gzip-compressed pprof protobuf.
    #[default]
    Pprof,
    /// SVG flame graph.
    Flamegraph,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileQuery {
    seconds: Option<u64>,
    #[serde(default)]
    format: ProfileFormat,
}

/// The duration a query asks for: the default when absent, shortened to the maximum, 0 refused.
fn profile_duration(seconds: Option<u64>) -> ApiResult<Duration> {
    match seconds {
        None => Ok(Duration::from_secs(DEFAULT_PROFILE_SECONDS)),
        Some(0) => Err(ApiError::bad_request(format!(
            "seconds must be between 1 and {MAX_PROFILE_SECONDS}"
        ))),
        Some(n) => Ok(Duration::from_secs(n.min(MAX_PROFILE_SECONDS))),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// `GET /debug/pprof/profile`.
pub(crate) async fn profile(
    State(s): State<AppState>,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> ApiResult<Response> {
    ensure_enabled(&s)?;
    let q = query(q)?;
    let duration = profile_duration(q.seconds)?;
    let Ok(running) = s.profile_lock.clone().try_lock_owned() else {
        return Err(ApiError::new(
            ErrorCode::ProfileInProgress,
            "another CPU profile is being taken; retry when it has finished",
        ));
    };
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(SAMPLE_HZ)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| internal("cannot start the CPU profiler", e))?;
    tracing::info!(seconds = duration.as_secs(), "CPU profile started");
    // If the client goes away, this future is dropped with the guard, which stops the sampler.
    // Shutdown cuts the profile short: it answers with what was sampled so far.
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = s.shutdown.cancelled() => {}
    }
    let format = q.format;
    let body = tokio::task::spawn_blocking(move || {
        // Take the raw stacks, then stop sampling (and free the profiler for the next
        // request) before the CPU-heavy symbolizing and encoding.
        let unresolved = guard.report().build_unresolved();
        drop(guard);
        drop(running);
        let unresolved = unresolved.map_err(|e| internal("cannot build the profile", e))?;
        let report = symbolize(unresolved);
        match format {
            ProfileFormat::Pprof => encode_pprof(&report),
            ProfileFormat::Flamegraph => flamegraph(&report, duration),
        }
    })
    .await
    .map_err(|e| internal("the profile task failed", e))??;
    let (content_type, file) = match format {
        ProfileFormat::Pprof => ("application/octet-stream", "profile.pb.gz"),
        ProfileFormat::Flamegraph => ("image/svg+xml", "profile.svg"),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// Names the functions of every sampled stack (distinct addresses may resolve to the same
/// named stack: their counts add up).
fn symbolize(unresolved: pprof::UnresolvedReport) -> pprof::Report {
    let mut data = std::collections::HashMap::new();
    for (frames, count) in unresolved.data {
        *data.entry(pprof::Frames::from(frames)).or_insert(0) += count;
    }
    pprof::Report {
        data,
        timing: unresolved.timing,
    }
}

/// The pprof protobuf, gzip-compressed as `go tool pprof` expects.
fn encode_pprof(report: &pprof::Report) -> ApiResult<Vec<u8>> {
    let profile = report
        .pprof()
        .map_err(|e| internal("cannot encode the profile", e))?;
    let raw = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)
        .and_then(|()| gz.finish())
        .map_err(|e| internal("cannot compress the profile", e))
}

/// An SVG flame graph; a process that used no CPU gets an SVG that says so (the renderer
/// refuses an empty profile).
fn flamegraph(report: &pprof::Report, duration: Duration) -> ApiResult<Vec<u8>> {
    if report.data.is_empty() {
        return Ok(format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
             <text x=\"10\" y=\"25\">no CPU samples in {} s: the process was idle</text></svg>\n",
            duration.as_secs()
        )
        .into_bytes());
    }
    let mut svg = Vec::new();
    report
        .flamegraph(&mut svg)
        .map_err(|e| internal("cannot draw the flame graph", e))?;
    Ok(svg)
}

/// Figures of `/proc/self/status`, in bytes (threads: a count). `None` where the line is
/// missing (or the file: not Linux).
#[derive(Debug, Default, PartialEq, Eq)]
struct ProcStatus {
    rss: Option<u64>,
    peak_rss: Option<u64>,
    virtual_size: Option<u64>,
    threads: Option<u64>,
}

fn parse_proc_status(text: &str) -> ProcStatus {
    let mut out = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut words = value.split_whitespace();
        let Some(n) = words.next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match words.next() {
            Some("kB") => n.saturating_mul(1024),
            _ => n,
        };
        match key {
            "VmRSS" => out.rss = Some(bytes),
            "VmHWM" => out.peak_rss = Some(bytes),
            "VmSize" => out.virtual_size = Some(bytes),
            "Threads" => out.threads = Some(n),
            _ => {}
        }
    }
    out
}

/// `GET /debug/heap`.
pub(crate) async fn heap(State(s): State<AppState>) -> ApiResult<Response> {
    ensure_enabled(&s)?;
    // procfs is generated in memory by the kernel: reading it does not wait on a disk.
    let status = std::fs::read_to_string("/proc/self/status")
        .map(|t| parse_proc_status(&t))
        .unwrap_or_default();
    let memory = s.broker.memory();
    let (total, available) = (memory.total(), memory.available());
    let body: Value = json!({
        "allocator": s.config.allocator,
        "process": {
            "rss_bytes": status.rss,
            "peak_rss_bytes": status.peak_rss,
            "virtual_bytes": status.virtual_size,
            "threads": status.threads,
        },
        "produce_memory": {
            "total_bytes": total,
            "available_bytes": available,
            "in_use_bytes": total.saturating_sub(available),
        },
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    use weir_broker::{Broker, BrokerConfig};

    use super::*;
    use crate::HttpConfig;
    use crate::ws::hub::Hub;

    async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_by_default_then_one_profile_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        })
        .unwrap();
        let hub = Hub::new(broker.clone(), Default::default());
        let off = AppState::new(broker.clone(), HttpConfig::default(), hub.clone());
        let app = crate::api::router(off).into_router();
        for uri in ["/debug/pprof/profile?seconds=1", "/debug/heap"] {
            let (status, body) = get(&app, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(body["error"]["code"], "profiling_disabled", "{uri}");
        }

        let on = AppState::new(
            broker.clone(),
            HttpConfig {
                profiling: true,
                ..HttpConfig::default()
            },
            hub,
        );
        let app = crate::api::router(on.clone()).into_router();
        let (status, body) = get(&app, "/debug/heap").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["allocator"], "system");
        assert!(body["process"]["rss_bytes"].as_u64().unwrap() > 0);
        // A profile holds the lock: another request meanwhile is refused without sampling.
        let held = on.profile_lock.clone().try_lock_owned().unwrap();
        let (status, body) = get(&app, "/debug/pprof/profile?seconds=1").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["code"], "profile_in_progress");
        drop(held);
        let (status, body) = get(&app, "/debug/pprof/profile?format=svg").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        broker.close().await.unwrap();
    }

    #[test]
    fn proc_status_figures_are_read_in_bytes() {
        let text = "Name:\tweir\nVmPeak:\t  200 kB\nVmSize:\t  150 kB\nVmHWM:\t   40 kB\n\
                    VmRSS:\t   30 kB\nThreads:\t7\nSigQ:\t0/1\n";
        assert_eq!(
            parse_proc_status(text),
            ProcStatus {
                rss: Some(30 * 1024),
                peak_rss: Some(40 * 1024),
                virtual_size: Some(150 * 1024),
                threads: Some(7),
            }
        );
        assert_eq!(
            parse_proc_status("garbage\nVmRSS: x kB\n"),
            ProcStatus::default()
        );
    }

    #[test]
    fn durations_default_cap_and_refuse_zero() {
        assert_eq!(
            profile_duration(None).unwrap(),
            Duration::from_secs(DEFAULT_PROFILE_SECONDS)
        );
        assert_eq!(profile_duration(Some(3)).unwrap(), Duration::from_secs(3));
        assert_eq!(
            profile_duration(Some(3600)).unwrap(),
            Duration::from_secs(MAX_PROFILE_SECONDS)
        );
        assert_eq!(
            profile_duration(Some(0)).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }
}
