//! Transforms: what runs between sources and sinks, one event at a time.
//!
//! A [`Transform`] takes each event and decides its fate through [`Outputs`]: passed on (to
//! its default output or to a named one), sent to the dead-letter output with an error, or
//! dropped by design (acknowledged and counted). The typed operators [`map`], [`filter`] and
//! [`flat_map`] make one from a closure; the VRL transforms are in [`crate::vrl`].

use crate::event::Event;

/// The outputs of one transform call.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Per output port (0 is the default output, then the named ones in declared order).
    pub(crate) ports: Vec<Vec<Event>>,
    /// Events for the dead-letter output, with the error.
    pub(crate) failed: Vec<(Event, String)>,
    /// Events dropped by design since the last take.
    pub(crate) dropped: u64,
}

impl Outputs {
    /// Outputs with `ports` ports (at least the default one).
    pub fn new(ports: usize) -> Self {
        Self {
            ports: (0..ports.max(1)).map(|_| Vec::new()).collect(),
            failed: Vec::new(),
            dropped: 0,
        }
    }

    /// Passes `event` on to the default output.
    pub fn emit(&mut self, event: Event) {
        self.ports[0].push(event);
    }

    /// Passes `event` on to output `port` (as [`Transform::outputs`] numbers them, from 1).
    pub fn emit_to(&mut self, port: usize, event: Event) {
        match self.ports.get_mut(port) {
            Some(p) => p.push(event),
            None => self.fail(event, format!("no output port {port}")),
        }
    }

    /// Sends `event` to the dead-letter output with `error`.
    pub fn fail(&mut self, event: Event, error: impl Into<String>) {
        self.failed.push((event, error.into()));
    }

    /// Drops `event` by design (a filter, a sample): acknowledged and counted.
    pub fn drop_event(&mut self, event: Event) {
        self.dropped += 1;
        event.ack();
    }
}

/// One step of a pipeline. Runs on its own task; `process` is called for each event in order.
pub trait Transform: Send + 'static {
    /// Named outputs besides the default one (a route's routes), in port order from 1.
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Decides the fate of `event`.
    fn process(&mut self, event: Event, out: &mut Outputs);

    /// Whether the runner keeps a copy of each event's record aside, so that an event lost
    /// in a panic still reaches the dead-letter output (the default: a transform written by
    /// a user may panic). The built-in transforms are not meant to panic on any input (VRL
    /// returns its errors), so they skip the copy. Should one panic all the same, its batch's
    /// reads are not acknowledged, the pipeline restarts from its last commit, and from then
    /// on it runs every transform with the copy: the event that panicked, read again, goes
    /// to the dead-letter output alone.
    fn isolate_panics(&self) -> bool {
        true
    }

    /// True for a transform that keeps no state between events and has one output: the
    /// runner may then run it on its source's task (one instance per task sending), which
    /// saves a queue and a thread hop per event.
    fn chainable(&self) -> bool {
        false
    }
}

/// Runs `t` on each event apart: an event whose processing panics goes to the dead-letter
/// output with the panic's message (its record was kept aside for that), the others go on.
pub(crate) fn process_apart(
    t: &mut dyn Transform,
    events: impl IntoIterator<Item = Event>,
    out: &mut Outputs,
) {
    for event in events {
        let spare = (event.record.clone(), event.spare_ack());
        let ran = crate::event::covered(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.process(event, out)))
        });
        match ran {
            Ok(()) => spare.1.ack(),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                let e = Event::new(spare.0, vrl::value::Value::Null, spare.1);
                out.fail(e, format!("the transform panicked: {why}"));
            }
        }
    }
}

/// A transform run without per-event isolation panicked: the pipeline isolates every event
/// from now on (`isolate_all`), and this run fails with the returned error.
pub(crate) fn panicked(
    name: &str,
    isolate_all: &std::sync::atomic::AtomicBool,
) -> crate::pipeline::ComponentError {
    if !isolate_all.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::error!(
            transform = %name,
            "a transform panicked: the pipeline restarts from its last commit and runs each \
             event apart from now on, so that an event that panics goes to the dead-letter output"
        );
    }
    crate::pipeline::ComponentError(format!("transform `{name}` panicked"))
}

impl std::fmt::Debug for dyn Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transform")
    }
}

struct Map<F>(F);
impl<F: FnMut(&mut Event) -> Result<(), String> + Send + 'static> Transform for Map<F> {
    fn process(&mut self, mut event: Event, out: &mut Outputs) {
        match (self.0)(&mut event) {
            Ok(()) => out.emit(event),
            Err(why) => out.fail(event, why),
        }
    }
}

/// A transform that changes each event in place, or fails it (to the dead-letter output)
/// with an error.
pub fn map<F>(f: F) -> impl Transform
where
    F: FnMut(&mut Event) -> Result<(), String> + Send + 'static,
{
    Map(f)
}

struct Filter<F>(F);
impl<F: FnMut(&Event) -> bool + Send + 'static> Transform for Filter<F> {
    fn process(&mut self, event: Event, out: &mut Outputs) {
        if (self.0)(&event) {
            out.emit(event);
        } else {
            out.drop_event(event);
        }
    }
}

/// A transform that keeps the events for which `f` is true and drops the others by design.
pub fn filter<F>(f: F) -> impl Transform
where
    F: FnMut(&Event) -> bool + Send + 'static,
{
    Filter(f)
}

struct FlatMap<F>(F);
impl<F: FnMut(Event, &mut Outputs) + Send + 'static> Transform for FlatMap<F> {
    fn process(&mut self, event: Event, out: &mut Outputs) {
        (self.0)(event, out)
    }
}

/// A transform from a closure that decides each event's fate itself (emit several copies with
/// [`Event::fork`], drop, fail).
pub fn flat_map<F>(f: F) -> impl Transform
where
    F: FnMut(Event, &mut Outputs) + Send + 'static,
{
    FlatMap(f)
}
