//! Carts: what a shopper means to buy, kept beside the engine in the same log (`design.md`, "Carts").
//!
//! A cart is keyed by the caller's id (a user id or a session id). Each edit, merge, expiry and
//! checkout is one record, decided under the carts' lock (`ops.rs`) and replayed through the same
//! `Carts::apply` (`book.rs`). A checkout's record carries the order it placed, so the order and the
//! cart's end are one entry in the log.

pub mod book;
pub mod ops;

pub use book::{Cart, CartItem, CartRecord, CartStep, Carts, Ending, Hold};
pub use ops::{checkout_fingerprint, CartError, ItemEdit, Merge};
