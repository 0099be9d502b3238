//! Bounded text: what keygate echoes of a client's input in an error body or a log
//! field is cut to a fixed length first.

/// `text` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Longest model name keygate repeats back, in an error or the request log. A
/// key is longer, so a key pasted as a model or a path is never echoed.
pub(crate) const MAX_SHOWN_MODEL_LEN: usize = 64;

/// `model` if it is short and printable enough to repeat back; `None` otherwise.
pub(crate) fn shown_model(model: &str) -> Option<&str> {
    let printable = model.bytes().all(|b| b.is_ascii_graphic());
    (printable && !model.is_empty() && model.len() <= MAX_SHOWN_MODEL_LEN).then_some(model)
}

/// "the model 'x'", or "the requested model" when `x` is not [`shown_model`].
pub(crate) fn model_phrase(model: &str) -> String {
    match shown_model(model) {
        Some(model) => format!("the model '{model}'"),
        None => "the requested model".to_owned(),
    }
}

/// A standard method's name; "this method" for an extension method (its name is
/// the client's own text).
pub(crate) fn shown_method(method: &http::Method) -> &str {
    use http::Method;
    let standard = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::PATCH,
        Method::TRACE,
    ];
    if standard.contains(method) {
        method.as_str()
    } else {
        "this method"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_models_are_shown() {
        assert_eq!(shown_model("gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(shown_model("org/model:tag"), Some("org/model:tag"));
        let key = format!("kg_sk_{}", "a".repeat(72));
        assert_eq!(shown_model(&key), None);
        assert_eq!(shown_model(&"m".repeat(65)), None);
        assert_eq!(shown_model("has space"), None);
        assert_eq!(shown_model("tab\there"), None);
        assert_eq!(shown_model("new\nline"), None);
        assert_eq!(shown_model("é"), None);
        assert_eq!(shown_model(""), None);
        assert_eq!(
            model_phrase("x".repeat(100).as_str()),
            "the requested model"
        );
        assert_eq!(model_phrase("o3"), "the model 'o3'");
        let custom = http::Method::from_bytes(b"SECRETKEY").unwrap();
        assert_eq!(shown_method(&custom), "this method");
        assert_eq!(shown_method(&http::Method::GET), "GET");
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
