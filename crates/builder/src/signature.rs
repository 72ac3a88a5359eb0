//! Webhook signatures: GitHub's `X-Hub-Signature-256` header, the
//! HMAC-SHA256 of the raw request body keyed with the webhook's secret,
//! written `sha256=<64 hex digits>`.
//!
//! The signature is checked on the raw bytes before anything parses them,
//! and compared in constant time. The legacy `X-Hub-Signature` (HMAC-SHA1)
//! is never accepted, even when it is the only one sent: SHA-1 is broken for
//! collisions and GitHub sends both headers whenever a secret is set. The
//! generic `POST /webhooks/git` endpoint uses the same header, so any host
//! (or a script) can sign with [`sign`].

use aws_lc_rs::hmac;

/// The header carrying the HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// GitHub's legacy HMAC-SHA1 header, refused.
pub const LEGACY_SIGNATURE_HEADER: &str = "X-Hub-Signature";

const PREFIX: &str = "sha256=";
/// How much of a malformed header value an error quotes.
const QUOTE_LIMIT: usize = 80;

/// The signature headers of one request, as received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    /// `X-Hub-Signature-256`.
    pub sha256: Option<&'a str>,
    /// `X-Hub-Signature` (only looked at to explain a refusal).
    pub sha1: Option<&'a str>,
}

/// Why a request's signature was refused. Every variant is the caller's
/// mistake (answered 401), never an internal error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "missing header `X-Hub-Signature-256`: set a secret on the webhook (the trigger's webhook secret) so that deliveries are signed with HMAC-SHA256"
    )]
    Missing,
    #[error(
        "only `X-Hub-Signature` (HMAC-SHA1) was sent, and SHA-1 signatures are refused: send `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (GitHub sends it whenever the webhook has a secret)"
    )]
    Sha1Only,
    #[error(
        "header `X-Hub-Signature-256` must be `sha256=` followed by 64 hex digits, got `{value}`"
    )]
    Malformed { value: String },
    #[error(
        "header `X-Hub-Signature-256` does not match the body: the webhook's secret differs from the trigger's webhook secret (or the body was altered on the way)"
    )]
    Mismatch,
    #[error("the webhook secret is empty: configure a non-empty secret on the trigger")]
    EmptySecret,
}

/// Checks that `headers` carry the HMAC-SHA256 of `body` under `secret`.
pub fn verify(
    secret: &[u8],
    body: &[u8],
    headers: SignatureHeaders<'_>,
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::EmptySecret);
    }
    let value = match (headers.sha256, headers.sha1) {
        (Some(value), _) => value.trim(),
        (None, Some(_)) => return Err(SignatureError::Sha1Only),
        (None, None) => return Err(SignatureError::Missing),
    };
    if value.starts_with("sha1=") {
        return Err(SignatureError::Sha1Only);
    }
    let digest = value
        .strip_prefix(PREFIX)
        .and_then(decode_hex_32)
        .ok_or_else(|| SignatureError::Malformed {
            value: quote(value),
        })?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // `hmac::verify` compares in constant time.
    hmac::verify(&key, body, &digest).map_err(|_| SignatureError::Mismatch)
}

/// The `X-Hub-Signature-256` value for `body` under `secret`:
/// `sha256=<hex>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, body);
    format!("{PREFIX}{}", crate::hex(tag.as_ref()))
}

fn decode_hex_32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *slot = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_LIMIT) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published example ("Validating webhook deliveries").
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_PAYLOAD: &str = "Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn headers(sha256: &str) -> SignatureHeaders<'_> {
        SignatureHeaders {
            sha256: Some(sha256),
            sha1: None,
        }
    }

    #[test]
    fn githubs_published_test_vector() {
        assert_eq!(
            sign(GITHUB_SECRET.as_bytes(), GITHUB_PAYLOAD.as_bytes()),
            GITHUB_SIGNATURE
        );
        verify(
            GITHUB_SECRET.as_bytes(),
            GITHUB_PAYLOAD.as_bytes(),
            headers(GITHUB_SIGNATURE),
        )
        .expect("GitHub's example verifies");
        // Upper-case hex and surrounding whitespace are the same signature.
        let upper = format!(" sha256={} ", GITHUB_SIGNATURE[7..].to_uppercase());
        verify(
            GITHUB_SECRET.as_bytes(),
            GITHUB_PAYLOAD.as_bytes(),
            headers(&upper),
        )
        .expect("hex is case-insensitive");
    }

    #[test]
    fn a_different_body_or_secret_is_a_mismatch() {
        let err = verify(
            GITHUB_SECRET.as_bytes(),
            b"Hello, World?",
            headers(GITHUB_SIGNATURE),
        )
        .expect_err("altered body");
        assert_eq!(err, SignatureError::Mismatch);
        let err = verify(
            b"another secret",
            GITHUB_PAYLOAD.as_bytes(),
            headers(GITHUB_SIGNATURE),
        )
        .expect_err("other secret");
        assert_eq!(err, SignatureError::Mismatch);
        assert!(err.to_string().contains("X-Hub-Signature-256"), "{err}");
    }

    #[test]
    fn sha1_alone_is_refused_with_the_fix() {
        let only_sha1 = SignatureHeaders {
            sha256: None,
            sha1: Some("sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"),
        };
        let err = verify(b"secret", b"body", only_sha1).expect_err("sha1 refused");
        assert_eq!(err, SignatureError::Sha1Only);
        let message = err.to_string();
        assert!(message.contains("X-Hub-Signature"), "{message}");
        assert!(message.contains("X-Hub-Signature-256"), "{message}");
        // A SHA-1 value put in the SHA-256 header is refused the same way.
        let err = verify(b"secret", b"body", headers("sha1=01dc10d0"))
            .expect_err("sha1 in the sha256 header");
        assert_eq!(err, SignatureError::Sha1Only);
    }

    #[test]
    fn missing_malformed_and_empty_secret() {
        assert_eq!(
            verify(b"s", b"b", SignatureHeaders::default()),
            Err(SignatureError::Missing)
        );
        for bad in [
            "757107ea",
            "sha256=xyz",
            "sha256=",
            "md5=abc",
            "sha256=757107ea",
        ] {
            match verify(b"s", b"b", headers(bad)) {
                Err(SignatureError::Malformed { value }) => assert_eq!(value, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let long = format!("sha256={}", "g".repeat(500));
        match verify(b"s", b"b", headers(&long)) {
            Err(SignatureError::Malformed { value }) => assert!(value.len() < 100),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            verify(b"", b"b", headers(GITHUB_SIGNATURE)),
            Err(SignatureError::EmptySecret)
        );
    }

    #[test]
    fn sign_round_trips() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let signature = sign(b"topsecret", body);
        assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
        verify(b"topsecret", body, headers(&signature)).expect("own signature verifies");
    }
}
