//! keygate-billing: what a request cost. Today: reading token usage from every
//! response shape keygate forwards — OpenAI chat completions, completions,
//! embeddings and Responses, Anthropic messages — from a complete JSON body or an
//! SSE stream split anywhere across frames. It does no HTTP serving and no IO.

mod sse;
mod usage;

pub use sse::{MAX_EVENT_BYTES, SseEvent, SseParser};
pub use usage::{ApiShape, StreamUsage, Usage, UsageSource, read_json};
