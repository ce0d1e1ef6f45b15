//! The VRL transforms: `remap`, `filter` and `route`, on the published `vrl` crate (Vector's
//! own compiler and runtime, so Vector programs run unchanged).
//!
//! Programs are compiled when the pipeline is built; a compile error is VRL's own report,
//! with line and column. Each running transform owns its `Runtime`.
//!
//! The event is VRL's target: `.` is the decoded value; metadata (`%`) holds the record's
//! `key`, `headers`, `timestamp` (ms since the epoch) and, read-only, where it came from
//! (`topic`, `partition`, `offset`). A program that sets `%key`, `%headers` or `%timestamp`
//! changes the record a sink writes. Metadata is built only for programs that use it.

use std::sync::Arc;

use bytes::Bytes;
use vrl::compiler::runtime::{Runtime, Terminate};
use vrl::compiler::state::RuntimeState;
use vrl::compiler::{Function, Program, TargetValueRef, TimeZone};
use vrl::diagnostic::Formatter;
use vrl::path::PathPrefix;
use vrl::value::{ObjectMap, Secrets, Value};

use crate::event::{Event, Record};
use crate::transform::{Outputs, Transform};

/// A VRL program that did not compile: VRL's report, with line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

fn functions() -> &'static [Box<dyn Function>] {
    static FNS: std::sync::OnceLock<Vec<Box<dyn Function>>> = std::sync::OnceLock::new();
    FNS.get_or_init(vrl::stdlib::all)
}

/// A compiled program, shared by the tasks that run it.
#[derive(Debug, Clone)]
pub struct Compiled {
    program: Arc<Program>,
    metadata: bool,
}

/// Compiles `source`.
pub fn compile(source: &str) -> Result<Compiled, CompileError> {
    let result = vrl::compiler::compile(source, functions())
        .map_err(|diagnostics| CompileError(Formatter::new(source, diagnostics).to_string()))?;
    let info = result.program.info();
    let metadata = info
        .target_queries
        .iter()
        .chain(&info.target_assignments)
        .any(|p| p.prefix == PathPrefix::Metadata);
    Ok(Compiled {
        program: Arc::new(result.program),
        metadata,
    })
}

/// Compiles a condition: a program whose result is a boolean.
pub fn compile_condition(source: &str) -> Result<Compiled, CompileError> {
    let c = compile(source)?;
    if !c.program.final_type_info().result.kind().is_boolean() {
        return Err(CompileError(format!(
            "the condition `{}` must return a boolean, but it can return {}; compare \
             explicitly, or add `?? false` to a fallible expression",
            source.trim(),
            c.program.final_type_info().result.kind()
        )));
    }
    Ok(c)
}

/// What a program did with an event.
enum Ran {
    /// It finished with this value.
    Done(Value),
    /// It called `abort`.
    Aborted,
    /// It failed at runtime.
    Failed(String),
}

/// Runs programs on events, with one VRL runtime.
struct Runner {
    runtime: Runtime,
}

impl Runner {
    fn new() -> Self {
        Self {
            runtime: Runtime::new(RuntimeState::default()),
        }
    }

    fn run(&mut self, c: &Compiled, event: &mut Event) -> Ran {
        let mut metadata = if c.metadata {
            metadata_of(&event.record)
        } else {
            Value::Object(ObjectMap::new())
        };
        let mut secrets = Secrets::default();
        let mut target = TargetValueRef {
            value: &mut event.value,
            metadata: &mut metadata,
            secrets: &mut secrets,
        };
        let result = self
            .runtime
            .resolve(&mut target, &c.program, &TimeZone::default());
        self.runtime.clear();
        let ran = match result {
            Ok(v) => Ran::Done(v),
            Err(Terminate::Abort(_)) => Ran::Aborted,
            Err(Terminate::Error(e)) => Ran::Failed(e.to_string()),
            Err(Terminate::Interrupted) => Ran::Failed("interrupted".into()),
        };
        if c.metadata
            && let Err(e) = apply_metadata(&mut event.record, metadata)
        {
            return Ran::Failed(e);
        }
        ran
    }
}

fn metadata_of(r: &Record) -> Value {
    let mut m = ObjectMap::new();
    m.insert(
        "key".into(),
        r.key.clone().map_or(Value::Null, Value::Bytes),
    );
    let headers: ObjectMap = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().into(), Value::Bytes(v.clone())))
        .collect();
    m.insert("headers".into(), Value::Object(headers));
    m.insert("timestamp".into(), Value::Integer(r.timestamp));
    if let Some(o) = &r.origin {
        m.insert("topic".into(), Value::from(&*o.stream));
        m.insert("partition".into(), Value::Integer(i64::from(o.partition)));
        m.insert("offset".into(), Value::Integer(o.offset as i64));
    }
    Value::Object(m)
}

fn apply_metadata(r: &mut Record, metadata: Value) -> Result<(), String> {
    let Value::Object(mut m) = metadata else {
        return Err("metadata must stay an object".into());
    };
    r.key = match m.remove("key") {
        None | Some(Value::Null) => None,
        Some(Value::Bytes(b)) => Some(b),
        Some(Value::String(t)) => Some(t.as_bytes().clone()),
        Some(v) => Some(Bytes::from(v.to_string())),
    };
    r.headers = match m.remove("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Bytes(b) => b,
                    Value::String(t) => t.as_bytes().clone(),
                    other => Bytes::from(other.to_string()),
                };
                (k.into(), v)
            })
            .collect(),
        Some(_) => return Err("%headers must be an object of strings".into()),
    };
    r.timestamp = match m.remove("timestamp") {
        None => r.timestamp,
        Some(Value::Integer(ms)) => ms,
        Some(Value::Timestamp(t)) => t.timestamp_millis(),
        Some(_) => {
            return Err("%timestamp must be an integer (ms since the epoch) or a timestamp".into());
        }
    };
    Ok(())
}

/// `remap`: a program that reshapes each event. `abort` drops the event by design; a runtime
/// error sends the event to the dead-letter output with VRL's message.
#[derive(Debug)]
pub struct Remap {
    program: Compiled,
    runner: Runner,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runner")
    }
}

impl Remap {
    pub fn new(program: Compiled) -> Self {
        Self {
            program,
            runner: Runner::new(),
        }
    }
}

impl Transform for Remap {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn chainable(&self) -> bool {
        true
    }

    fn process(&mut self, mut event: Event, out: &mut Outputs) {
        match self.runner.run(&self.program, &mut event) {
            Ran::Done(_) => out.emit(event),
            Ran::Aborted => out.drop_event(event),
            Ran::Failed(e) => out.fail(event, e),
        }
    }
}

/// `filter`: keeps the events whose condition is true, drops the others by design.
#[derive(Debug)]
pub struct Filter {
    condition: Compiled,
    runner: Runner,
}

impl Filter {
    pub fn new(condition: Compiled) -> Self {
        Self {
            condition,
            runner: Runner::new(),
        }
    }
}

impl Transform for Filter {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn chainable(&self) -> bool {
        true
    }

    fn process(&mut self, mut event: Event, out: &mut Outputs) {
        match self.runner.run(&self.condition, &mut event) {
            Ran::Done(Value::Boolean(true)) => out.emit(event),
            Ran::Done(_) | Ran::Aborted => out.drop_event(event),
            Ran::Failed(e) => out.fail(event, e),
        }
    }
}

/// `route`: each named route gets the events its condition holds for (a copy each when
/// several hold); the default output (`NAME._unmatched`) gets those no condition holds for.
#[derive(Debug)]
pub struct Route {
    routes: Vec<(String, Compiled)>,
    runner: Runner,
}

impl Route {
    pub fn new(routes: Vec<(String, Compiled)>) -> Self {
        Self {
            routes,
            runner: Runner::new(),
        }
    }
}

/// The name of a route's output for events no condition holds for (Vector's).
pub const UNMATCHED: &str = "_unmatched";

impl Transform for Route {
    fn isolate_panics(&self) -> bool {
        false
    }

    fn outputs(&self) -> Vec<String> {
        self.routes.iter().map(|(n, _)| n.clone()).collect()
    }

    fn process(&mut self, mut event: Event, out: &mut Outputs) {
        let mut hits = Vec::new();
        for (i, (_, c)) in self.routes.iter().enumerate() {
            match self.runner.run(c, &mut event) {
                Ran::Done(Value::Boolean(true)) => hits.push(i + 1),
                Ran::Done(_) | Ran::Aborted => {}
                Ran::Failed(e) => return out.fail(event, e),
            }
        }
        match hits.split_last() {
            None => out.emit(event),
            Some((last, rest)) => {
                for port in rest {
                    out.emit_to(*port, event.fork());
                }
                out.emit_to(*last, event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn run(t: &mut dyn Transform, v: &str) -> Outputs {
        let mut out = Outputs::new(1 + t.outputs().len());
        t.process(Event::detached(json(v)), &mut out);
        out
    }

    #[test]
    fn a_compile_error_names_line_and_column() {
        let e = compile(".a = 1\n.b = upcase(.c").unwrap_err();
        assert!(e.0.contains(":2:"), "{e}");
        let e = compile(".a = nosuchfn(1)").unwrap_err();
        assert!(e.0.contains("nosuchfn"), "{e}");
        let e = compile_condition(".a").unwrap_err();
        assert!(e.0.contains("must return a boolean"), "{e}");
    }

    #[test]
    fn remap_reshapes_drops_on_abort_and_fails_on_error() {
        let mut r = Remap::new(
            compile(
                r#".user_id = del(.user)
                   .amount = to_float!(.amount)
                   if .amount < 0.0 { abort }"#,
            )
            .unwrap(),
        );
        let out = run(&mut r, r#"{"user":"u1","amount":"12.5"}"#);
        assert_eq!(
            out.ports[0][0].value,
            json(r#"{"user_id":"u1","amount":12.5}"#)
        );
        let out = run(&mut r, r#"{"user":"u1","amount":"-1"}"#);
        assert_eq!((out.ports[0].len(), out.dropped), (0, 1));
        let out = run(&mut r, r#"{"user":"u1","amount":"lots"}"#);
        assert_eq!(out.failed.len(), 1);
        assert!(out.failed[0].1.contains("to_float"), "{}", out.failed[0].1);
    }

    #[test]
    fn metadata_reads_and_sets_the_record() {
        let mut r = Remap::new(
            compile(
                r#"%key = .id
                   %headers.source = "weir"
                   .was = %timestamp"#,
            )
            .unwrap(),
        );
        let mut e = Event::detached(json(r#"{"id":"k1"}"#));
        e.record.timestamp = 1234;
        let mut out = Outputs::new(1);
        r.process(e, &mut out);
        let e = &out.ports[0][0];
        assert_eq!(e.record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(
            e.record.header("source").map(|b| &b[..]),
            Some(&b"weir"[..])
        );
        assert_eq!(e.value, json(r#"{"id":"k1","was":1234}"#));
    }

    /// Programs in the style of Vector's remap documentation (parsing log lines with the
    /// standard library, reshaping, coalescing errors) run as Vector runs them.
    #[test]
    fn vector_style_programs_run_unchanged() {
        let cases = [
            (
                r#"{"message":"<13>1 2020-03-13T20:45:38.119Z dynamicwireless.name non 2426 ID931 - Try to override the THX port"}"#,
                r#". = parse_syslog!(.message)
                   .severity = .severity
                   del(.version)"#,
                r#"{"appname":"non","facility":"user","hostname":"dynamicwireless.name","message":"Try to override the THX port","msgid":"ID931","procid":2426,"severity":"notice","timestamp":"2020-03-13T20:45:38.119Z"}"#,
            ),
            (
                r#"{"message":"level=info msg=\"stopping\" code=7"}"#,
                r#". = parse_key_value!(.message)
                   .code = to_int!(.code)"#,
                r#"{"code":7,"level":"info","msg":"stopping"}"#,
            ),
            (
                r#"{"message":"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] \"GET /apache_pb.gif HTTP/1.0\" 200 2326"}"#,
                r#"parsed, err = parse_common_log(.message)
                   if err == null { . = parsed; .ok = true } else { .ok = false }
                   .timestamp = format_timestamp!(.timestamp, "%Y-%m-%d")"#,
                r#"{"host":"127.0.0.1","message":"GET /apache_pb.gif HTTP/1.0","method":"GET","ok":true,"path":"/apache_pb.gif","protocol":"HTTP/1.0","size":2326,"status":200,"timestamp":"2000-10-10","user":"frank"}"#,
            ),
            (
                r#"{"user":{"name":"Ada","email":"ADA@EXAMPLE.COM"},"tags":["a","b"]}"#,
                r#".user.email = downcase(string!(.user.email))
                   .tag_count = length!(.tags)
                   .name = del(.user.name)
                   .host = if exists(.hostname) { .hostname } else { "unknown" }"#,
                r#"{"host":"unknown","name":"Ada","tag_count":2,"tags":["a","b"],"user":{"email":"ada@example.com"}}"#,
            ),
        ];
        for (input, program, expect) in cases {
            let mut r = Remap::new(compile(program).unwrap_or_else(|e| panic!("{program}: {e}")));
            let out = run(&mut r, input);
            assert!(out.failed.is_empty(), "{program}: {:?}", out.failed);
            let got = serde_json::to_string(&out.ports[0][0].value).unwrap();
            assert_eq!(got, expect, "{program}");
        }
    }

    #[test]
    fn route_copies_to_every_match_and_keeps_the_unmatched() {
        let mut r = Route::new(vec![
            ("big".into(), compile_condition(".n > 10 ?? false").unwrap()),
            (
                "even".into(),
                compile_condition("mod(int!(.n), 2) == 0").unwrap(),
            ),
        ]);
        let out = run(&mut r, r#"{"n":12}"#);
        assert_eq!(
            out.ports.iter().map(Vec::len).collect::<Vec<_>>(),
            [0, 1, 1]
        );
        let out = run(&mut r, r#"{"n":3}"#);
        assert_eq!(
            out.ports.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 0, 0]
        );
        let mut f = Filter::new(compile_condition(".n > 10 ?? false").unwrap());
        assert_eq!(run(&mut f, r#"{"n":3}"#).dropped, 1);
        assert_eq!(run(&mut f, r#"{"n":30}"#).ports[0].len(), 1);
    }
}
