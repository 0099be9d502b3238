//! The configuration without a file: an OpenAI and an Anthropic upstream, each used
//! when its key variable is set, and the providers' list prices.

use keygate_config::{RawConfig, RawKeyEnv, RawKind, RawPrice, RawUpstream};

/// With no config file: OpenAI and Anthropic, each used when its key variable is set.
pub(super) fn builtin_defaults() -> RawConfig {
    let upstream = |name: &str, base_url: &str, kind, env: &str, models: &[&str]| RawUpstream {
        name: name.to_owned(),
        base_url: base_url.to_owned(),
        kind,
        api_key_env: Some(RawKeyEnv::One(env.to_owned())),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        ca_file: None,
        priority: None,
        weight: None,
        streams_per_connection: None,
        signing: None,
    };
    RawConfig {
        upstreams: vec![
            upstream(
                "openai",
                "https://api.openai.com/v1",
                RawKind::Openai,
                "OPENAI_API_KEY",
                &[
                    "gpt-*",
                    "o1*",
                    "o3*",
                    "o4*",
                    "chatgpt-*",
                    "text-embedding-*",
                    "dall-e-*",
                    "tts-*",
                    "whisper-*",
                ],
            ),
            upstream(
                "anthropic",
                "https://api.anthropic.com/v1",
                RawKind::Anthropic,
                "ANTHROPIC_API_KEY",
                &["claude-*"],
            ),
        ],
        prices: BUILTIN_PRICES
            .iter()
            .map(|&(model, input, output, cached)| {
                let price = RawPrice {
                    input_per_mtok: input,
                    output_per_mtok: output,
                    cached_input_per_mtok: Some(cached),
                };
                (model.to_owned(), price)
            })
            .collect(),
        ..RawConfig::default()
    }
}

/// Prices used without a config file: the providers' list prices in US dollars
/// per million tokens (input, output, cached input) as published in 2025, so a
/// first run bills in dollars. A `keygate.toml` sets its own `[prices]`.
const BUILTIN_PRICES: &[(&str, f64, f64, f64)] = &[
    ("gpt-4o", 2.5, 10.0, 1.25),
    ("gpt-4o-mini", 0.15, 0.6, 0.075),
    ("gpt-4.1", 2.0, 8.0, 0.5),
    ("gpt-4.1-mini", 0.4, 1.6, 0.1),
    ("gpt-4.1-nano", 0.1, 0.4, 0.025),
    ("o3", 2.0, 8.0, 0.5),
    ("o4-mini", 1.1, 4.4, 0.275),
    ("text-embedding-3-small", 0.02, 0.0, 0.02),
    ("text-embedding-3-large", 0.13, 0.0, 0.13),
    ("claude-sonnet-4-5", 3.0, 15.0, 0.3),
    ("claude-haiku-4-5", 1.0, 5.0, 0.1),
    ("claude-opus-4-1", 15.0, 75.0, 1.5),
];
