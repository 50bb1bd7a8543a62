//! One integration-test binary: the real server over real sockets, each test on its own
//! database, on SQLite and (where installed) PostgreSQL.

mod backends;
mod helpers;
mod postgres;

mod clients;
mod js;

mod asyncapi;
mod categories;
mod cluster;
mod crash;
mod durable;
mod events_log;
mod fanout;
mod funkos;
mod hostile;
mod images;
mod openapi;
mod schemathesis;
mod security;
mod shutdown;
mod socketio;
mod socketio_raw;
mod startup;
mod stream;
mod views;
mod ws;
