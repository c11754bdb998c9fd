//! Orders and payments: the checkout saga around the engine (`design.md`, "Orders and payments").
//!
//! An order is a reservation with a payment attached, driven to an end by the server. Its state lives
//! in the engine's log like every mutation: each transition is one record that carries the
//! reservation's own record with it (`book.rs`), decided under the engine's rules (`saga.rs`) and
//! replayed through the same `Book::apply`. Webhooks are verified and read in `webhook.rs`; orders
//! whose webhook never came are asked about in `fallback.rs`.

pub mod book;
pub mod fallback;
pub mod saga;
pub mod webhook;

pub use book::{
    Book, Cause, Order, OrderId, OrderLine, OrderRecord, OrderState, OrderStep, Placed, Transition,
};
pub use saga::{Effect, OrderError, OrderRequest, Payment, PaymentStatus, AMOUNT_MAX, UNIT_PRICE_MAX};
