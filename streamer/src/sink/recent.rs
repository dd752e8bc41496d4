//! The keys a streamer's loader sessions committed lately: a hint of which
//! keys of a new chunk are stored, so that a chunk that re-sends recent
//! rows (an at-least-once producer, the generator's duplicates) is split
//! without looking its keys up in `events`.
//!
//! A hint is never trusted for correctness. A key it calls stored goes to
//! the stage and the merge, which insert it if it is not (a row deleted
//! since); the rest go straight in by COPY under a savepoint, which fails
//! on the first key that is stored after all (another session's, or older
//! than the hint), and then the chunk's keys are looked up as without a
//! hint.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use crate::batch::EventView;

/// How many keys a streamer keeps: about 1.6 MB. The generator re-sends
/// rows of its last 4 096; a producer that re-sends a file it was not sure
/// of re-sends one of its last few.
pub const RECENT_KEYS: usize = 1 << 15;

/// A key of `events`: user, then event time in microseconds.
pub type Key = (i32, i64);

/// The recent keys, oldest first, at most [`RECENT_KEYS`]: allocated
/// whole with the first batch, so that they never grow by doubling.
#[derive(Debug, Default)]
pub struct RecentKeys(Mutex<Keys>);

#[derive(Debug, Default)]
struct Keys {
    known: HashSet<Key>,
    order: VecDeque<Key>,
}

impl RecentKeys {
    /// Adds a committed batch's keys (its latest, at most [`RECENT_KEYS`]),
    /// forgetting the oldest beyond the bound.
    pub fn add(&self, keys: &[Key]) {
        let Ok(mut k) = self.0.lock() else { return };
        if k.order.capacity() == 0 {
            k.known.reserve(RECENT_KEYS);
            k.order.reserve_exact(RECENT_KEYS);
        }
        for &key in &keys[keys.len().saturating_sub(RECENT_KEYS)..] {
            if k.known.contains(&key) {
                continue;
            }
            if k.order.len() == RECENT_KEYS {
                if let Some(old) = k.order.pop_front() {
                    k.known.remove(&old);
                }
            }
            k.known.insert(key);
            k.order.push_back(key);
        }
    }

    /// The rows of `view` whose key is a recent one, as flags by row;
    /// `None` when there is none.
    pub fn flags(&self, view: &EventView<'_>) -> Option<Vec<bool>> {
        let k = self.0.lock().ok()?;
        if k.known.is_empty() {
            return None;
        }
        let recent = |i: usize| view.key(i).is_some_and(|key| k.known.contains(&key));
        // Usually no key is recent: the flags are allocated at the first one.
        let first = (0..view.len()).position(recent)?;
        let mut flags = vec![false; view.len()];
        for (i, flag) in flags.iter_mut().enumerate().skip(first) {
            *flag = recent(i);
        }
        Some(flags)
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|k| k.order.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys of a batch to remember once it commits: its latest rows', at
/// most [`RECENT_KEYS`].
#[derive(Debug, Default)]
pub struct BatchKeys(Vec<Key>);

impl BatchKeys {
    /// Notes a chunk's keys, forgetting the batch's oldest beyond the
    /// bound first (so that the list never outgrows it).
    pub fn note(&mut self, view: &EventView<'_>) {
        let take = view.len().min(RECENT_KEYS);
        let over = (self.0.len() + take).saturating_sub(RECENT_KEYS);
        self.0.drain(..over);
        self.0.reserve_exact(take);
        self.0.extend((view.len() - take..view.len()).filter_map(|i| view.key(i)));
    }

    pub fn keys(&self) -> &[Key] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_keys_are_forgotten_beyond_the_bound() {
        let recent = RecentKeys::default();
        let first: Vec<Key> = (0..100).map(|u| (u, 7)).collect();
        recent.add(&first);
        recent.add(&first);
        assert_eq!(recent.len(), 100, "a key is kept once");
        let many: Vec<Key> = (0..RECENT_KEYS as i64).map(|t| (-1, t)).collect();
        recent.add(&many);
        assert_eq!(recent.len(), RECENT_KEYS);
        let k = recent.0.lock().expect("not poisoned");
        assert!(!k.known.contains(&(0, 7)), "the first batch's keys went first");
        assert!(k.known.contains(&(-1, 0)) && k.known.contains(&(-1, RECENT_KEYS as i64 - 1)));
        assert_eq!(k.known.len(), k.order.len());
        assert_eq!(k.order.capacity(), RECENT_KEYS, "allocated once, never doubled");
    }

    #[test]
    fn a_chunk_is_flagged_by_its_recent_keys() {
        let header =
            "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time";
        let csv = |users: &[i32]| -> String {
            let rows: String =
                users.iter().map(|u| format!("{u},U,u@x,view,1,P,Home,1.50,2026-03-01T12:00:00Z\n")).collect();
            format!("{header}\n{rows}")
        };
        let first = crate::batch::read_whole(csv(&[1, 2, 3]).as_bytes(), 0).expect("valid").frame;
        let (recent, mut batch) = (RecentKeys::default(), BatchKeys::default());
        batch.note(&EventView::new(&first).expect("schema"));
        assert_eq!(batch.keys().len(), 3);
        let second = crate::batch::read_whole(csv(&[4, 2, 5]).as_bytes(), 0).expect("valid").frame;
        let view = EventView::new(&second).expect("schema");
        assert_eq!(recent.flags(&view), None, "nothing committed yet");
        recent.add(batch.keys());
        assert_eq!(recent.flags(&view), Some(vec![false, true, false]));
        let third = crate::batch::read_whole(csv(&[6, 7]).as_bytes(), 0).expect("valid").frame;
        assert_eq!(recent.flags(&EventView::new(&third).expect("schema")), None, "no recent key");
    }
}
