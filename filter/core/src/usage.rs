//! Token usage as providers report it.

use crate::spend::{charges_of, merge_charges, Charges, SpendBook};

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
    /// The part of `prompt_tokens` written to the provider's prompt cache.
    pub cache_creation_tokens: Option<u64>,
    /// The part of `completion_tokens` the model spent reasoning.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Prompt plus completion tokens, a side not reported counting 0 (what rate limits and
    /// the routing book charge); `None` when the provider reported neither. See
    /// [`Self::total_tokens`] for the sum only when both are known.
    pub fn reported_tokens(&self) -> Option<u64> {
        match (self.prompt_tokens, self.completion_tokens) {
            (None, None) => None,
            (prompt, completion) => {
                Some(prompt.unwrap_or(0).saturating_add(completion.unwrap_or(0)))
            }
        }
    }

    /// Whether the provider reported anything at all.
    pub fn is_reported(&self) -> bool {
        self.prompt_tokens.is_some() || self.completion_tokens.is_some()
    }

    /// Sum of prompt and completion tokens, when both are known (saturating).
    pub fn total_tokens(&self) -> Option<u64> {
        // The provider chose both numbers.
        Some(self.prompt_tokens?.saturating_add(self.completion_tokens?))
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
        if later.cache_creation_tokens.is_some() {
            self.cache_creation_tokens = later.cache_creation_tokens;
        }
        if later.reasoning_tokens.is_some() {
            self.reasoning_tokens = later.reasoning_tokens;
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

    /// Adds another response's counts (saturating: providers choose the numbers).
    pub fn add(&mut self, other: TokenCounts) {
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.completion = self.completion.saturating_add(other.completion);
        self.usage_missing = self.usage_missing.saturating_add(other.usage_missing);
    }
}

/// Usage records on their way to the control plane: queued ones not sent yet, and sent
/// batches kept until the control plane acknowledges them (`UsageAck`), so a stream that
/// breaks before the records are stored loses none of them: the next stream sends the
/// unacknowledged batches again, first (the control plane stores each record id once).
///
/// Bounded: at most [`Self::CAPACITY`] records, queued and unacknowledged together. While the
/// control plane is unreachable the oldest go first (and are counted by the caller), so an
/// outage cannot grow the filter's memory without bound. What a filter restart loses is what
/// this holds then: at most `CAPACITY` records.
#[derive(Debug, Default)]
pub struct UsageQueue {
    /// Records not sent yet, with what each charges.
    queued: std::collections::VecDeque<(crate::proto::UsageRecord, Charges)>,
    /// Sent batches not acknowledged yet, oldest first, as the encoded `FilterMessage` they
    /// went out as (resent byte for byte), with their record counts.
    unacked: std::collections::VecDeque<SentBatch>,
    /// Records in [`Self::unacked`].
    unacked_records: usize,
    /// Number of the last batch made.
    last_batch_id: u64,
    /// Batches of [`Self::unacked`] before this index have been sent on the current stream.
    sent_on_stream: usize,
    /// Spend per budgeted scope: pushed by the control plane plus the charges of the
    /// records here (and of stored ones the pushed spend does not count yet).
    pub spend: SpendBook,
}

#[derive(Debug)]
struct SentBatch {
    batch_id: u64,
    records: usize,
    message: Vec<u8>,
    /// What its records charge, per scope.
    charges: Charges,
}

impl UsageQueue {
    /// Records kept at most, queued and unacknowledged together.
    pub const CAPACITY: usize = 10_000;
    /// Records per message on the stream.
    pub const BATCH: usize = 500;
    /// Batches sent on a stream and not acknowledged yet, at most. A control plane slower
    /// than the filter (its database behind) then has at most this many batches to store
    /// before it reads the filter's next quota ask on the same stream, instead of every
    /// batch the filter made meanwhile; the rest waits here (bounded by [`Self::CAPACITY`]).
    /// The glues send more as acknowledgements come.
    pub const MAX_IN_FLIGHT: usize = 8;

    /// Queues a record; returns how many of the oldest records were dropped to make room
    /// (0 or, when a whole unacknowledged batch had to go, its size).
    pub fn push(&mut self, record: crate::proto::UsageRecord) -> usize {
        let mut dropped = 0;
        if self.queued.len() + self.unacked_records >= Self::CAPACITY {
            // The oldest records are those of the oldest unacknowledged batch. What they
            // charged will never reach the control plane: budgets stop counting it.
            if let Some(oldest) = self.unacked.pop_front() {
                self.unacked_records -= oldest.records;
                self.sent_on_stream = self.sent_on_stream.saturating_sub(1);
                self.spend.release(&oldest.charges);
                dropped = oldest.records;
            } else if let Some((_, charges)) = self.queued.pop_front() {
                self.spend.release(&charges);
                dropped = 1;
            }
        }
        let charges = charges_of(&record);
        self.spend.charge(&charges);
        self.queued.push_back((record, charges));
        dropped
    }

    /// The next message to send on the current stream, as encoded `FilterMessage` bytes:
    /// first every unacknowledged batch not yet sent on it (after a reconnect), then a new
    /// batch of up to [`Self::BATCH`] queued records. `None` when there is nothing to send.
    /// What it returns counts as sent; a glue whose send fails calls [`Self::stream_lost`].
    /// `None` too while [`Self::MAX_IN_FLIGHT`] batches wait for their acknowledgement.
    pub fn next_message(&mut self) -> Option<&[u8]> {
        if self.sent_on_stream >= Self::MAX_IN_FLIGHT {
            return None;
        }
        if self.sent_on_stream < self.unacked.len() {
            let at = self.sent_on_stream;
            self.sent_on_stream += 1;
            return self.unacked.get(at).map(|batch| batch.message.as_slice());
        }
        if self.queued.is_empty() {
            return None;
        }
        let take = self.queued.len().min(Self::BATCH);
        self.last_batch_id += 1;
        let mut charges = Charges::new();
        let records = self
            .queued
            .drain(..take)
            .map(|(record, record_charges)| {
                merge_charges(&mut charges, record_charges);
                record
            })
            .collect();
        let batch = crate::proto::UsageBatch {
            records,
            batch_id: self.last_batch_id,
        };
        let message = crate::proto::FilterMessage {
            kind: Some(crate::proto::filter_message::Kind::Usage(batch)),
        };
        self.unacked.push_back(SentBatch {
            batch_id: self.last_batch_id,
            records: take,
            message: prost::Message::encode_to_vec(&message),
            charges,
        });
        self.unacked_records += take;
        self.sent_on_stream = self.unacked.len();
        self.unacked.back().map(|batch| batch.message.as_slice())
    }

    /// The control plane stored these batches (at `ledger_seq`, see [`SpendBook`]): they
    /// are forgotten, and their charges wait for a spend update that counts them.
    pub fn acknowledge(&mut self, batch_ids: &[u64], ledger_seq: u64) {
        let mut at = 0;
        while at < self.unacked.len() {
            let acked = self
                .unacked
                .get(at)
                .is_some_and(|batch| batch_ids.contains(&batch.batch_id));
            if acked {
                if let Some(batch) = self.unacked.remove(at) {
                    self.unacked_records -= batch.records;
                    self.spend.stored(batch.charges, ledger_seq);
                }
                if at < self.sent_on_stream {
                    self.sent_on_stream -= 1;
                }
            } else {
                at += 1;
            }
        }
    }

    /// The stream ended (or a send failed): every unacknowledged batch goes again on the
    /// next one.
    pub fn stream_lost(&mut self) {
        self.sent_on_stream = 0;
        self.spend.stream_lost();
    }

    /// Records waiting: queued, and sent but not acknowledged.
    pub fn len(&self) -> usize {
        self.queued.len() + self.unacked_records
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Usage record ids: 128 bits each, unique per generator (a bijection of a counter) and
/// unrelated to anything a client sends, starting from a random seed the host provides once
/// (one generator per Wasm VM, one per native module), so ids of different VMs and Envoys do
/// not meet either.
#[derive(Debug, Clone)]
pub struct RecordIds {
    seed: u128,
    counter: u128,
}

impl RecordIds {
    /// Odd, so multiplying by it permutes the 128-bit integers.
    const STEP: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;

    /// A generator starting from `seed` (random bits from the host).
    pub fn new(seed: u128) -> Self {
        RecordIds { seed, counter: 0 }
    }

    /// The next id, as 32 lower-case hex digits.
    pub fn next_id(&mut self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.counter = self.counter.wrapping_add(1);
        let id = self.seed ^ self.counter.wrapping_mul(Self::STEP);
        // Once per request: a nibble loop costs a fraction of `format!`'s machinery.
        let mut digits = String::with_capacity(32);
        for shift in (0..32).rev() {
            let nibble = usize::try_from((id >> (shift * 4)) & 0xf).unwrap_or(0);
            digits.push(char::from(HEX.get(nibble).copied().unwrap_or(b'0')));
        }
        digits
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
            ..Default::default()
        };
        assert!(zero.is_reported());
        assert_eq!(zero.total_tokens(), Some(0));
    }

    /// Checked by the `openai_body` fuzz target: a provider's counts overflowed the sum.
    #[test]
    fn total_tokens_saturate() {
        let huge = Usage {
            prompt_tokens: Some(u64::MAX),
            completion_tokens: Some(1),
            cached_prompt_tokens: None,
            ..Default::default()
        };
        assert_eq!(huge.total_tokens(), Some(u64::MAX));
    }

    /// Checked by the fuzz targets: the counters of two responses with a provider's largest
    /// counts overflowed (a panic in a debug build, a wrap in a release one).
    #[test]
    fn token_counts_saturate() {
        let huge = Usage {
            prompt_tokens: Some(u64::MAX),
            completion_tokens: Some(u64::MAX),
            cached_prompt_tokens: None,
            ..Default::default()
        };
        let mut counts = TokenCounts::default();
        counts.add(TokenCounts::of_response(200, &huge));
        counts.add(TokenCounts::of_response(200, &huge));
        assert_eq!((counts.prompt, counts.completion), (u64::MAX, u64::MAX));
    }

    #[test]
    fn merge_keeps_earlier_fields() {
        let mut usage = Usage {
            prompt_tokens: Some(10),
            completion_tokens: Some(1),
            cached_prompt_tokens: None,
            ..Default::default()
        };
        usage.merge(Usage {
            prompt_tokens: None,
            completion_tokens: Some(7),
            cached_prompt_tokens: None,
            ..Default::default()
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
            ..Default::default()
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

    fn record(id: usize) -> crate::proto::UsageRecord {
        crate::proto::UsageRecord {
            id: id.to_string(),
            ..Default::default()
        }
    }

    fn batch_of(message: &[u8]) -> crate::proto::UsageBatch {
        use prost::Message;
        match crate::proto::FilterMessage::decode(message).unwrap().kind {
            Some(crate::proto::filter_message::Kind::Usage(batch)) => batch,
            other => panic!("not a usage batch: {other:?}"),
        }
    }

    #[test]
    fn batches_stay_until_acknowledged_and_go_again_after_a_reconnect() {
        let mut queue = UsageQueue::default();
        for id in 0..UsageQueue::BATCH + 10 {
            assert_eq!(queue.push(record(id)), 0);
        }
        let first = batch_of(queue.next_message().unwrap());
        assert_eq!(
            (first.batch_id, first.records.len()),
            (1, UsageQueue::BATCH)
        );
        assert_eq!(first.records[0].id, "0");
        let second = batch_of(queue.next_message().unwrap());
        assert_eq!((second.batch_id, second.records.len()), (2, 10));
        assert!(queue.next_message().is_none(), "all sent on this stream");
        assert_eq!(
            queue.len(),
            UsageQueue::BATCH + 10,
            "kept until acknowledged"
        );

        // The stream breaks before the first batch is acknowledged, after the second is.
        queue.acknowledge(&[2], 0);
        assert_eq!(queue.len(), UsageQueue::BATCH);
        queue.stream_lost();
        queue.push(record(9999));
        let resent = batch_of(queue.next_message().unwrap());
        assert_eq!(resent, first, "the same batch, same number, same records");
        let new = batch_of(queue.next_message().unwrap());
        assert_eq!((new.batch_id, new.records[0].id.as_str()), (3, "9999"));
        assert!(queue.next_message().is_none());
        queue.acknowledge(&[1, 3, 77], 0);
        assert!(queue.is_empty());
        queue.stream_lost();
        assert!(queue.next_message().is_none());
    }

    #[test]
    fn at_most_max_in_flight_batches_wait_for_their_acknowledgement() {
        let mut queue = UsageQueue::default();
        let batches = UsageQueue::MAX_IN_FLIGHT + 2;
        for id in 0..batches * UsageQueue::BATCH {
            queue.push(record(id));
        }
        let sent: Vec<u64> = std::iter::from_fn(|| queue.next_message().map(batch_of))
            .map(|batch| batch.batch_id)
            .collect();
        assert_eq!(sent, (1..=8).collect::<Vec<u64>>());
        // One acknowledged: one more goes; the rest waits for the next.
        queue.acknowledge(&[3], 0);
        assert_eq!(batch_of(queue.next_message().unwrap()).batch_id, 9);
        assert!(queue.next_message().is_none());
        // After a reconnect the unacknowledged go again, as many at once.
        queue.stream_lost();
        let resent: Vec<u64> = std::iter::from_fn(|| queue.next_message().map(batch_of))
            .map(|batch| batch.batch_id)
            .collect();
        assert_eq!(resent, [1, 2, 4, 5, 6, 7, 8, 9]);
        queue.acknowledge(&[1, 2, 4, 5, 6, 7, 8, 9], 0);
        assert_eq!(batch_of(queue.next_message().unwrap()).batch_id, 10);
        assert!(queue.next_message().is_none());
        assert_eq!(queue.len(), UsageQueue::BATCH);
    }

    #[test]
    fn the_usage_queue_is_bounded_counting_what_it_drops() {
        let mut queue = UsageQueue::default();
        for id in 0..UsageQueue::BATCH {
            queue.push(record(id));
        }
        queue.next_message().unwrap();
        for id in UsageQueue::BATCH..UsageQueue::CAPACITY {
            assert_eq!(queue.push(record(id)), 0);
        }
        assert_eq!(queue.len(), UsageQueue::CAPACITY);
        // Full: the oldest unacknowledged batch goes whole, then single queued records.
        assert_eq!(queue.push(record(UsageQueue::CAPACITY)), UsageQueue::BATCH);
        assert_eq!(queue.len(), UsageQueue::CAPACITY - UsageQueue::BATCH + 1);
        for id in 0..UsageQueue::BATCH - 1 {
            assert_eq!(queue.push(record(UsageQueue::CAPACITY + 1 + id)), 0);
        }
        assert_eq!(queue.push(record(2 * UsageQueue::CAPACITY)), 1);
        assert_eq!(queue.len(), UsageQueue::CAPACITY);
        let next = batch_of(queue.next_message().unwrap());
        assert_eq!(next.records[0].id, (UsageQueue::BATCH + 1).to_string());
    }

    #[test]
    fn record_ids_are_128_bit_hex_and_unique() {
        let mut ids = RecordIds::new(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let made: std::collections::HashSet<String> = (0..10_000).map(|_| ids.next_id()).collect();
        assert_eq!(made.len(), 10_000);
        assert!(made
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        let mut other = RecordIds::new(1);
        assert_ne!(other.next_id(), RecordIds::new(2).next_id());
        // The digits are the number's: seed 0 makes the first id STEP itself.
        assert_eq!(
            RecordIds::new(0).next_id(),
            format!("{:032x}", RecordIds::STEP)
        );
    }
}
