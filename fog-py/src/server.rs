//! `fog.Server`: the node's boot services (DHCP, TFTP, HTTP) from a config, started and stopped
//! from Python. Everything is fogcore's `net::server`; this only converts the config and errors.

use std::path::PathBuf;
use std::sync::Mutex;

use fogcore::net::config::{ServeConfig, ServeFile};
use fogcore::net::server::ServerHandle;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::{BadInputError, FogError, fog_err};

/// The node's boot services from a config: TOML text, a path to a TOML file, or a dict of the
/// same tables (`{"node": {...}, "http": {"listen": "127.0.0.1:0"}, ...}`).
#[pyclass(frozen, module = "fog", name = "Server")]
pub struct PyServer {
    config: ServeConfig,
    handle: Mutex<Option<ServerHandle>>,
}

fn config_from(py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<ServeConfig> {
    if let Ok(dict) = config.cast::<PyDict>() {
        let json: String = py.import("json")?.call_method1("dumps", (dict,))?.extract()?;
        let file: ServeFile =
            serde_json::from_str(&json).map_err(|e| BadInputError::new_err(format!("config dict: {e}")))?;
        return ServeConfig::try_from(file).map_err(fog_err);
    }
    if let Ok(text) = config.cast::<PyString>() {
        let text: String = text.extract()?;
        let text = text.as_str();
        // TOML text always has `=`, `[` or a newline (or is empty); anything else is a file name.
        if !text.is_empty() && !text.contains(['\n', '=', '[']) {
            return ServeConfig::load(text.as_ref()).map_err(fog_err);
        }
        return ServeConfig::parse(text, "config").map_err(fog_err);
    }
    if let Ok(path) = config.extract::<PathBuf>() {
        return ServeConfig::load(&path).map_err(fog_err);
    }
    Err(BadInputError::new_err("config must be TOML text, a path or a dict"))
}

impl PyServer {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, Option<ServerHandle>>> {
        self.handle
            .lock()
            .map_err(|_| FogError::new_err("internal error: a server call panicked"))
    }
}

#[pymethods]
impl PyServer {
    #[new]
    fn new(py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(PyServer {
            config: config_from(py, config)?,
            handle: Mutex::new(None),
        })
    }

    /// Binds every service, then serves in the background. Raises `BadInputError` naming the
    /// port, interface or value when something cannot be bound; then nothing is served.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut handle = self.lock()?;
        if handle.as_ref().is_some_and(|h| !h.is_stopped()) {
            return Err(BadInputError::new_err("the server is already running"));
        }
        let config = self.config.clone();
        *handle = Some(py.detach(|| fogcore::control::node::serve(config)).map_err(fog_err)?);
        Ok(())
    }

    /// Stops every service (a few seconds at most). Raises the error of a service that had failed.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.lock()?.take();
        match handle {
            Some(handle) => py.detach(|| handle.stop()).map_err(fog_err),
            None => Ok(()),
        }
    }

    /// True while the services run.
    #[getter]
    fn running(&self) -> PyResult<bool> {
        Ok(self.lock()?.as_ref().is_some_and(|h| !h.is_stopped()))
    }

    /// Where each service listens while running: `{"http": "127.0.0.1:8080", "tftp": None, ...}`.
    #[getter]
    fn addrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let addrs = self.lock()?.as_ref().map(ServerHandle::addrs).unwrap_or_default();
        let dict = PyDict::new(py);
        for (name, addr) in [("http", addrs.http), ("tftp", addrs.tftp), ("dhcp", addrs.dhcp)] {
            dict.set_item(name, addr.map(|a| a.to_string()))?;
        }
        Ok(dict)
    }

    /// What the config means, as `fog config check` prints it.
    fn describe(&self) -> String {
        self.config.describe()
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().start(slf.py())?;
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> PyResult<String> {
        let state = if self.running()? { "running" } else { "stopped" };
        Ok(format!("<fog.Server {state}>"))
    }
}
