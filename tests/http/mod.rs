//! The HTTP server over real sockets on 127.0.0.1: routes and codes, bad input, slow clients, and the
//! real binary under SIGTERM and SIGKILL.

mod api;
pub mod auth;
mod bad_input;
mod carts;
pub mod harness;
mod ids;
mod keys;
mod ops;
mod orders;
mod orders_bad_input;
pub mod process;
mod slow;
mod storm;
mod waitroom;
