//! One integration-test binary: the real server over real sockets, each test on its own
//! database, on SQLite and (where installed) PostgreSQL.

mod backends;
mod helpers;
mod postgres;

mod clients;
mod js;

mod categories;
mod events_log;
mod funkos;
mod openapi;
mod stream;
