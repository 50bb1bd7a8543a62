//! SQL for the `categories` table.

use sqlx::AnyConnection;

use crate::domain::{name_key, resource::Category};

macro_rules! select {
    () => {
        "SELECT id, name, created_at, updated_at, is_deleted FROM categories"
    };
}

#[derive(sqlx::FromRow)]
struct CategoryRow {
    id: i64,
    name: String,
    created_at: String,
    updated_at: String,
    is_deleted: i64,
}

impl From<CategoryRow> for Category {
    fn from(row: CategoryRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
            updated_at: row.updated_at,
            is_deleted: row.is_deleted != 0,
        }
    }
}

pub(crate) async fn get(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<Category>, sqlx::Error> {
    let row: Option<CategoryRow> = sqlx::query_as(concat!(select!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Category::from))
}

/// The live category with this name, any case.
pub(crate) async fn find_live_by_name(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Option<Category>, sqlx::Error> {
    let row: Option<CategoryRow> = sqlx::query_as(concat!(
        select!(),
        " WHERE name_key = $1 AND is_deleted = 0"
    ))
    .bind(name_key(name))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Category::from))
}

pub(crate) async fn list(
    conn: &mut AnyConnection,
    include_deleted: bool,
) -> Result<Vec<Category>, sqlx::Error> {
    let rows: Vec<CategoryRow> = sqlx::query_as(concat!(
        select!(),
        " WHERE is_deleted = 0 OR $1 = 1 ORDER BY id"
    ))
    .bind(i64::from(include_deleted))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Category::from).collect())
}

pub(crate) async fn insert(
    conn: &mut AnyConnection,
    name: &str,
    now: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO categories (name, name_key, created_at, updated_at) VALUES ($1, $2, $3, $3) \
         RETURNING id",
    )
    .bind(name)
    .bind(name_key(name))
    .bind(now)
    .fetch_one(conn)
    .await
}

pub(crate) async fn rename(
    conn: &mut AnyConnection,
    id: i64,
    name: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE categories SET name = $1, name_key = $2, updated_at = $3 WHERE id = $4")
        .bind(name)
        .bind(name_key(name))
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn soft_delete(
    conn: &mut AnyConnection,
    id: i64,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE categories SET is_deleted = 1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
