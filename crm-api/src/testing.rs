//! Helpers for tests of this crate and of the whole system (feature
//! `testing`): a throw-away PostgreSQL database per test.

use sqlx::Connection;

/// The PostgreSQL server tests use: `SWITCHBOARD_TEST_POSTGRES`, by default
/// the local server's `test` database.
pub fn postgres_admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database created for one test; [`TestDatabase::drop_now`] removes it.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates `sb_test_<random>` on the test server.
    pub async fn create() -> Result<Self, sqlx::Error> {
        let admin = postgres_admin_url();
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// Drops the database (connections to it are ended).
    pub async fn drop_now(self) -> Result<(), sqlx::Error> {
        let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await
    }
}
