//! TLS identities (placeholder until the identity work lands).
