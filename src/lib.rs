//! funko-live: a Funko store API whose clients see every committed change the moment it
//! commits.
//!
//! A tour, from the outside in:
//! - [`config`]: flags and environment variables; [`startup`]: opens the database, starts the
//!   stream's tasks, builds the routes, serves until told to stop.
//! - [`http`]: the accept loop and hyper's HTTP/1.1 connections, the deadlines on each socket,
//!   and the live fan-out (SSE, `/ws`, Socket.IO over WebSocket), the one writer below hyper.
//! - [`api`]: the REST resources, one `#[OpenApi]` impl each; [`spec`]: the OpenAPI document.
//! - [`stream`]: the change stream's five transports (SSE, long-poll, WebSocket, Socket.IO,
//!   Durable Streams), thin translators of a subscription's steps into frames.
//! - [`service`]: each read and write of the store, shared by every transport, and the read
//!   caches. A write changes its row and appends its event in one transaction, commits, then
//!   tells the tail.
//! - [`events`]: the change stream's engine, transport-agnostic: the log's tail in memory,
//!   subscriptions (replay, then live), retention, the PostgreSQL wake-up.
//! - [`db`]: every SQL statement, one file per table, on SQLite or PostgreSQL; SQLite's
//!   writes share transactions through the group-commit queue.
//! - [`domain`]: the resources, the stream's vocabulary, validated input and its rules; no I/O.
//! - [`error`]: what a request can fail with, rendered as `application/problem+json`;
//!   [`auth`]: who may write; [`limits`]: how much a client may hold open; [`metrics`]: what
//!   `/metrics` counts; [`storage`]: uploaded images on disk.

#![warn(unreachable_pub)]

mod api;
mod auth;
mod config;
mod db;
mod domain;
mod error;
mod events;
mod http;
mod limits;
mod metrics;
mod service;
mod spec;
mod startup;
mod storage;
mod stream;

// The crate's surface: what the binaries and the tests use.
pub use api::AppState;
pub use config::{Config, LogFormat};
pub use spec::openapi_json;
pub use startup::App;
/// The `/ws` protocol's vocabulary, which `openapi/asyncapi.yaml` documents.
pub use stream::ws::protocol::{ClientOp, CloseReason, ServerOp};
