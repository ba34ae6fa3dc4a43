//! An in-memory cache of small blobs (firmware images are at most 16 MiB), bounded by total
//! size and evicted least-recently-used first. A fleet downloads the same few builds over and
//! over: with the cache, a thousand concurrent downloads of one build share one copy of its
//! bytes (each response is a set of zero-copy slices) instead of a thousand read buffers.
//! Concurrent first requests for a blob load it once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::domain::Result;

pub struct BlobCache {
    capacity: usize,
    max_entry: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    total: usize,
    clock: u64,
}

struct Entry {
    cell: Arc<OnceCell<Bytes>>,
    size: usize,
    last_used: u64,
}

impl BlobCache {
    /// `capacity` bytes in all; blobs larger than `capacity / 4` (at most 16 MiB) are not cached.
    pub fn new(capacity: usize) -> Self {
        BlobCache { capacity, max_entry: (capacity / 4).min(16 << 20), state: Mutex::default() }
    }

    pub fn accepts(&self, size: u64) -> bool {
        self.capacity > 0 && size <= self.max_entry as u64
    }

    /// The cached bytes of `key`, loading them with `load` on a miss.
    pub async fn get_or_load<F, Fut>(&self, key: &str, load: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        let cell = {
            let mut state = self.state.lock().expect("cache lock");
            state.clock += 1;
            let clock = state.clock;
            let entry = state.entries.entry(key.to_string()).or_insert_with(|| Entry {
                cell: Arc::new(OnceCell::new()),
                size: 0,
                last_used: clock,
            });
            entry.last_used = clock;
            entry.cell.clone()
        };
        let bytes = cell.get_or_try_init(load).await?.clone();
        let mut state = self.state.lock().expect("cache lock");
        if let Some(entry) = state.entries.get_mut(key)
            && entry.size == 0
            && Arc::ptr_eq(&entry.cell, &cell)
        {
            entry.size = bytes.len().max(1);
            state.total += bytes.len().max(1);
            evict(&mut state, self.capacity, key);
        }
        Ok(bytes)
    }

    pub fn remove(&self, key: &str) {
        let mut state = self.state.lock().expect("cache lock");
        if let Some(entry) = state.entries.remove(key) {
            state.total -= entry.size;
        }
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.state.lock().expect("cache lock").total
    }
}

/// Drops least-recently-used loaded entries (never `keep`) until the total fits.
fn evict(state: &mut State, capacity: usize, keep: &str) {
    while state.total > capacity {
        let oldest = state
            .entries
            .iter()
            .filter(|(key, entry)| entry.size > 0 && key.as_str() != keep)
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(key, _)| key.clone());
        let Some(oldest) = oldest else { break };
        if let Some(entry) = state.entries.remove(&oldest) {
            state.total -= entry.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_load_once_and_the_total_stays_bounded() {
        let cache = Arc::new(BlobCache::new(400));
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("a", || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok(Bytes::from(vec![1u8; 100]))
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().len(), 100);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        for key in ["b", "c", "d", "e"] {
            cache.get_or_load(key, || async { Ok(Bytes::from(vec![0u8; 100])) }).await.unwrap();
        }
        assert!(cache.total() <= 400);
        assert!(cache.accepts(100) && !cache.accepts(101));
        cache.remove("e");
        assert!(cache.total() <= 300);
    }
}
