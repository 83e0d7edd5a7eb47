//! The chunk and manifest service over an [`ImageStore`]: what replication and the agent use to
//! move chunks between a store and the network. Served by the master (rows of its route table,
//! over the master's store) and by any process that mounts [`router`] with its own tokens.
//!
//! Bodies are binary (`application/octet-stream`), all integers little-endian:
//!
//! ```text
//! POST /api/v1/store/chunks/missing   ids (32 bytes each)           -> the ids absent, same form
//! POST /api/v1/store/chunks/get       ids                           -> per id: u32 len | bytes (len u32::MAX: absent)
//! POST /api/v1/store/chunks/frames    ids                           -> per frame: u32 parts | per part: u32 index, u32 start, u32 len | u32 len | bytes
//! POST /api/v1/store/chunks/put       per chunk: id | u32 plain len | u32 len | bytes  -> {"received", "new"}
//! GET  /api/v1/store/images           -> ["name", ...]
//! GET  /api/v1/store/images/{name}/manifest        -> the manifest file
//! PUT  /api/v1/store/images/{name}/manifest        the manifest file: 409 while chunks are missing
//! POST /api/v1/store/images/{name}/manifest/delta  piece hashes (16 bytes each) -> a manifest delta
//! ```
//!
//! A put is checked whole before anything is stored: one bad chunk is a 400 naming it.
//!
//! Chunk routes take bodies of at most [`MAX_BODY`]. Manifests stream both ways (a 2 TB disk's
//! is about 9 GiB) through a bounded [`pipe`](crate::control::pipe) between the HTTP body and
//! the store's blocking code: a manifest PUT has no body cap here, the store takes at most
//! [`MAX_MANIFEST_BYTES`](crate::imaging::manifest::MAX_MANIFEST_BYTES) (413 past it), received into a file in its `tmp/`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::control::api::{
    API, Access, ApiError, Authenticate, Caller, Done, Guarded, Payload, Route, constant_time_eq, guard, json, no_route,
};
use crate::control::pipe::{PIPE_BYTES, PipeWriter, Start, pipe};
use crate::error::{Error, Result};
use crate::imaging::chunk::{ChunkId, WireFrame};
use crate::imaging::cursor::{ByteCursor, FieldError};
use crate::imaging::replica::{ImageStore, PieceHash, WireChunk};
use crate::imaging::shrink::add_shrunk_copies;

/// Largest request body the chunk routes take (a put batch is a few MiB).
pub const MAX_BODY: usize = 64 << 20;
/// Most ids one request may name.
pub const MAX_IDS: usize = 1 << 16;
/// Length that marks an absent chunk in a get reply.
pub const ABSENT: u32 = u32::MAX;

// ---- wire codec (no I/O)

/// Ids as a body.
pub fn encode_ids(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

/// Parses a body of ids.
pub fn decode_ids(body: &[u8]) -> Result<Vec<ChunkId>> {
    if !body.len().is_multiple_of(32) || body.len() / 32 > MAX_IDS {
        return Err(Error::invalid(
            "chunk id list",
            format!("{} bytes", body.len()),
            format!("must be a multiple of 32 bytes, at most {MAX_IDS} ids"),
        ));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            ChunkId(id)
        })
        .collect())
}

/// A wire body that ends early or holds a field out of range: the sender's fault.
fn truncated(e: FieldError) -> Error {
    Error::invalid("chunk batch", e.field, e.reason)
}

/// A get reply.
pub fn encode_get_reply(chunks: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| 4 + c.as_ref().map_or(0, Vec::len)).sum());
    for c in chunks {
        match c {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&ABSENT.to_le_bytes()),
        }
    }
    out
}

/// Parses a get reply for `count` ids.
pub fn decode_get_reply(body: &[u8], count: usize) -> Result<Vec<Option<Vec<u8>>>> {
    let mut cur = ByteCursor::new(body);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = cur.u32("chunk length").map_err(truncated)?;
        out.push(if len == ABSENT {
            None
        } else {
            Some(cur.bytes("chunk bytes", len as usize).map_err(truncated)?.to_vec())
        });
    }
    if cur.remaining() != 0 {
        return Err(Error::invalid("chunk batch", "reply", "trailing bytes"));
    }
    Ok(out)
}

/// A put body.
pub fn encode_put(chunks: &[WireChunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| 40 + c.encoded.len()).sum());
    for c in chunks {
        out.extend_from_slice(&c.id.0);
        out.extend_from_slice(&c.len.to_le_bytes());
        out.extend_from_slice(&(c.encoded.len() as u32).to_le_bytes());
        out.extend_from_slice(&c.encoded);
    }
    out
}

/// Parses a put body.
pub fn decode_put(body: &[u8]) -> Result<Vec<WireChunk>> {
    let mut cur = ByteCursor::new(body);
    let mut out = Vec::new();
    while cur.remaining() != 0 {
        let id = ChunkId(cur.array("chunk id").map_err(truncated)?);
        let len = cur.u32("plain length").map_err(truncated)?;
        let n = cur.u32("length").map_err(truncated)?;
        let encoded = cur.bytes("chunk bytes", n as usize).map_err(truncated)?.to_vec();
        out.push(WireChunk { id, len, encoded });
    }
    Ok(out)
}

/// Piece hashes as a body, and back.
pub fn encode_pieces(pieces: &[PieceHash]) -> Vec<u8> {
    pieces.iter().flatten().copied().collect()
}

/// Parses piece hashes.
pub fn decode_pieces(body: &[u8]) -> Result<Vec<PieceHash>> {
    if !body.len().is_multiple_of(16) {
        return Err(Error::invalid(
            "piece list",
            format!("{} bytes", body.len()),
            "not 16-byte hashes",
        ));
    }
    Ok(body
        .chunks_exact(16)
        .map(|c| {
            let mut h = [0u8; 16];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

// ---- handlers

/// A server state that may hold a store.
pub trait HasStore: Clone + Send + Sync + 'static {
    /// The store the chunk routes serve.
    fn image_store(&self) -> Result<Arc<dyn ImageStore>>;

    /// Called once a manifest became an image through the routes (the master marks the other
    /// nodes' copies stale). Default: nothing.
    fn manifest_stored(&self, name: &str) -> impl std::future::Future<Output = Result<()>> + Send {
        let _ = name;
        async { Ok(()) }
    }

    /// Refused unless `caller` may read the image `name` (its manifest). Default: anyone the
    /// token check let in.
    fn check_image_read(&self, caller: &Caller, name: &str) -> impl std::future::Future<Output = Result<()>> + Send {
        let _ = (caller, name);
        async { Ok(()) }
    }

    /// Of `names`, the images `caller` may read. Default: all.
    fn readable_images(
        &self,
        caller: &Caller,
        names: Vec<String>,
    ) -> impl std::future::Future<Output = Result<Vec<String>>> + Send {
        let _ = caller;
        async { Ok(names) }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(Error::Internal(format!("worker failed: {e}"))))?
        .map_err(ApiError)
}

fn octets(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

async fn missing<S: HasStore>(State(s): State<S>, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let store = s.image_store()?;
    let ids = decode_ids(&body)?;
    blocking(move || store.missing(&ids).map(|m| octets(encode_ids(&m)))).await
}

async fn get_chunks<S: HasStore>(State(s): State<S>, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let store = s.image_store()?;
    let ids = decode_ids(&body)?;
    blocking(move || store.get_chunks(&ids).map(|c| octets(encode_get_reply(&c)))).await
}

async fn get_frames<S: HasStore>(State(s): State<S>, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let store = s.image_store()?;
    let ids = decode_ids(&body)?;
    blocking(move || store.get_frames(&ids).map(|f| octets(WireFrame::encode_batch(&f)))).await
}

async fn put_chunks<S: HasStore>(State(s): State<S>, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let store = s.image_store()?;
    let chunks = decode_put(&body)?;
    let received = chunks.len();
    let new = blocking(move || {
        store.put_chunks(&chunks).map_err(|e| match e {
            Error::ChunkCorrupt { chunk, reason, .. } => Error::invalid("chunk", chunk, reason),
            other => other,
        })
    })
    .await?;
    Ok(Json(PutReport { received, new }).into_response())
}

/// What a put stored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PutReport {
    /// Chunks in the batch.
    pub received: usize,
    /// Of those, chunks the store did not hold yet.
    pub new: u64,
}

/// A request body of a chunk route; one over [`MAX_BODY`] is a `{code, message}` 413.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError(Error::TooLarge {
                what: "the request body".into(),
                limit: MAX_BODY,
            })),
            Err(rejection) => Err(ApiError(Error::invalid("request body", "", rejection.body_text()))),
        }
    }
}

async fn images<S: HasStore>(State(s): State<S>, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    let store = s.image_store()?;
    let names = blocking(move || store.images()).await?;
    Ok(Json(s.readable_images(&caller, names).await?).into_response())
}

/// Streams what `write` writes (on a blocking thread) as the reply body. The status waits for
/// the first byte: a failure before it (an absent image) is answered as an error, one after it
/// ends the body early (the client's manifest check refuses a cut one).
async fn streamed(write: impl FnOnce(&mut PipeWriter) -> Result<u64> + Send + 'static) -> Result<Response, ApiError> {
    let (writer, mut reader) = pipe(PIPE_BYTES);
    let job = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let result = write(&mut writer);
        match &result {
            Ok(_) => writer.finish(),
            Err(e) => writer.fail(e.to_string()),
        }
        result
    });
    if let Start::Failed(reason) = reader.started().await {
        return Err(ApiError(match job.await {
            Ok(Err(e)) => e,
            _ => Error::Internal(format!("manifest stream: {reason}")),
        }));
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::new(reader)).into_response())
}

async fn get_manifest<S: HasStore>(
    State(s): State<S>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.check_image_read(&caller, &name).await?;
    let store = s.image_store()?;
    streamed(move |out| store.manifest_to(&name, out)).await
}

async fn manifest_delta<S: HasStore>(
    State(s): State<S>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    s.check_image_read(&caller, &name).await?;
    let store = s.image_store()?;
    let pieces = decode_pieces(&body)?;
    streamed(move |out| store.manifest_delta_to(&name, &pieces, out)).await
}

async fn put_manifest<S: HasStore>(
    State(s): State<S>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    use http_body::Body as _;
    let store = s.image_store()?;
    let stored = name.clone();
    let (mut writer, mut reader) = pipe(PIPE_BYTES);
    // The store reads the body on a blocking thread as it arrives; it stops reading (and this
    // stops forwarding) as soon as it refuses (a bad name, past MAX_MANIFEST_BYTES).
    let job = tokio::task::spawn_blocking(move || {
        // A manifest that does not parse is the sender's fault, not the store's.
        match store.put_manifest_from(&name, &mut reader) {
            Err(Error::BadManifest { image, reason, .. }) => Err(Error::invalid("manifest", image, reason)),
            Err(e) => Err(e),
            Ok(()) => {
                // A capture from an agent: its partitions' minimum sizes are worked out here, where
                // the image is (an image replicated with them has nothing left to do). The image
                // is complete either way; without them it deploys to disks of its size or more.
                if let Some(local) = store.local_store()
                    && let Err(e) = add_shrunk_copies(local, &name, None)
                {
                    tracing::warn!("image {name}: minimum partition sizes not worked out: {e}");
                }
                Ok(())
            }
        }
    });
    let mut body = std::pin::pin!(body);
    loop {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => {
                writer.finish();
                break;
            }
            Some(Err(e)) => {
                writer.fail(format!("the request body failed: {e}"));
                break;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && writer.send(data).await.is_err()
                {
                    break; // the store stopped reading: its answer says why
                }
            }
        }
    }
    job.await
        .map_err(|e| ApiError(Error::Internal(format!("worker failed: {e}"))))?
        .map_err(ApiError)?;
    s.manifest_stored(&stored).await?;
    Ok(crate::control::api::done().into_response())
}

/// The chunk routes, as rows for a route table over state `S`.
pub fn table<S: HasStore>() -> Vec<(Route, MethodRouter<S>)> {
    let r = |method: Method, path: &str, summary, body, reply| Route {
        // Its POSTs read chunks or bring a batch of them: an image lands (and is audited) by
        // its manifest's PUT.
        quiet: method == Method::POST,
        method,
        path: format!("{API}{path}"),
        access: Access::Node,
        summary,
        query: None,
        body,
        reply,
    };
    let manifest = || {
        Payload::Bytes(
            "an image's manifest file (fog's binary manifest format), streamed: no request body cap, at most 64 GiB",
        )
    };
    let ids = || Payload::Bytes("chunk ids, 32 bytes each (at most 65,536)");
    let big = || DefaultBodyLimit::max(MAX_BODY);
    vec![
        (
            r(
                Method::GET,
                "/store/images",
                "Images complete in the store",
                None,
                json::<Vec<String>>(),
            ),
            get(images::<S>),
        ),
        (
            r(
                Method::GET,
                "/store/images/{name}/manifest",
                "An image's manifest file",
                None,
                manifest(),
            ),
            get(get_manifest::<S>),
        ),
        (
            r(
                Method::PUT,
                "/store/images/{name}/manifest",
                "Make a manifest an image, once every chunk it names is here (else 409)",
                Some(manifest()),
                json::<Done>(),
            ),
            // No MAX_BODY here: the body streams to the store, which bounds it (MAX_MANIFEST_BYTES).
            put(put_manifest::<S>).layer(DefaultBodyLimit::disable()),
        ),
        (
            r(
                Method::POST,
                "/store/images/{name}/manifest/delta",
                "An image's manifest as a delta against pieces the caller holds",
                Some(Payload::Bytes("piece hashes the caller holds, 16 bytes each")),
                Payload::Bytes("a manifest delta against the pieces named"),
            ),
            post(manifest_delta::<S>).layer(big()),
        ),
        (
            r(
                Method::POST,
                "/store/chunks/missing",
                "Of these chunk ids, those the store lacks",
                Some(ids()),
                ids(),
            ),
            post(missing::<S>).layer(big()),
        ),
        (
            r(
                Method::POST,
                "/store/chunks/get",
                "Encoded chunks, length-prefixed",
                Some(ids()),
                Payload::Bytes("per chunk asked for: u32 length, then its encoded bytes (length 0xFFFFFFFF: absent)"),
            ),
            post(get_chunks::<S>).layer(big()),
        ),
        (
            r(
                Method::POST,
                "/store/chunks/frames",
                "The frames holding these chunks, as stored, with where each chunk lies (what deploy reads)",
                Some(ids()),
                Payload::Bytes(
                    "per frame: u32 parts, per part u32 index, start, length; u32 length, the frame as stored",
                ),
            ),
            post(get_frames::<S>).layer(big()),
        ),
        (
            r(
                Method::POST,
                "/store/chunks/put",
                "Store chunks, each checked first (a bad one: 400, nothing stored)",
                Some(Payload::Bytes(
                    "per chunk: 32-byte id, u32 plain length, u32 encoded length, encoded bytes",
                )),
                json::<PutReport>(),
            ),
            post(put_chunks::<S>).layer(big()),
        ),
    ]
}

/// A store served on its own with a fixed set of accepted tokens (a node, a test).
#[derive(Clone)]
pub struct ChunkServer {
    store: Arc<dyn ImageStore>,
    tokens: Arc<Vec<String>>,
}

impl HasStore for ChunkServer {
    fn image_store(&self) -> Result<Arc<dyn ImageStore>> {
        Ok(self.store.clone())
    }
}

impl Authenticate for ChunkServer {
    async fn authenticate(&self, token: &str) -> Result<Caller> {
        // Every token is compared, so the time taken does not tell which one nearly matched.
        let known = self.tokens.iter().fold(false, |found, k| {
            found | constant_time_eq(k.as_bytes(), token.as_bytes())
        });
        if known {
            Ok(Caller::admin("token:chunk-server"))
        } else {
            Err(Error::Unauthorized("unknown token".into()))
        }
    }
}

/// The chunk routes over `store`, accepting any of `tokens`.
pub fn router(store: Arc<dyn ImageStore>, tokens: Vec<String>) -> Router {
    let state = ChunkServer {
        store,
        tokens: Arc::new(tokens),
    };
    let mut router = Router::new();
    for (route, method_router) in table::<ChunkServer>() {
        let check = middleware::from_fn_with_state((state.clone(), Guarded::of(&route)), guard::<ChunkServer>);
        router = router.route(&route.path, method_router.route_layer(check));
    }
    router.fallback(no_route).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::chunk::FramePart;

    #[test]
    fn batches_round_trip_and_refuse_truncation() {
        let chunks = vec![
            WireChunk {
                id: ChunkId::of(b"a"),
                len: 1,
                encoded: vec![0, b'a'],
            },
            WireChunk {
                id: ChunkId::of(b""),
                len: 0,
                encoded: vec![0],
            },
        ];
        let body = encode_put(&chunks);
        assert_eq!(decode_put(&body).ok(), Some(chunks.clone()));
        assert!(decode_put(&body[..body.len() - 1]).is_err());
        let reply = encode_get_reply(&[Some(vec![1, 2]), None]);
        assert_eq!(decode_get_reply(&reply, 2).ok(), Some(vec![Some(vec![1, 2]), None]));
        assert!(decode_get_reply(&reply, 1).is_err());
        assert!(decode_get_reply(&reply[..5], 2).is_err());
        let frames = vec![WireFrame {
            stored: vec![0, 1, 2, 3],
            parts: vec![
                FramePart {
                    index: 1,
                    start: 0,
                    len: 2,
                },
                FramePart {
                    index: 0,
                    start: 2,
                    len: 1,
                },
            ],
        }];
        let reply = WireFrame::encode_batch(&frames);
        assert_eq!(WireFrame::decode_batch(&reply, 2).ok(), Some(frames));
        assert!(WireFrame::decode_batch(&reply, 1).is_err(), "a part past the request");
        assert!(WireFrame::decode_batch(&reply[..reply.len() - 1], 2).is_err());
        assert_eq!(WireFrame::decode_batch(&[], 2).ok(), Some(Vec::new()));
        let ids = vec![ChunkId::of(b"x"), ChunkId::of(b"y")];
        assert_eq!(decode_ids(&encode_ids(&ids)).ok(), Some(ids));
        assert!(decode_ids(&[0u8; 33]).is_err());
    }
}
