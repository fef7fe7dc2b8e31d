//! Simulated external services, each a real HTTP server on 127.0.0.1 (random port),
//! started in-process by tests and by the local stack. They behave like the real
//! services where custody depends on it (PKCE checks, single-use codes, cursor
//! pagination, rate limits, signatures) and expose what a test needs to observe.

pub mod destination;
pub mod highlevel;
pub mod oauth_provider;
pub mod webdav;
