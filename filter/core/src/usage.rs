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
}
