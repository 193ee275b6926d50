//! PostgreSQL connection settings and start-up (schema creation, migrations).
//!
//! All services may share one database; each owns one schema and sets it as its `search_path`,
//! so its tables, and sqlx's migration history, live in that schema alone.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Typed connection settings (not a URL string, so nothing needs escaping).
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Never logged: `SecretString`'s Debug prints a placeholder.
    pub password: SecretString,
    /// The database (shared by the services; each has its own schema in it).
    pub database: String,
    /// The schema this service owns.
    pub schema: String,
    /// Pool size (the service's main pool; the outbox relay and, in the deployer, liveness
    /// renewal have small pools of their own beside it: [`side_pool`]).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    10
}

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("schema name `{0}` must be lowercase letters, digits and underscores")]
    BadSchema(String),
    #[error("cannot connect to PostgreSQL at {host}:{port}/{database}: {source}")]
    Connect {
        host: String,
        port: u16,
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create schema `{schema}`: {source}")]
    CreateSchema {
        schema: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DatabaseSettings {
    /// Options without a schema (to create it).
    pub fn server_options(&self) -> PgConnectOptions {
        let mut options = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.username)
            .database(&self.database);
        let password = self.password.expose_secret();
        if !password.is_empty() {
            options = options.password(password);
        }
        options
    }

    /// Options whose `search_path` is this service's schema.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.server_options()
            .options([("search_path", self.schema.as_str())])
    }

    fn check_schema(&self) -> Result<(), DatabaseError> {
        let ok = !self.schema.is_empty()
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(DatabaseError::BadSchema(self.schema.clone()))
        }
    }

    /// Creates the schema if needed, opens a pool on it and applies `migrator`.
    pub async fn connect_and_migrate(&self, migrator: &Migrator) -> Result<PgPool, DatabaseError> {
        self.check_schema()?;
        let connect_err = |source| DatabaseError::Connect {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            source,
        };
        let bootstrap = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.server_options())
            .await
            .map_err(connect_err)?;
        let schema_exists = || async {
            sqlx::query_scalar::<_, bool>("SELECT true FROM pg_namespace WHERE nspname = $1")
                .bind(&self.schema)
                .fetch_optional(&bootstrap)
                .await
                .ok()
                .flatten()
                == Some(true)
        };
        // Deployed, each service logs in as its own role, which owns its schema (made for it by
        // deploy/postgres/roles.sql) but may not create schemas: only try when it is missing.
        if !schema_exists().await {
            // The schema name was checked above to contain only [a-z0-9_], so quoting is safe.
            let ddl = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
            if let Err(source) = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                .execute(&bootstrap)
                .await
            {
                // Two replicas starting together may race on CREATE SCHEMA; the loser sees a
                // unique violation although the schema now exists.
                if !schema_exists().await {
                    return Err(DatabaseError::CreateSchema {
                        schema: self.schema.clone(),
                        source,
                    });
                }
            }
        }
        bootstrap.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.connect_options())
            .await
            .map_err(connect_err)?;
        migrator.run(&pool).await?;
        tracing::info!(schema = %self.schema, "database ready");
        Ok(pool)
    }
}

/// A small pool on the same database, schema and role as `pool`, for work that must not queue
/// behind the main pool's (the outbox relay; renewing a replica's liveness and leases, which
/// has a deadline): under load the main pool can be taken for seconds. Connects on first use.
pub fn side_pool(pool: &PgPool, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with((*pool.connect_options()).clone())
}
