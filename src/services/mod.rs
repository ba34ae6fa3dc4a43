//! Use cases: each function here runs one operation end to end, combining domain rules
//! with storage and blobs. Adapters (HTTP, device protocols, MQTT, CLI) call these and
//! never touch storage for writes themselves.

pub mod firmware;

use crate::blob::BlobStore;
use crate::storage::Store;

/// What every use case may need: the database and the blob store.
#[derive(Clone)]
pub struct Core {
    pub store: Store,
    pub blobs: BlobStore,
}
