use std::future::Future;
use std::time::Duration;

use crate::FeedError;

/// One record read from the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Local topic name (`interactions`), without the Kafka namespace.
    pub topic: String,
    /// Always 0 on the embedded log.
    pub partition: i32,
    /// Position within the topic's partition; increases, not necessarily by one.
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
}

/// A consumer-group member reading the feed, whichever backend holds it.
///
/// The contract that makes delivery exactly-once in effect: a consumer
/// applies a batch durably (deduplicating by envelope id), then commits it.
/// A crash between the two replays the batch, and the dedupe absorbs it.
pub trait FeedSource: Send {
    /// Returns up to `max` records after the last ones returned, waiting up
    /// to `wait` for the first; an empty batch when none arrived.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Record>, FeedError>> + Send;

    /// Records that every record in `records` (and all before them in their
    /// partitions) has been applied, so the group resumes after them.
    fn commit(&mut self, records: &[Record]) -> impl Future<Output = Result<(), FeedError>> + Send;
}
