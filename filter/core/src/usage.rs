//! Token usage as providers report it.

/// Token counts of one response. `None` means the provider did not report the number,
/// which is not the same as 0 (spend and limits must know the difference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cache reads and writes included.
    pub prompt_tokens: Option<u64>,
    /// Output tokens.
    pub completion_tokens: Option<u64>,
    /// The part of `prompt_tokens` served from the provider's prompt cache.
    pub cached_prompt_tokens: Option<u64>,
}

impl Usage {
    /// Whether the provider reported anything at all.
    pub fn is_reported(&self) -> bool {
        self.prompt_tokens.is_some() || self.completion_tokens.is_some()
    }

    /// Sum of prompt and completion tokens, when both are known.
    pub fn total_tokens(&self) -> Option<u64> {
        Some(self.prompt_tokens? + self.completion_tokens?)
    }

    /// Merges a later report into this one: fields the later one reports win, fields it
    /// leaves out keep their earlier values (streams report input and output separately).
    pub fn merge(&mut self, later: Usage) {
        if later.prompt_tokens.is_some() {
            self.prompt_tokens = later.prompt_tokens;
        }
        if later.completion_tokens.is_some() {
            self.completion_tokens = later.completion_tokens;
        }
        if later.cached_prompt_tokens.is_some() {
            self.cached_prompt_tokens = later.cached_prompt_tokens;
        }
    }
}

/// Token counters of successful responses, as the stats count them: tokens when the
/// provider reported usage, else one "usage missing" (spend unknown, not 0).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenCounts {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Successful responses that reported no usage.
    pub usage_missing: u64,
}

impl TokenCounts {
    /// The counts one response with `status` and `usage` adds.
    pub fn of_response(status: u16, usage: &Usage) -> Self {
        if usage.is_reported() {
            TokenCounts {
                prompt: usage.prompt_tokens.unwrap_or(0),
                completion: usage.completion_tokens.unwrap_or(0),
                usage_missing: 0,
            }
        } else if (200..300).contains(&status) {
            TokenCounts {
                usage_missing: 1,
                ..TokenCounts::default()
            }
        } else {
            TokenCounts::default()
        }
    }

    /// Adds another response's counts.
    pub fn add(&mut self, other: TokenCounts) {
        self.prompt += other.prompt;
        self.completion += other.completion;
        self.usage_missing += other.usage_missing;
    }
}

/// Usage records waiting for the control plane, oldest first. Bounded: while the control
/// plane is unreachable the oldest are dropped (and counted by the caller), so an outage
/// cannot grow the filter's memory without bound.
#[derive(Debug, Default)]
pub struct UsageQueue {
    records: std::collections::VecDeque<crate::proto::UsageRecord>,
}

impl UsageQueue {
    /// Records kept at most.
    pub const CAPACITY: usize = 10_000;
    /// Records per message on the stream.
    pub const BATCH: usize = 500;

    /// Queues a record; returns whether the oldest was dropped to make room.
    pub fn push(&mut self, record: crate::proto::UsageRecord) -> bool {
        let dropped = self.records.len() >= Self::CAPACITY;
        if dropped {
            self.records.pop_front();
        }
        self.records.push_back(record);
        dropped
    }

    /// Takes the next batch (up to [`Self::BATCH`] records, oldest first).
    pub fn take_batch(&mut self) -> Vec<crate::proto::UsageRecord> {
        let take = self.records.len().min(Self::BATCH);
        self.records.drain(..take).collect()
    }

    /// Puts a batch the stream refused back at the front, in order (the next stream resends
    /// it; the control plane dedupes by id).
    pub fn put_back(&mut self, batch: Vec<crate::proto::UsageRecord>) {
        for record in batch.into_iter().rev() {
            self.records.push_front(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_reported_is_not_zero() {
        let usage = Usage::default();
        assert!(!usage.is_reported());
        assert_eq!(usage.total_tokens(), None);
        let zero = Usage {
            prompt_tokens: Some(0),
            completion_tokens: Some(0),
            cached_prompt_tokens: None,
        };
        assert!(zero.is_reported());
        assert_eq!(zero.total_tokens(), Some(0));
    }

    #[test]
    fn merge_keeps_earlier_fields() {
        let mut usage = Usage {
            prompt_tokens: Some(10),
            completion_tokens: Some(1),
            cached_prompt_tokens: None,
        };
        usage.merge(Usage {
            prompt_tokens: None,
            completion_tokens: Some(7),
            cached_prompt_tokens: None,
        });
        assert_eq!(usage.prompt_tokens, Some(10));
        assert_eq!(usage.completion_tokens, Some(7));
    }

    #[test]
    fn token_counts_keep_not_reported_apart_from_zero() {
        let reported = Usage {
            prompt_tokens: Some(3),
            completion_tokens: Some(0),
            cached_prompt_tokens: None,
        };
        assert_eq!(
            TokenCounts::of_response(200, &reported),
            TokenCounts {
                prompt: 3,
                completion: 0,
                usage_missing: 0
            }
        );
        let missing = TokenCounts::of_response(200, &Usage::default());
        assert_eq!(missing.usage_missing, 1);
        assert_eq!(
            TokenCounts::of_response(500, &Usage::default()),
            TokenCounts::default()
        );
    }

    #[test]
    fn the_usage_queue_is_bounded_batched_and_keeps_order() {
        let record = |id: usize| crate::proto::UsageRecord {
            id: id.to_string(),
            ..Default::default()
        };
        let mut queue = UsageQueue::default();
        for id in 0..UsageQueue::CAPACITY {
            assert!(!queue.push(record(id)));
        }
        assert!(queue.push(record(UsageQueue::CAPACITY)), "the oldest goes");
        let batch = queue.take_batch();
        assert_eq!(batch.len(), UsageQueue::BATCH);
        assert_eq!(batch[0].id, "1");
        queue.put_back(batch);
        assert_eq!(
            queue.take_batch()[0].id,
            "1",
            "a refused batch comes back first"
        );
    }
}
