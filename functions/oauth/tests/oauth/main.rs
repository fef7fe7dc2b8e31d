//! Integration tests of the oauth function: real AWS SDK calls against the emulator
//! (provisioned from template.yaml) and real HTTP against local OAuth providers.

mod common;
mod flow;
mod install;
mod notices;
mod refresh;
mod revoke;
mod webhook;
