//! The databases the suite runs on. Every test is written once, as `async fn(Backend)`,
//! and `backend_tests!` runs it on SQLite and on PostgreSQL.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A new, empty database for one test.
    pub async fn fresh_database(self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("test.db").display()),
            Backend::Postgres => crate::postgres::fresh_database().await,
        }
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests from `async fn NAME(Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::backends::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::postgres::available() {
                        super::$name($crate::backends::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}
