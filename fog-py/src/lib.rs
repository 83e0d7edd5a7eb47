//! The Python module `fog`: a thin layer over [`fogcore`]'s imaging API.
//!
//! The native extension is `fog._fog`; `python/fog/__init__.py` re-exports it and
//! `python/fog/_fog.pyi` types it. Every long call releases the GIL; reports come back as plain
//! Python dicts built from fogcore's serde reports; fogcore errors become `fog.BadInputError`
//! (`is_bad_input()`) or `fog.FogError`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use fogcore::imaging::capture::{self, CaptureOptions};
use fogcore::imaging::deploy::{self, DeployOptions};
use fogcore::imaging::resize::LayoutMode;
use fogcore::imaging::store::Store;
use fogcore::progress::Progress;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString};
use serde::Serialize;
use serde_json::Value;

mod master;
mod server;

create_exception!(
    fog,
    FogError,
    PyException,
    "Base class of fog's errors: something failed underneath (I/O, a damaged store, a busy store)."
);
create_exception!(
    fog,
    BadInputError,
    FogError,
    "The error was caused by what the caller gave: a path, an image name, a disk that does not fit."
);

/// Maps a fogcore error to `BadInputError` or `FogError`, with fogcore's message.
fn fog_err(e: fogcore::Error) -> PyErr {
    if e.is_bad_input() {
        BadInputError::new_err(e.to_string())
    } else {
        FogError::new_err(e.to_string())
    }
}

/// A layout named from Python (`"fit"`, `"exact"`); another name is a `BadInputError`.
fn layout_mode(text: &str) -> PyResult<LayoutMode> {
    text.parse().map_err(fog_err)
}

/// Converts a serde-serializable report into plain Python objects (dict, list, int, float, str,
/// bool, None).
fn to_py<'py, T: Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let value = serde_json::to_value(value).map_err(|e| FogError::new_err(format!("cannot convert report: {e}")))?;
    json_to_py(py, &value)
}

fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// Least time between two progress calls within a phase (the first and last of a phase are
/// always made).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);
/// How often a waiting call checks for signals (Ctrl-C) while the job runs.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forwards fogcore progress to a Python callable `progress(phase, done, total)`, throttled,
/// taking the GIL only for the call. Also carries the first Python exception of the job (from
/// the callable or a signal) so the job can stop and the exception can be raised.
struct PyProgress {
    callback: Option<Py<PyAny>>,
    phase: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
    /// When the callable was last called; held while calling it, so calls never overlap.
    last_call: Mutex<Option<Instant>>,
    failed: AtomicBool,
    error: Mutex<Option<PyErr>>,
}

impl PyProgress {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        PyProgress {
            callback,
            phase: Mutex::new(String::new()),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            last_call: Mutex::new(None),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Records the first exception; later progress calls are skipped.
    fn fail(&self, e: PyErr) {
        lock(&self.error).get_or_insert(e);
        self.failed.store(true, Ordering::Relaxed);
    }

    fn take_error(&self) -> Option<PyErr> {
        lock(&self.error).take()
    }

    /// Calls the callable with the current state. The caller holds `last_call`.
    fn call(&self, last_call: &mut Option<Instant>) {
        let Some(callback) = &self.callback else {
            return;
        };
        if self.failed() {
            return;
        }
        let phase = lock(&self.phase).clone();
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let result = Python::attach(|py| callback.call1(py, (phase, done, total)).map(drop));
        if let Err(e) = result {
            self.fail(e);
        }
        *last_call = Some(Instant::now());
    }
}

impl Progress for PyProgress {
    fn start(&self, phase: &str, total: u64) {
        let mut last_call = lock(&self.last_call);
        *lock(&self.phase) = phase.to_string();
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.call(&mut last_call);
    }

    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        if self.callback.is_none() || self.failed() {
            return;
        }
        // Worker threads never wait for each other here: whoever finds the lock taken skips.
        let mut last_call = match self.last_call.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if last_call.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.call(&mut last_call);
    }

    fn finish(&self) {
        let mut last_call = lock(&self.last_call);
        self.call(&mut last_call);
        *last_call = None;
    }

    fn cancelled(&self) -> bool {
        self.failed()
    }
}

/// Runs `job` on a helper thread with the GIL released. Meanwhile the calling thread checks for
/// signals (Ctrl-C) and records a raised exception in `progress` so the job can stop. Returns
/// the job's result and the first Python exception, if any; `Err` when the job panicked.
fn run_job<T: Send>(
    py: Python<'_>,
    progress: &PyProgress,
    job: impl FnOnce() -> fogcore::Result<T> + Send,
) -> PyResult<(fogcore::Result<T>, Option<PyErr>)> {
    let result = py.detach(|| {
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel();
            let handle = scope.spawn(move || {
                // The receiver lives until the end of the scope.
                let _ = tx.send(job());
            });
            loop {
                match rx.recv_timeout(SIGNAL_POLL) {
                    Ok(result) => return Some(result),
                    Err(RecvTimeoutError::Disconnected) => {
                        // The job panicked; joining here keeps the scope from panicking again.
                        let _ = handle.join();
                        return None;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if !progress.failed()
                            && let Err(e) = Python::attach(|py| py.check_signals())
                        {
                            progress.fail(e);
                        }
                    }
                }
            }
        })
    });
    let error = progress.take_error();
    match result {
        Some(result) => Ok((result, error)),
        None => Err(error.unwrap_or_else(|| FogError::new_err("internal error: the fog job panicked"))),
    }
}

/// A fog image store: a directory of content-addressed chunks and image manifests.
#[pyclass(frozen, module = "fog", name = "Store")]
pub(crate) struct PyStore {
    pub(crate) store: Store,
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, *, memory_mib = fogcore::imaging::store::DEFAULT_MEMORY_MIB))]
    fn new(py: Python<'_>, path: PathBuf, memory_mib: u64) -> PyResult<Self> {
        fogcore::imaging::store::check_memory_mib("memory_mib", memory_mib).map_err(fog_err)?;
        let store = py.detach(|| Store::open(&path)).map_err(fog_err)?;
        Ok(PyStore {
            store: store.with_memory_mib(memory_mib),
        })
    }

    /// The store directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }

    fn __repr__(&self) -> String {
        format!("fog.Store({:?})", self.store.root().display().to_string())
    }

    /// Captures the disk image or block device `source` as image `name`.
    #[pyo3(signature = (source, name, progress=None, *, threads=None, sector_size=None))]
    fn capture<'py>(
        &self,
        py: Python<'py>,
        source: PathBuf,
        name: &str,
        progress: Option<Py<PyAny>>,
        threads: Option<usize>,
        sector_size: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sink = PyProgress::new(progress);
        let options = CaptureOptions {
            sector_size,
            threads,
            ..CaptureOptions::default()
        };
        let store = &self.store;
        let (result, error) = run_job(py, &sink, || capture::capture(store, &source, name, &options, &sink))?;
        if let Some(e) = error {
            return Err(e);
        }
        to_py(py, &result.map_err(fog_err)?)
    }

    /// Deploys image `name` to `target` (an image file, created if absent, or a block device),
    /// its partitions laid out by `layout` (`"fit"` or `"exact"`).
    #[pyo3(signature = (name, target, verify=false, progress=None, *, threads=None, layout="fit"))]
    #[allow(clippy::too_many_arguments)]
    fn deploy<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        target: PathBuf,
        verify: bool,
        progress: Option<Py<PyAny>>,
        threads: Option<usize>,
        layout: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = DeployOptions {
            verify,
            threads,
            layout: layout_mode(layout)?,
        };
        let sink = PyProgress::new(progress);
        let store = &self.store;
        let (result, error) = run_job(py, &sink, || deploy::deploy(store, name, &target, &options, &sink))?;
        if let Some(e) = error {
            return Err(e);
        }
        to_py(py, &result.map_err(fog_err)?)
    }

    /// Summaries of all images, sorted by name.
    fn images<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let images = py.detach(|| self.store.images()).map_err(fog_err)?;
        to_py(py, &images)
    }

    /// The header of image `name`: layout, regions, sizes.
    fn info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let manifest = py.detach(|| self.store.manifest(name)).map_err(fog_err)?;
        to_py(py, &manifest.header)
    }

    /// Removes image `name`; its chunks stay until `gc()`.
    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.store.remove_image(name)).map_err(fog_err)
    }

    /// Checks every chunk against its hash and every image's references.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let report = py.detach(|| self.store.verify()).map_err(fog_err)?;
        let dict = to_py(py, &report)?;
        dict.set_item("ok", report.is_ok())?;
        Ok(dict)
    }

    /// Removes chunks no image references and abandoned capture directories.
    fn gc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let report = py.detach(|| self.store.gc()).map_err(fog_err)?;
        to_py(py, &report)
    }

    /// Counts images, chunks and bytes.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = py.detach(|| self.store.stats()).map_err(fog_err)?;
        let dict = to_py(py, &stats)?;
        dict.set_item("ratio", stats.ratio())?;
        Ok(dict)
    }
}

/// fog: content-addressed network disk imaging.
#[pymodule]
#[pyo3(name = "_fog")]
fn fog_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyStore>()?;
    m.add_class::<server::PyServer>()?;
    master::register(m)?;
    m.add("FogError", py.get_type::<FogError>())?;
    m.add("BadInputError", py.get_type::<BadInputError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
