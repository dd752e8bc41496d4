//! The streamer (skeleton; filled by the streamer issue).
