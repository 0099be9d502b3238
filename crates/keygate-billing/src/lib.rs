//! keygate-billing: what a request costs, from the bytes keygate forwards. It
//! reads token usage from every response shape — OpenAI chat completions,
//! completions, embeddings and Responses, Anthropic messages — from a complete
//! JSON body or an SSE stream split anywhere across frames; prices models in
//! integer micro-units and computes costs rounded up to the micro; bounds what to
//! reserve before forwarding from the body size and its output cap; and asks an
//! OpenAI stream for usage the client did not request (`stream_options`), then
//! hides the extra usage chunk from that client. It does no HTTP serving and no IO.

mod inject;
mod price;
mod sse;
mod usage;

pub use inject::{Injection, MAX_HELD_EVENT_BYTES, UsageChunkFilter, inject_include_usage};
pub use price::{
    DEFAULT_OUTPUT_RESERVE, MAX_PRICE_CREDITS, MAX_PRICE_PER_MTOK, Price, PriceError, PriceTable,
    ReservationRule, max_output_tokens, reserve_upper_bound,
};
pub use sse::{MAX_EVENT_BYTES, SseEvent, SseParser};
pub use usage::{
    ApiShape, JSON_TAIL_BYTES, JsonUsage, MAX_JSON_BODY_BYTES, StreamUsage, Usage, UsageSource,
    read_json,
};
