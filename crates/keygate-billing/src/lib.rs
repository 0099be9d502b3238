//! keygate-billing: what a request costs, from the bytes keygate forwards. It
//! reads token usage from every response shape — OpenAI chat completions,
//! completions, embeddings and Responses, Anthropic messages — from a complete
//! JSON body or an SSE stream split anywhere across frames; prices models in
//! integer micro-units and computes costs rounded up to the micro; bounds what to
//! reserve before forwarding from the body size, its output cap and `n`, read
//! strictly ([`BillingInputs`]: a duplicated or malformed field is refused);
//! and asks an OpenAI stream for usage the client did not request
//! (`stream_options`), then hides the extra usage chunk from that client. It does no HTTP serving and no IO,
//! and needs no database: money is [`Micros`] and the usage source is
//! [`UsageSource`], both from `keygate-types`.
//!
//! What an embedder writes: price a model, read the usage from a response body,
//! and cost it.
//!
//! ```
//! use keygate_billing::{ApiShape, Micros, Price, PriceTable, UsageSource, read_json};
//!
//! // 2.5 credits per million input tokens, 10 per million output tokens.
//! let mut prices = PriceTable::new();
//! prices.insert("gpt-4o", Price::from_credits(2.5, 10.0, None)?);
//!
//! let body = br#"{"id":"chatcmpl-1","choices":[],
//!     "usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200}}"#;
//! let usage = read_json(ApiShape::OpenAiCompletions, body);
//! assert_eq!(usage.source, UsageSource::Reported);
//! assert_eq!((usage.input_tokens, usage.output_tokens), (1000, 200));
//!
//! let cost = prices.get("gpt-4o").map(|price| price.cost(&usage));
//! assert_eq!(cost, Some(Micros(4_500))); // 0.0025 + 0.002 credits
//! assert_eq!(cost.map(|c| c.to_string()).as_deref(), Some("0.0045"));
//! # Ok::<(), keygate_billing::PriceError>(())
//! ```

mod inject;
mod inputs;
mod price;
mod sse;
mod usage;

pub use keygate_types::{Micros, UsageSource};

pub use inject::{Injection, MAX_HELD_EVENT_BYTES, UsageChunkFilter, inject_include_usage};
pub use inputs::{
    BillingInputs, BodyError, InputError, InputReason, MAX_N, MAX_OUTPUT_CAP, parse_n,
};
pub use price::{
    DEFAULT_OUTPUT_RESERVE, Demand, MAX_PRICE_CREDITS, MAX_PRICE_PER_MTOK, Price, PriceError,
    PriceTable, ReservationRule, UPLOAD_INPUT_RESERVE, reserve_upper_bound,
};
pub use sse::{MAX_EVENT_BYTES, SseEvent, SseParser};
pub use usage::{
    ApiShape, JSON_TAIL_BYTES, JsonUsage, MAX_JSON_BODY_BYTES, MAX_REPORTED_TOKENS, StreamUsage,
    Usage, read_json,
};
