//! Integration tests, in one binary (one link instead of many).
#![cfg(not(loom))]

mod engine;
