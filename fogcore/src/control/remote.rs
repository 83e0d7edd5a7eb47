//! A store behind the chunk service ([`crate::control::chunks`]), usable from blocking code:
//! [`RemoteStore`] implements [`ImageStore`] (batched, for replication) and [`ChunkSource`] /
//! [`ChunkSink`] (for deploy and capture pipelines, which are synchronous).
//!
//! It owns a small tokio runtime (one worker) and hands each request to it, waiting on a channel.
//! That works from any thread, also one inside another runtime (where `block_on` and
//! `reqwest::blocking` panic), needs no extra reqwest feature, and keeps one connection pool.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;

use crate::control::chunks::{decode_get_reply, decode_ids, encode_ids, encode_pieces, encode_put};
use crate::control::pipe::{PIPE_BYTES, pipe};
use crate::error::{Error, Result};
use crate::imaging::chunk::{self, ChunkId, ChunkSink, ChunkSource, WireFrame};
use crate::imaging::replica::{CopyError, ImageStore, PieceHash, WireChunk, copy_apart};
use crate::net::tls::{Trust, request_error};

/// Puts buffered by [`ChunkSink::put_run`] are sent when they reach this many bytes.
pub const PUT_BATCH_BYTES: usize = 4 << 20;
/// How long a manifest transfer may take, instead of the 300 s of other requests: a 2 TB disk's
/// manifest is about 9 GiB, and the receiver checks every chunk it names before it answers.
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// A store at a fog node or master, over HTTP.
pub struct RemoteStore {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
    sent: AtomicU64,
    received: AtomicU64,
    pending: Mutex<Vec<WireChunk>>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore").field("base", &self.base).finish()
    }
}

impl RemoteStore {
    /// The store served at `url` (`http://host:port`), with a bearer token.
    pub fn new(url: &str, token: Option<&str>) -> Result<RemoteStore> {
        RemoteStore::with_trust(url, token, &Trust::System)
    }

    /// The store served at `url`, its certificate trusted as `trust` says.
    pub fn with_trust(url: &str, token: Option<&str>, trust: &Trust) -> Result<RemoteStore> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid("store url", url, "must start with http:// or https://"));
        }
        let http_err = |e: String| Error::Http {
            url: base.clone(),
            reason: e,
        };
        let http = trust
            .client_builder()?
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| http_err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fog-remote-store")
            .enable_all()
            .build()
            .map_err(|e| http_err(format!("runtime: {e}")))?;
        Ok(RemoteStore {
            base,
            token: token.map(str::to_string),
            http,
            runtime: Some(runtime),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// HTTP body bytes sent so far (requests).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// HTTP body bytes received so far (replies).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// A request to `path` under the API, with the token.
    fn request(&self, method: Method, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        (url, req)
    }

    fn runtime(&self, url: &str) -> Result<&tokio::runtime::Runtime> {
        self.runtime.as_ref().ok_or_else(|| Error::Http {
            url: url.into(),
            reason: "client is shut down".into(),
        })
    }

    /// A request to `path` with `body` (octet-stream, counted as sent) when given.
    fn request_with(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> (String, reqwest::RequestBuilder) {
        let (url, mut req) = self.request(method, path);
        if let Some(body) = body {
            self.sent.fetch_add(body.len() as u64, Ordering::Relaxed);
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body);
        }
        (url, req)
    }

    /// Sends `req` on the client's runtime; its whole answer comes on the returned channel, after
    /// `answered` ran in the task.
    fn exchange(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        answered: impl FnOnce() + Send + 'static,
    ) -> Result<Answer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime(url)?.spawn(async move {
            let result = async {
                let resp = req.send().await?;
                let status = resp.status();
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes))
            }
            .await;
            answered();
            let _ = tx.send(result);
        });
        Ok(rx)
    }

    /// The status and body `answer` brings.
    fn wait(url: &str, answer: Answer) -> Result<(reqwest::StatusCode, bytes::Bytes)> {
        answer
            .recv()
            .map_err(|_| task_ended(url))?
            .map_err(|e| request_error(url, &e))
    }

    /// The body of a success (counted as received); an error status as the server's error.
    fn reply(&self, url: &str, status: reqwest::StatusCode, bytes: &[u8]) -> Result<Vec<u8>> {
        self.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if !status.is_success() {
            return Err(crate::control::client::remote_error(status, bytes, url));
        }
        Ok(bytes.to_vec())
    }

    fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let (url, req) = self.request_with(method, path, body);
        let (status, bytes) = Self::wait(&url, self.exchange(&url, req, || {})?)?;
        self.reply(&url, status, &bytes)
    }

    /// A request whose reply body streams into `out` (a manifest, a manifest delta), at most
    /// [`PIPE_BYTES`] of it in memory; returns the bytes received.
    fn download(&self, method: Method, path: &str, body: Option<Vec<u8>>, out: &mut dyn Write) -> Result<u64> {
        let (url, req) = self.request_with(method, path, body);
        let req = req.timeout(MANIFEST_TIMEOUT);
        let (mut writer, mut reader) = pipe(PIPE_BYTES);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task_url = url.clone();
        self.runtime(&url)?.spawn(async move {
            let mut resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    let _ = tx.send(Err(request_error(&task_url, &e)));
                    return;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                let body = resp.bytes().await.unwrap_or_default();
                let _ = tx.send(Err(crate::control::client::remote_error(status, &body, &task_url)));
                return;
            }
            let _ = tx.send(Ok(()));
            loop {
                match resp.chunk().await {
                    Ok(Some(piece)) => {
                        if writer.send(piece).await.is_err() {
                            return; // the caller stopped reading
                        }
                    }
                    Ok(None) => return writer.finish(),
                    Err(e) => return writer.fail(crate::net::tls::error_chain(&e)),
                }
            }
        });
        rx.recv().map_err(|_| task_ended(&url))??;
        let n = copy_apart(&mut reader, out).map_err(|e| match e {
            CopyError::Read(e) => Error::Http {
                url: url.clone(),
                reason: format!("the reply stopped: {e}"),
            },
            CopyError::Write(e) => Error::io("received manifest", e),
        })?;
        self.received.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// A request whose body streams from `src`, at most [`PIPE_BYTES`] of it in memory; returns
    /// the reply.
    fn upload(&self, method: Method, path: &str, src: &mut dyn Read) -> Result<Vec<u8>> {
        let (url, req) = self.request(method, path);
        let (mut writer, reader) = pipe(PIPE_BYTES);
        let closer = writer.reader_closer();
        let req = req
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(MANIFEST_TIMEOUT)
            .body(reqwest::Body::wrap(reader));
        // An answer before the whole body (a refusal) stops the caller's writing.
        let answer = self.exchange(&url, req, move || closer.close())?;
        let mut complete = false;
        let mut unreadable = None;
        match copy_apart(src, &mut writer) {
            Ok(n) => {
                self.sent.fetch_add(n, Ordering::Relaxed);
                writer.finish();
                complete = true;
            }
            Err(CopyError::Read(e)) => {
                writer.fail(format!("reading what to send failed: {e}"));
                unreadable = Some(e);
            }
            Err(CopyError::Write(_)) => drop(writer), // the request ended; its answer says why
        }
        let (status, bytes) = Self::wait(&url, answer)?;
        if let Some(e) = unreadable {
            return Err(Error::io("manifest to send", e));
        }
        let reply = self.reply(&url, status, &bytes)?;
        if !complete {
            return Err(Error::Http {
                url,
                reason: "the server answered before the whole body was sent".into(),
            });
        }
        Ok(reply)
    }

    /// Sends the puts buffered by [`ChunkSink::put_run`].
    pub fn flush(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        self.put_chunks(&batch).map(|_| ())
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        // Dropping a runtime inside async code panics; this does not wait for it.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What [`RemoteStore::exchange`] answers with: the status and whole body, or why not.
type Answer = std::sync::mpsc::Receiver<reqwest::Result<(reqwest::StatusCode, bytes::Bytes)>>;

fn task_ended(url: &str) -> Error {
    Error::Http {
        url: url.into(),
        reason: "request task ended".into(),
    }
}

fn image_path(name: &str) -> Result<String> {
    crate::imaging::store::check_image_name(name)?;
    Ok(format!("/store/images/{name}/manifest"))
}

impl ImageStore for RemoteStore {
    fn images(&self) -> Result<Vec<String>> {
        let body = self.call(Method::GET, "/store/images", None)?;
        serde_json::from_slice(&body).map_err(|e| Error::Http {
            url: self.base.clone(),
            reason: format!("image list: {e}"),
        })
    }

    fn manifest_to(&self, name: &str, out: &mut dyn Write) -> Result<u64> {
        self.download(Method::GET, &image_path(name)?, None, out)
            .map_err(|e| match e {
                Error::Remote { status: 404, .. } => Error::ImageNotFound(name.into()),
                other => other,
            })
    }

    fn manifest_delta_to(&self, name: &str, base: &[PieceHash], out: &mut dyn Write) -> Result<u64> {
        self.download(
            Method::POST,
            &format!("{}/delta", image_path(name)?),
            Some(encode_pieces(base)),
            out,
        )
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        decode_ids(&self.call(Method::POST, "/store/chunks/missing", Some(encode_ids(ids)))?)
    }

    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = self.call(Method::POST, "/store/chunks/get", Some(encode_ids(ids)))?;
        decode_get_reply(&body, ids.len())
    }

    fn get_frames(&self, ids: &[ChunkId]) -> Result<Vec<WireFrame>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = self.call(Method::POST, "/store/chunks/frames", Some(encode_ids(ids)))?;
        WireFrame::decode_batch(&body, ids.len())
    }

    fn put_chunks(&self, chunks: &[WireChunk]) -> Result<u64> {
        if chunks.is_empty() {
            return Ok(0);
        }
        let body = self.call(Method::POST, "/store/chunks/put", Some(encode_put(chunks)))?;
        let reply: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Http {
            url: self.base.clone(),
            reason: format!("put reply: {e}"),
        })?;
        Ok(reply["new"].as_u64().unwrap_or(0))
    }

    fn put_manifest_from(&self, name: &str, manifest: &mut dyn Read) -> Result<()> {
        self.upload(Method::PUT, &image_path(name)?, manifest).map(|_| ())
    }
}

impl ChunkSource for RemoteStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let Some(encoded) = self.get_chunks(std::slice::from_ref(id))?.into_iter().next().flatten() else {
            return Ok(None);
        };
        WireChunk::from_stored(*id, encoded)?.plain().map(Some)
    }
}

impl ChunkSink for RemoteStore {
    fn has(&self, id: &ChunkId) -> Result<bool> {
        if self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|c| c.id == *id)
        {
            return Ok(true);
        }
        Ok(self.missing(std::slice::from_ref(id))?.is_empty())
    }

    fn put_run(&self, chunks: &[(ChunkId, &[u8])]) -> Result<usize> {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, plain) in chunks {
                let len = u32::try_from(plain.len()).map_err(|_| Error::ChunkCorrupt {
                    image: "upload".into(),
                    chunk: id.to_hex(),
                    reason: format!("{} bytes is too large for a chunk", plain.len()),
                })?;
                pending.push(WireChunk {
                    id: *id,
                    len,
                    encoded: chunk::encode(plain),
                });
            }
            pending.iter().map(|c| c.encoded.len()).sum::<usize>() >= PUT_BATCH_BYTES
        };
        if full {
            self.flush()?;
        }
        Ok(chunks.len())
    }
}
