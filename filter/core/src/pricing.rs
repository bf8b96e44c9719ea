//! What a response costs, from the deployment's prices and the tokens the provider
//! reported. The filter prices each response itself, so the cost is known the moment the
//! response ends: for the client's header, for budgets, and for the usage record.

use crate::proto;
use crate::usage::Usage;

/// US dollars per token of one deployment. `None` is an unknown price, not a free one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prices {
    /// Input tokens not read from or written to the prompt cache.
    pub input: Option<f64>,
    /// Output tokens (reasoning ones too, unless [`Self::reasoning`] is set).
    pub output: Option<f64>,
    /// Input tokens read from the prompt cache; `None`: [`Self::input`].
    pub cache_read: Option<f64>,
    /// Input tokens written to the prompt cache; `None`: [`Self::input`].
    pub cache_creation: Option<f64>,
    /// Reasoning tokens (a part of the output); `None`: [`Self::output`].
    pub reasoning: Option<f64>,
}

/// Keeps a price only when it is one: finite and not negative (the control plane
/// validates prices; a bad one reaching the filter is treated as unknown, not as free).
fn price(value: Option<f64>) -> Option<f64> {
    value.filter(|value| value.is_finite() && *value >= 0.0)
}

impl Prices {
    /// The prices of a snapshot's deployment; `None` when it has no pricing at all.
    pub fn from_proto(pricing: &proto::Pricing) -> Option<Prices> {
        let prices = Prices {
            input: price(pricing.input_cost_per_token),
            output: price(pricing.output_cost_per_token),
            cache_read: price(pricing.cache_read_input_token_cost),
            cache_creation: price(pricing.cache_creation_input_token_cost),
            reasoning: price(pricing.output_cost_per_reasoning_token),
        };
        (prices != Prices::default()).then_some(prices)
    }

    /// The cost of `usage` in US dollars, or `None` when it cannot be known: the provider
    /// reported no usage, or tokens were used whose price is unknown.
    ///
    /// Cache reads and writes are parts of `prompt_tokens`, reasoning a part of
    /// `completion_tokens` (as OpenAI reports them, and as the Anthropic translator adds
    /// them up); each part is priced at its own rate and the rest at the plain one.
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        if !usage.is_reported() {
            return None;
        }
        let prompt = usage.prompt_tokens.unwrap_or(0);
        let cached = usage.cached_prompt_tokens.unwrap_or(0).min(prompt);
        let created = usage
            .cache_creation_tokens
            .unwrap_or(0)
            .min(prompt - cached);
        let plain_input = prompt - cached - created;
        let completion = usage.completion_tokens.unwrap_or(0);
        let reasoning = usage.reasoning_tokens.unwrap_or(0).min(completion);
        let plain_output = completion - reasoning;

        // Tokens without a rate of their own are priced with the plain ones, in one product
        // (so 1000 input tokens at 1e-6 cost exactly what 1000 * 1e-6 is, however the
        // provider split them).
        let (mut input_tokens, mut output_tokens) = (plain_input, plain_output);
        let own = |tokens: u64, rate: Option<f64>, plain: &mut u64| match rate {
            Some(rate) => (tokens, Some(rate)),
            None => {
                *plain += tokens;
                (0, None)
            }
        };
        let cached_part = own(cached, self.cache_read, &mut input_tokens);
        let created_part = own(created, self.cache_creation, &mut input_tokens);
        let reasoning_part = own(reasoning, self.reasoning, &mut output_tokens);
        let parts = [
            cached_part,
            created_part,
            reasoning_part,
            (input_tokens, self.input),
            (output_tokens, self.output),
        ];
        let mut cost = 0.0;
        for (tokens, rate) in parts {
            if tokens == 0 {
                continue;
            }
            // Token counts are far below 2^53: the conversion is exact.
            cost += tokens as f64 * rate?;
        }
        Some(cost)
    }
}

/// A cost as the `x-litellm-response-cost` header carries it: the shortest decimal that
/// reads back as the same number, never in exponent notation.
pub fn cost_header_value(cost: f64) -> String {
    format!("{cost}")
}

/// The cost a stream's usage chunk carries: the deployment's price of the usage reported so
/// far, or `None` when it is unknown (no prices, no usage) or not a JSON number (a price so
/// large the product overflows).
pub fn stream_cost(prices: Option<&Prices>, usage: &Usage) -> Option<f64> {
    prices?.cost(usage).filter(|cost| cost.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            ..Usage::default()
        }
    }

    const GPT_4O: Prices = Prices {
        input: Some(2.5e-6),
        output: Some(1e-5),
        cache_read: Some(1.25e-6),
        cache_creation: None,
        reasoning: None,
    };

    #[test]
    fn prices_input_and_output_tokens() {
        assert_eq!(
            GPT_4O.cost(&usage(1000, 100)),
            Some(1000.0 * 2.5e-6 + 100.0 * 1e-5)
        );
        assert_eq!(GPT_4O.cost(&usage(0, 0)), Some(0.0));
    }

    #[test]
    fn cached_tokens_are_priced_at_the_cache_rate() {
        let usage = Usage {
            cached_prompt_tokens: Some(400),
            ..usage(1000, 100)
        };
        assert_eq!(
            GPT_4O.cost(&usage),
            Some(400.0 * 1.25e-6 + 600.0 * 2.5e-6 + 100.0 * 1e-5)
        );
    }

    #[test]
    fn cache_writes_and_reasoning_have_their_own_rates() {
        let claude = Prices {
            input: Some(3e-6),
            output: Some(1.5e-5),
            cache_read: Some(3e-7),
            cache_creation: Some(3.75e-6),
            reasoning: Some(2e-5),
        };
        let usage = Usage {
            cached_prompt_tokens: Some(100),
            cache_creation_tokens: Some(200),
            reasoning_tokens: Some(30),
            ..usage(1000, 50)
        };
        assert_eq!(
            claude.cost(&usage),
            Some(100.0 * 3e-7 + 200.0 * 3.75e-6 + 30.0 * 2e-5 + 700.0 * 3e-6 + 20.0 * 1.5e-5)
        );
    }

    #[test]
    fn without_their_own_rates_cache_and_reasoning_tokens_cost_the_plain_rate() {
        let plain = Prices {
            input: Some(1e-6),
            output: Some(2e-6),
            ..Prices::default()
        };
        let usage = Usage {
            cached_prompt_tokens: Some(10),
            cache_creation_tokens: Some(20),
            reasoning_tokens: Some(5),
            ..usage(100, 10)
        };
        assert_eq!(plain.cost(&usage), Some(100.0 * 1e-6 + 10.0 * 2e-6));
    }

    #[test]
    fn unknown_usage_or_price_is_an_unknown_cost_not_zero() {
        assert_eq!(GPT_4O.cost(&Usage::default()), None);
        let input_only = Prices {
            input: Some(1e-6),
            ..Prices::default()
        };
        assert_eq!(input_only.cost(&usage(10, 1)), None);
        // No output tokens: the unknown output price does not matter.
        assert_eq!(input_only.cost(&usage(10, 0)), Some(10.0 * 1e-6));
    }

    #[test]
    fn parts_larger_than_their_whole_are_clamped() {
        // A provider reporting more cached than prompt tokens is not believed past the total.
        let usage = Usage {
            cached_prompt_tokens: Some(5000),
            reasoning_tokens: Some(900),
            ..usage(1000, 100)
        };
        assert_eq!(
            GPT_4O.cost(&usage),
            Some(1000.0 * 1.25e-6 + 0.0 * 2.5e-6 + 100.0 * 1e-5)
        );
    }

    #[test]
    fn bad_prices_are_unknown() {
        let pricing = proto::Pricing {
            input_cost_per_token: Some(f64::NAN),
            output_cost_per_token: Some(-1.0),
            ..Default::default()
        };
        assert_eq!(Prices::from_proto(&pricing), None);
        let pricing = proto::Pricing {
            input_cost_per_token: Some(0.0),
            output_cost_per_token: Some(f64::INFINITY),
            ..Default::default()
        };
        let prices = Prices::from_proto(&pricing).unwrap();
        assert_eq!((prices.input, prices.output), (Some(0.0), None));
    }

    #[test]
    fn the_header_value_is_plain_decimal() {
        assert_eq!(cost_header_value(0.000075), "0.000075");
        assert_eq!(cost_header_value(0.0), "0");
        assert_eq!(cost_header_value(12.5), "12.5");
    }
}
