//! Integration tests, in one binary (one link instead of many).
#![cfg(not(holdfast_loom))]

mod admin;
mod durable;
mod engine;
mod http;
mod process;
mod reconcile;
