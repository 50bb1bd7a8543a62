//! A private PostgreSQL cluster for the suite (filled in with the PostgreSQL backend).

/// Whether PostgreSQL tests run here.
pub fn available() -> bool {
    false
}

pub async fn fresh_database() -> String {
    unreachable!("PostgreSQL is not available")
}
