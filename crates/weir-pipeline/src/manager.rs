//! The pipelines a server runs: started with it, stopped, started and reloaded one at a time
//! while it runs (`POST /pipelines/NAME/stop|start|reload`), all stopped at its shutdown.
//!
//! A reload reads the declarations again and checks the new one before it touches the
//! running pipeline: an invalid declaration leaves the old one running. The new pipeline
//! starts from what the old one committed (its consumer groups keep their offsets).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Declaration, Host};
use crate::pipeline::{ComponentView, Pipeline, Status};

/// Reads the declarations again (for a reload).
pub type Loader = Box<dyn Fn() -> Result<Vec<Declaration>, String> + Send + Sync>;

/// Why a management request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManageError {
    #[error("no pipeline named `{0}`")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

struct Entry {
    declaration: Declaration,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// One pipeline as `GET /pipelines` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    #[serde(flatten)]
    pub status: Status,
}

/// One pipeline in detail.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    pub name: String,
    #[serde(flatten)]
    pub status: Status,
    pub components: Vec<ComponentView>,
}

/// The server's pipelines.
pub struct Manager {
    host: Host,
    load: Loader,
    entries: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    /// Built pipelines by name, for the lock-free reads of the HTTP door.
    view: Mutex<BTreeMap<String, Pipeline>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("pipelines", &self.view.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Manager {
    /// Builds every declaration onto `host` (all or none) and starts them.
    pub async fn start(
        host: Host,
        declarations: Vec<Declaration>,
        load: Loader,
    ) -> Result<Arc<Self>, config::ConfigError> {
        let mut built = Vec::new();
        for d in declarations {
            let p = config::build(&d, &host)?;
            built.push((d, p));
        }
        let me = Arc::new(Self {
            host,
            load,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            view: Mutex::new(BTreeMap::new()),
        });
        {
            let mut entries = me.entries.lock().await;
            for (d, p) in built {
                tracing::info!(pipeline = %p.name(), "starting pipeline");
                let e = me.launch(d, p);
                entries.insert(e.declaration.name.clone(), e);
            }
        }
        Ok(me)
    }

    fn launch(&self, declaration: Declaration, pipeline: Pipeline) -> Entry {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (p, stop) = (pipeline.clone(), stop.clone());
            async move { p.run(stop).await }
        });
        self.view
            .lock()
            .insert(declaration.name.clone(), pipeline.clone());
        Entry {
            declaration,
            stop,
            task: Some(task),
        }
    }

    /// Every pipeline and its state.
    pub fn list(&self) -> Vec<Summary> {
        self.view
            .lock()
            .iter()
            .map(|(name, p)| Summary {
                name: name.clone(),
                status: p.status(),
            })
            .collect()
    }

    /// One pipeline, with its components.
    pub fn describe(&self, name: &str) -> Option<Detail> {
        let p = self.view.lock().get(name).cloned()?;
        Some(Detail {
            name: name.to_string(),
            status: p.status(),
            components: p.components(),
        })
    }

    /// The running pipeline called `name`.
    pub fn get(&self, name: &str) -> Option<Pipeline> {
        self.view.lock().get(name).cloned()
    }

    /// Stops a pipeline: its sources stop reading, what they read drains (up to its grace
    /// period), positions are committed. Stopping a stopped pipeline does nothing.
    pub async fn stop(&self, name: &str) -> Result<(), ManageError> {
        let mut entries = self.entries.lock().await;
        let e = entries
            .get_mut(name)
            .ok_or_else(|| ManageError::Unknown(name.into()))?;
        stop_entry(e).await;
        Ok(())
    }

    /// Starts a stopped pipeline again (from its declaration as last loaded). Starting a
    /// running pipeline does nothing.
    pub async fn start_one(&self, name: &str) -> Result<(), ManageError> {
        let mut entries = self.entries.lock().await;
        let e = entries
            .get_mut(name)
            .ok_or_else(|| ManageError::Unknown(name.into()))?;
        if e.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let p = config::build(&e.declaration, &self.host)
            .map_err(|err| ManageError::Invalid(err.to_string()))?;
        let fresh = self.launch(e.declaration.clone(), p);
        *e = fresh;
        Ok(())
    }

    /// Reads the declarations again and replaces `name` with its new one: checked first (an
    /// invalid one leaves the running pipeline alone), then the old one stops and drains, then
    /// the new one starts from the committed positions. A pipeline new to the declarations is
    /// started.
    pub async fn reload(&self, name: &str) -> Result<(), ManageError> {
        let declarations = (self.load)().map_err(ManageError::Invalid)?;
        let d = declarations
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ManageError::Unknown(name.into()))?;
        let p = config::build(&d, &self.host).map_err(|e| ManageError::Invalid(e.to_string()))?;
        let mut entries = self.entries.lock().await;
        if let Some(old) = entries.get_mut(name) {
            stop_entry(old).await;
        }
        tracing::info!(pipeline = %name, "reloading pipeline");
        let e = self.launch(d, p);
        entries.insert(name.to_string(), e);
        Ok(())
    }

    /// Stops every pipeline (at the server's shutdown).
    pub async fn stop_all(&self) {
        let mut entries = self.entries.lock().await;
        for e in entries.values() {
            e.stop.cancel();
        }
        for e in entries.values_mut() {
            if let Some(t) = e.task.take() {
                let _ = t.await;
            }
        }
    }
}

async fn stop_entry(e: &mut Entry) {
    e.stop.cancel();
    if let Some(t) = e.task.take() {
        let _ = t.await;
    }
}
