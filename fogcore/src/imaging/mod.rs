//! Imaging: disks, partition tables, used-block maps, chunks, the store, capture, deploy and
//! wipe.

pub mod batch;
pub mod capture;
pub mod carousel;
pub mod chunk;
pub mod chunker;
pub mod cursor;
pub mod deploy;
pub mod disk;
pub mod extent;
pub mod fs;
pub mod loopdev;
pub mod manifest;
pub mod partition;
pub mod replica;
pub mod resize;
pub mod shrink;
pub mod store;
pub mod wipe;
