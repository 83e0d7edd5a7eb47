//! What a multicast carousel sends: a manifest's chunks in disk order, each chunk once, cut
//! into *objects* of about one stored frame (cut as capture cuts its frames, so most objects go
//! out as the store holds them, with no decoding on the sender).
//!
//! Sender and receivers build the same [`Plan`] from the same manifest, so a packet names an
//! object by its number and nothing more: where its bytes go comes only from the receiver's own
//! manifest, and what goes there must match the chunk's hash ([`Plan::place`]). A forged or
//! damaged object therefore writes nothing.

use std::collections::HashMap;

use super::chunk::{self, ChunkId, WireFrame};
use super::deploy::DeployWriter;
use super::manifest::Manifest;
use super::replica::ImageStore;
use crate::{Error, Result};

/// One object: new chunks, consecutive in the disk order of their first use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Object {
    /// The chunks it carries, each for the first time in the plan.
    pub ids: Vec<ChunkId>,
    /// Their plain bytes.
    pub plain_bytes: u64,
}

/// Where a chunk is used: a region and an offset in its data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Use {
    region: usize,
    stream_offset: u64,
    len: u32,
}

/// A manifest's objects, and where each chunk goes.
#[derive(Debug, Default)]
pub struct Plan {
    objects: Vec<Object>,
    uses: HashMap<ChunkId, Vec<Use>>,
}

/// What placing one object did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placed {
    /// Chunk uses written (a chunk used twice counts twice).
    pub uses: u64,
    /// Plain bytes of those uses (deploy's progress measure).
    pub plain_bytes: u64,
    /// Bytes written to the target (all-zero data on a fresh target is skipped).
    pub written: u64,
}

impl Plan {
    /// The plan of `manifest`: every region (shrunk copies too) in manifest order.
    pub fn build(manifest: &Manifest) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut current = Object::default();
        for (region_index, region) in manifest.header.regions.iter().enumerate() {
            let mut stream_offset = 0u64;
            let mut run = 0usize;
            for chunk in manifest.chunks(region) {
                let chunk = chunk?;
                let uses = plan.uses.entry(chunk.id).or_default();
                if uses.is_empty() {
                    current.ids.push(chunk.id);
                    current.plain_bytes += u64::from(chunk.len);
                }
                uses.push(Use {
                    region: region_index,
                    stream_offset,
                    len: chunk.len,
                });
                stream_offset += u64::from(chunk.len);
                // Cut where deploy's runs (and capture's frames) are cut.
                run += chunk.len as usize;
                if run >= chunk::FRAME_TARGET {
                    run = 0;
                    plan.close(&mut current);
                }
            }
            plan.close(&mut current);
        }
        Ok(plan)
    }

    fn close(&mut self, current: &mut Object) {
        if !current.ids.is_empty() {
            self.objects.push(std::mem::take(current));
        }
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True for an image without chunks.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Object `index`.
    pub fn object(&self, index: usize) -> Option<&Object> {
        self.objects.get(index)
    }

    /// Plain bytes of all objects (each chunk once).
    pub fn plain_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.plain_bytes).sum()
    }

    /// Which objects a deploy of `regions` needs: those holding a chunk one of them uses.
    pub fn needed(&self, regions: &[usize]) -> Vec<bool> {
        self.objects
            .iter()
            .map(|object| {
                object.ids.iter().any(|id| {
                    self.uses
                        .get(id)
                        .is_some_and(|uses| uses.iter().any(|u| regions.contains(&u.region)))
                })
            })
            .collect()
    }

    /// Plain bytes of the chunk uses of `regions` in object `index` (what placing it advances).
    pub fn use_bytes(&self, index: usize, regions: &[usize]) -> u64 {
        let Some(object) = self.objects.get(index) else {
            return 0;
        };
        object
            .ids
            .iter()
            .filter_map(|id| self.uses.get(id))
            .flatten()
            .filter(|u| regions.contains(&u.region))
            .map(|u| u64::from(u.len))
            .sum()
    }

    /// Object `index`'s bytes for the wire: its chunks' frames from `store`, as
    /// [`WireFrame::encode_batch`] lays them out.
    pub fn payload(&self, store: &dyn ImageStore, index: usize) -> Result<Vec<u8>> {
        let object = self.object(index).ok_or_else(|| self.no_such(index))?;
        let frames = store.get_frames(&object.ids)?;
        let carried: usize = frames.iter().map(|f| f.parts.len()).sum();
        if carried < object.ids.len() {
            return Err(Error::ChunkMissing {
                image: "multicast".into(),
                chunk: format!("{} of object {index}", object.ids.len() - carried),
            });
        }
        Ok(WireFrame::encode_batch(&frames))
    }

    fn no_such(&self, index: usize) -> Error {
        Error::invalid(
            "multicast object",
            index.to_string(),
            format!("the image has {} objects", self.len()),
        )
    }

    /// Decodes object `index` from `payload` and checks every chunk against its id. A refusal
    /// (damaged, forged, another object's bytes, a chunk missing) says why; nothing is written.
    pub fn check(&self, index: usize, payload: &[u8]) -> std::result::Result<Checked, String> {
        let object = self.object(index).ok_or_else(|| self.no_such(index).to_string())?;
        let frames = WireFrame::decode_batch(payload, object.ids.len()).map_err(|e| e.to_string())?;
        let mut chunks: Vec<Option<Vec<u8>>> = vec![None; object.ids.len()];
        for frame in &frames {
            for (id, data) in frame.chunks(&object.ids).map_err(|e| e.to_string())? {
                if let Some(slot) = object.ids.iter().position(|i| *i == id).and_then(|i| chunks.get_mut(i)) {
                    slot.get_or_insert(data);
                }
            }
        }
        let mut checked = Vec::with_capacity(chunks.len());
        for (id, data) in object.ids.iter().zip(chunks) {
            let data = data.ok_or_else(|| format!("chunk {id} is not in it"))?;
            if let Some(u) = self
                .uses
                .get(id)
                .into_iter()
                .flatten()
                .find(|u| u.len as usize != data.len())
            {
                return Err(format!(
                    "chunk {id} is {} bytes, the image expects {}",
                    data.len(),
                    u.len
                ));
            }
            checked.push(data);
        }
        Ok(Checked { index, chunks: checked })
    }

    /// Writes each use of a checked object's chunks in a region `writer` writes.
    pub fn write(&self, checked: &Checked, writer: &DeployWriter<'_>) -> Result<Placed> {
        let object = self.object(checked.index).ok_or_else(|| self.no_such(checked.index))?;
        let mut placed = Placed::default();
        for (id, data) in object.ids.iter().zip(&checked.chunks) {
            for u in self.uses.get(id).into_iter().flatten() {
                if writer.writes_region(u.region) {
                    placed.written += writer.write(u.region, u.stream_offset, data)?;
                    placed.uses += 1;
                    placed.plain_bytes += u64::from(u.len);
                }
            }
        }
        Ok(placed)
    }

    /// [`Plan::check`], then [`Plan::write`]: a refused object is [`Error::ChunkCorrupt`] and
    /// writes nothing.
    pub fn place(&self, index: usize, payload: &[u8], writer: &DeployWriter<'_>) -> Result<Placed> {
        let checked = self.check(index, payload).map_err(|reason| Error::ChunkCorrupt {
            image: "multicast".into(),
            chunk: format!("object {index}"),
            reason,
        })?;
        self.write(&checked, writer)
    }

    /// The most fragments object `index` can take on the wire (a packet claiming more is not
    /// from this plan): a stored frame goes whole when the object's chunks make at least half of
    /// it, so twice its chunks stored raw, with the frames' headers and part tables.
    pub fn max_fragments(&self, index: usize, fragment: usize) -> usize {
        self.object(index).map_or(0, |o| {
            let bound = 2 * o.plain_bytes as usize + 32 * o.ids.len() + 1024;
            bound.div_ceil(fragment.max(1))
        })
    }
}

/// An object whose chunks all matched their ids, ready to be written.
#[derive(Debug)]
pub struct Checked {
    index: usize,
    chunks: Vec<Vec<u8>>,
}
