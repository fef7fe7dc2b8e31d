//! The edge: what turns requests into calls and errors into responses. It may use
//! everything below it; nothing below refers to it.

pub mod api;
