//! The demo's fixed values: the provider keys the gateway holds, the model it
//! asks for and the reply the mock provider gives.

use keygate_test_utils::{MOCK_ANTHROPIC_KEY_ENV, MOCK_OPENAI_KEY_ENV};

/// The provider key the gateway holds; clients never see it.
pub(super) const PROVIDER_KEY: &str = "sk-demo-provider-key";
/// The Anthropic upstream's key (configured, not used by the demo's requests).
const ANTHROPIC_KEY: &str = "sk-ant-demo";
/// The gateway's environment: where its provider keys come from.
pub(super) const GATEWAY_ENV: [(&str, &str); 2] = [
    (MOCK_OPENAI_KEY_ENV, PROVIDER_KEY),
    (MOCK_ANTHROPIC_KEY_ENV, ANTHROPIC_KEY),
];
/// The mock provider's default answer.
pub(super) const REPLY: &str = "The quick brown fox jumps over the lazy dog.";
/// The model every chat completion asks for.
pub(super) const MODEL: &str = "gpt-4o-mini";
