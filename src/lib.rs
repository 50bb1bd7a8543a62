//! funko-live: a Funko store API whose clients see every committed change the moment it
//! commits.
//!
//! A tour, from the outside in:
//! - [`config`]: flags and environment variables.
//! - [`startup`]: opens the database, starts the stream's tasks, builds the routes, serves
//!   until told to stop.
//! - [`server`]: the accept loop and hyper's HTTP/1.1 connections, with their limits and
//!   graceful shutdown; [`net`]: the idle and write-stall deadlines on each socket.
//! - [`api`]: the HTTP surface, one `#[OpenApi]` impl per resource plus the stream adapters
//!   (SSE and long-poll); handlers stay thin.
//! - [`service`]: each read and write of the store, shared by every transport. A write
//!   changes its row and appends its event in one transaction, commits, then wakes the bus.
//! - [`events`]: the change stream's engine: the event type, [`events::ChangeBus`] (the log's
//!   in-memory tail and the wake-up), [`events::Subscription`] (replay, then live), and
//!   [`events::cache`] (Funkos by id, kept by the stream, for reads without a query).
//! - [`db`]: every SQL statement, one file per table, on SQLite or PostgreSQL; SQLite's
//!   writes share transactions through the group-commit queue (`db::writer`).
//! - [`domain`]: validated input types and their rules; no I/O.
//! - [`model`]: the resources as clients see them.
//! - [`error`]: what a request can fail with, rendered as `application/problem+json`.
//! - [`auth`]: who may write; [`limits`]: how much a client may hold open;
//!   [`metrics`]: what `/metrics` counts; [`storage`]: uploaded images on disk.

pub mod api;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod net;
pub mod server;
pub mod service;
pub mod startup;
pub mod storage;

pub use config::Config;
pub use startup::App;
