//! Who is calling: Ed25519 key pairs for service accounts and users, the JSON
//! key files that hold them, and the short-lived tokens that prove a caller
//! holds a key.
//!
//! Role: the API uses [`verify`] on every call (`authorization: Bearer …` in
//! gRPC metadata) and the dispatcher on every question that carries an
//! `authorization` attribute; the CLI and askers use [`sign`]. What the
//! verified principal may do is the policy engine's business (`rouse-iam`),
//! not this crate's. No I/O happens here except [`KeyFile::read`],
//! [`KeyFile::write`] and [`KeyFile::write_new`].
//!
//! # Keys
//!
//! `rouse iam service-accounts keys create FILE` calls [`KeyFile::generate`]:
//! the key file goes to the holder; the server stores only the
//! [`PublicKeyEntry`] (key id, principal, public key as base64, creation
//! time). Deleting that entry revokes the key: the next [`verify`] cannot
//! find it.
//!
//! ## Key files
//!
//! A key file is what `rouse iam service-accounts keys create FILE` writes and
//! what the CLI reads with `--credentials FILE`. Its shape follows Google's
//! service-account key files so that it reads familiarly:
//!
//! ```json
//! {
//!   "type": "service_account",
//!   "project_id": "my_project",
//!   "private_key_id": "5f0c0c3b3a0e4b7c9d1e2f3a4b5c6d7e",
//!   "private_key": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI…\n-----END PRIVATE KEY-----\n",
//!   "client_email": "builder@my_project.rouse",
//!   "principal": "serviceAccount:builder@my_project.rouse",
//!   "token_uri": "http://127.0.0.1:50051"
//! }
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `type` | `service_account` or `user` |
//! | `project_id` | the service account's project; for a user empty, or a project of the user's choosing (it grants nothing) |
//! | `private_key_id` | the key id: the `kid` of every token signed with this key, and what the server looks the public key up by |
//! | `private_key` | the Ed25519 private key as unencrypted PKCS#8 v1 PEM (RFC 8410), exactly what `openssl genpkey -algorithm ed25519` writes |
//! | `client_email` | `NAME@PROJECT.rouse` for a service account, the user's e-mail address for a user |
//! | `principal` | `serviceAccount:` or `user:` followed by `client_email`: the identity tokens carry |
//! | `token_uri` | the API endpoint the key was issued by, or empty |
//!
//! Every field is required and unknown fields are refused by name, so a typo
//! is not silently ignored. Errors name the file and the field, never the
//! private key's content.
//!
//! # Token format
//!
//! A compact JWS (RFC 7515), `base64url(header).base64url(claims).base64url(signature)`,
//! unpadded, signed with Ed25519 over the first two parts as sent:
//!
//! ```text
//! header: {"alg":"EdDSA","typ":"JWT","kid":"<key id>"}
//! claims: {"iss":"serviceAccount:a@p.rouse","sub":"serviceAccount:a@p.rouse",
//!          "aud":"projects/p/services/b","iat":1700000000,"exp":1700000900,
//!          "jti":"<uuid>","question_uuid":"<the question's uuid>"}
//! ```
//!
//! `iss` and `sub` are both the signer's principal; `iat` and `exp` are unix
//! seconds, `exp` at most one hour after `iat` ([`MAX_LIFETIME`]); `jti` is a
//! fresh uuid per token, for audit; `question_uuid` appears only on question
//! tokens. The format is closed: unknown header fields and unknown claims are
//! refused, so nothing a verifier ignores can change a token's meaning.
//!
//! # Audiences
//!
//! `aud` is the one thing a token may be used for, a single string:
//!
//! - API calls: [`API_AUDIENCE`], `rouse-api`, with no `question_uuid`.
//! - Questions: the target service's resource name,
//!   `projects/PROJECT/services/SERVICE` ([`service_audience`]), and the
//!   question's uuid in `question_uuid`.
//!
//! So a token for one service cannot ask another, a question's token cannot
//! call the API (and vice versa), and a token captured from one question
//! cannot be attached to another question: the dispatcher already refuses a
//! second question with the same uuid, so no replay cache is needed.
//!
//! # What [`verify`] checks, in order, and why
//!
//! 1. Shape: at most [`MAX_TOKEN_LEN`] bytes, three unpadded base64url parts,
//!    a JSON header with `alg`, `kid` and optionally `typ: JWT`, a 64-byte
//!    signature. Cheap checks first, before any key lookup.
//! 2. `alg` is exactly `EdDSA`. Anything else, `none` included, is refused:
//!    the verifier never lets the token choose how it is checked.
//! 3. The key id is known (`lookup`); deleted and revoked keys are not.
//! 4. The Ed25519 signature verifies, strictly (no non-canonical signatures,
//!    no weak keys), over the bytes as received.
//! 5. The key's account is not disabled (checked after the signature, so only
//!    the key's holder learns it).
//! 6. The claims parse; `iss` = `sub` = the key's principal, so a key can only
//!    speak for its own account. The one exception is the platform's
//!    assertion key ([`Asserter`], principal [`PLATFORM_ISSUER`]): in a
//!    question token only, it names the caller the API checked in `sub`.
//! 7. `aud` is the expected audience.
//! 8. `exp - iat` is positive and at most one hour; `iat` is at most
//!    [`CLOCK_SKEW`] (60 s) in the future; `now < exp`. A stolen token is
//!    useful for an hour at most.
//! 9. `jti` is a uuid; `question_uuid` equals the expected one when a question
//!    is being verified, and is absent otherwise.
//!
//! Every failure is a [`TokenError`] variant whose message names what failed
//! (the key id, the audiences, the times) and never the token or a key.
//! [`bench_verify`] times verification for `just bench` (target p50 ≤ 100 µs).

mod key;
mod token;

pub use key::{
    Account, AccountError, AccountType, GenerateKeyError, KeyFile, KeyFileError,
    KeyFileFormatError, PublicKey, PublicKeyEntry, PublicKeyError,
};
pub use token::{
    ALGORITHM, API_AUDIENCE, Asserter, BUILDER_PRINCIPAL, CLOCK_SKEW, Claims, DEFAULT_LIFETIME,
    KeyRecord, MAX_LIFETIME, MAX_TOKEN_LEN, PLATFORM_ISSUER, REGISTRY_AUDIENCE_PREFIX, SignError,
    TokenError, bench_verify, registry_audience, service_audience, sign, verify,
};
