//! SQL for the `funkos` table.

// The list query is assembled from fixed fragments and `$n` placeholders only; no client
// text reaches the SQL string (it is all bound), hence `AssertSqlSafe`.
use sqlx::{AnyConnection, AssertSqlSafe};

use super::Placeholders;
use crate::domain::{
    funko::{FunkoDraft, cents_to_price},
    name_key,
    query::{FunkoListQuery, SortField},
    resource::Funko,
};

/// The columns of a [`Funko`]...
macro_rules! columns {
    () => {
        "SELECT f.id, f.name, f.description, f.price_cents, f.stock, f.image, \
     c.name AS category, f.created_at, f.updated_at, f.is_deleted, f.version"
    };
}

/// ...from the Funko joined with its category's name.
macro_rules! from {
    () => {
        " FROM funkos f JOIN categories c ON c.id = f.category_id"
    };
}

/// The columns of a [`Funko`] as a write's `RETURNING` gives them: the row it wrote and its
/// category's name (qualified, as `UPDATE ... FROM` puts `categories` in scope on PostgreSQL).
macro_rules! returning {
    () => {
        " RETURNING funkos.id, funkos.name, funkos.description, funkos.price_cents, \
         funkos.stock, funkos.image, \
         (SELECT k.name FROM categories k WHERE k.id = funkos.category_id) AS category, \
         funkos.created_at, funkos.updated_at, funkos.is_deleted, funkos.version"
    };
}

macro_rules! select {
    () => {
        concat!(columns!(), from!())
    };
}

#[derive(sqlx::FromRow)]
struct FunkoRow {
    id: i64,
    name: String,
    description: Option<String>,
    price_cents: i64,
    stock: i64,
    image: String,
    category: String,
    created_at: String,
    updated_at: String,
    is_deleted: i64,
    version: i64,
}

impl From<FunkoRow> for Funko {
    fn from(row: FunkoRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            price: cents_to_price(row.price_cents),
            stock: row.stock,
            image: row.image,
            category: row.category,
            created_at: row.created_at,
            updated_at: row.updated_at,
            is_deleted: row.is_deleted != 0,
            version: row.version,
        }
    }
}

/// The Funko with this id, deleted or not.
pub(crate) async fn get(conn: &mut AnyConnection, id: i64) -> Result<Option<Funko>, sqlx::Error> {
    let row: Option<FunkoRow> = sqlx::query_as(concat!(select!(), " WHERE f.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Funko::from))
}

/// The Funko with this id, deleted or not, and the stream's head cursor, in one statement
/// (one statement is one snapshot on both databases: the cursor is the position the read saw).
pub(crate) async fn get_with_cursor(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<(Funko, i64)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct WithCursor {
        #[sqlx(flatten)]
        funko: FunkoRow,
        cursor: i64,
    }
    let row: Option<WithCursor> = sqlx::query_as(concat!(
        columns!(),
        ", ",
        head_cursor!(),
        " AS cursor",
        from!(),
        " WHERE f.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (Funko::from(r.funko), r.cursor)))
}

/// One page of the list, the number of matching rows and the stream's head cursor, all read in
/// one snapshot.
pub(crate) async fn list(
    conn: &mut AnyConnection,
    query: &FunkoListQuery,
) -> Result<(Vec<Funko>, i64, i64), sqlx::Error> {
    let mut p = Placeholders::default();
    let mut conditions = Vec::new();
    if !query.include_deleted {
        conditions.push("f.is_deleted = 0".to_owned());
    }
    let q_pattern = query.q.as_ref().map(|q| {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    if q_pattern.is_some() {
        let n = p.next();
        conditions.push(format!(
            "(f.name_key LIKE {n} ESCAPE '\\' OR f.description_key LIKE {n} ESCAPE '\\')"
        ));
    }
    if query.category.is_some() {
        conditions.push(format!("c.name_key = {}", p.next()));
    }
    if query.min_price_cents.is_some() {
        conditions.push(format!("f.price_cents >= {}", p.next()));
    }
    if query.max_price_cents.is_some() {
        conditions.push(format!("f.price_cents <= {}", p.next()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let column = match query.sort {
        SortField::Name => "f.name_key",
        SortField::Price => "f.price_cents",
        SortField::Stock => "f.stock",
        SortField::CreatedAt => "f.created_at",
        SortField::UpdatedAt => "f.updated_at",
        SortField::Id => "f.id",
    };
    let direction = if query.descending { "DESC" } else { "ASC" };
    let limit = p.next();
    let offset = p.next();
    let count_sql =
        format!("SELECT COUNT(*) FROM funkos f JOIN categories c ON c.id = f.category_id{filter}");
    // One statement, so one snapshot and one round trip to the database: the page's rows
    // carry the total and the cursor, uncorrelated subqueries that both engines evaluate once.
    // The count repeats the filter's placeholders, which take the same binds.
    let page_sql = format!(
        "{}, ({count_sql}) AS total, {} AS cursor{}{filter} \
         ORDER BY {column} {direction}, f.id {direction} LIMIT {limit} OFFSET {offset}",
        columns!(),
        head_cursor!(),
        from!()
    );

    // The same binds, in the same order, for both statements.
    macro_rules! bind_filters {
        ($query:expr) => {{
            let mut q = $query;
            if let Some(pattern) = &q_pattern {
                q = q.bind(pattern.clone());
            }
            if let Some(category) = &query.category {
                q = q.bind(name_key(category));
            }
            if let Some(min) = query.min_price_cents {
                q = q.bind(min);
            }
            if let Some(max) = query.max_price_cents {
                q = q.bind(max);
            }
            q
        }};
    }
    #[derive(sqlx::FromRow)]
    struct PageRow {
        #[sqlx(flatten)]
        funko: FunkoRow,
        total: i64,
        cursor: i64,
    }
    let totals_sql = format!("SELECT ({count_sql}), {}", head_cursor!());
    loop {
        let rows: Vec<PageRow> = bind_filters!(sqlx::query_as(AssertSqlSafe(page_sql.as_str())))
            .bind(query.limit)
            .bind(query.offset())
            .fetch_all(&mut *conn)
            .await?;
        if let Some(&PageRow { total, cursor, .. }) = rows.first() {
            let funkos = rows.into_iter().map(|r| Funko::from(r.funko)).collect();
            return Ok((funkos, total, cursor));
        }
        // An empty page (nothing matches, or it is past the last one) still has a total and a
        // cursor, read by a second statement: a second snapshot. The page is still empty
        // there unless a write came between and put rows on it; then read it again.
        let (total, cursor): (i64, i64) =
            bind_filters!(sqlx::query_as(AssertSqlSafe(totals_sql.as_str())))
                .fetch_one(&mut *conn)
                .await?;
        if total <= query.offset() {
            return Ok((Vec::new(), total, cursor));
        }
    }
}

/// Inserts a Funko into the live category named `draft.category` (any case) and returns it
/// as [`get`] would; `None` when no live category has that name. One statement finds the
/// category and inserts, so the category cannot go between the two; a live Funko with the
/// same name key fails it with a unique violation (index `funkos_live_name`), which the
/// database undoes alone: the transaction stays usable.
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    draft: &FunkoDraft,
    now: &str,
) -> Result<Option<Funko>, sqlx::Error> {
    let row: Option<FunkoRow> = sqlx::query_as(concat!(
        "INSERT INTO funkos (name, name_key, description, price_cents, stock, image, category_id, \
         created_at, updated_at, description_key) \
         SELECT $1, $2, $3, $4, $5, $6, c.id, $7, $7, $8 FROM categories c \
         WHERE c.name_key = $9 AND c.is_deleted = 0",
        returning!()
    ))
    .bind(&draft.name)
    .bind(name_key(&draft.name))
    .bind(draft.description.as_deref())
    .bind(draft.price_cents)
    .bind(draft.stock)
    .bind(&draft.image)
    .bind(now)
    .bind(draft.description.as_deref().map(name_key))
    .bind(name_key(&draft.category))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Funko::from))
}

/// Replaces every writable field of Funko `id`, moves it to the live category named
/// `draft.category` (any case) and bumps the version; returns it as [`get`] would. `None`
/// when no live category has that name, or no Funko that id. As in [`insert`], one
/// statement finds the category and writes, and a taken name is a unique violation.
pub(crate) async fn update(
    conn: &mut AnyConnection,
    id: i64,
    draft: &FunkoDraft,
    now: &str,
) -> Result<Option<Funko>, sqlx::Error> {
    let row: Option<FunkoRow> = sqlx::query_as(concat!(
        "UPDATE funkos SET name = $1, name_key = $2, description = $3, price_cents = $4, \
         stock = $5, image = $6, category_id = c.id, updated_at = $7, \
         version = funkos.version + 1, description_key = $8 \
         FROM categories c WHERE funkos.id = $9 AND c.name_key = $10 AND c.is_deleted = 0",
        returning!()
    ))
    .bind(&draft.name)
    .bind(name_key(&draft.name))
    .bind(draft.description.as_deref())
    .bind(draft.price_cents)
    .bind(draft.stock)
    .bind(&draft.image)
    .bind(now)
    .bind(draft.description.as_deref().map(name_key))
    .bind(id)
    .bind(name_key(&draft.category))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Funko::from))
}

/// Sets the image only (uploads) and bumps the version; returns the Funko, `None` if no
/// Funko has that id.
pub(crate) async fn set_image(
    conn: &mut AnyConnection,
    id: i64,
    image: &str,
    now: &str,
) -> Result<Option<Funko>, sqlx::Error> {
    let row: Option<FunkoRow> = sqlx::query_as(concat!(
        "UPDATE funkos SET image = $1, updated_at = $2, version = version + 1 WHERE id = $3",
        returning!()
    ))
    .bind(image)
    .bind(now)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Funko::from))
}

/// Marks Funko `id` deleted and bumps the version; returns it, `None` if no Funko has that id.
pub(crate) async fn soft_delete(
    conn: &mut AnyConnection,
    id: i64,
    now: &str,
) -> Result<Option<Funko>, sqlx::Error> {
    let row: Option<FunkoRow> = sqlx::query_as(concat!(
        "UPDATE funkos SET is_deleted = 1, updated_at = $1, version = version + 1 WHERE id = $2",
        returning!()
    ))
    .bind(now)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Funko::from))
}

/// Bumps the version of every Funko in a category (whose name changed: their bodies did) and
/// returns them as [`get`] would, in id order.
pub(crate) async fn touch_category(
    conn: &mut AnyConnection,
    category_id: i64,
    now: &str,
) -> Result<Vec<Funko>, sqlx::Error> {
    let mut rows: Vec<FunkoRow> = sqlx::query_as(concat!(
        "UPDATE funkos SET updated_at = $1, version = version + 1 WHERE category_id = $2",
        returning!()
    ))
    .bind(now)
    .bind(category_id)
    .fetch_all(conn)
    .await?;
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows.into_iter().map(Funko::from).collect())
}

/// How many Funkos, deleted ones included, name this image.
pub(crate) async fn count_image_users(
    conn: &mut AnyConnection,
    image: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM funkos WHERE image = $1")
        .bind(image)
        .fetch_one(conn)
        .await
}

/// Every image path under `/storage/` some Funko names.
pub(crate) async fn stored_images(
    conn: &mut AnyConnection,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let images: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT image FROM funkos WHERE image LIKE '/storage/%'")
            .fetch_all(conn)
            .await?;
    Ok(images.into_iter().collect())
}

/// How many live Funkos use this category.
pub(crate) async fn count_live_in_category(
    conn: &mut AnyConnection,
    category_id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM funkos WHERE category_id = $1 AND is_deleted = 0")
        .bind(category_id)
        .fetch_one(conn)
        .await
}
