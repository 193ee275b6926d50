//! A database role per service, made by the very SQL that compose, Kubernetes and `scripts/up`
//! run (`deploy/postgres/roles.sql`), so the tests run the services as they are deployed.

use std::collections::HashMap;

use secrecy::SecretString;
use slipway_settings::DatabaseSettings;
use sqlx::{ConnectOptions, Connection};

/// `deploy/postgres/roles.sql`: roles, schemas, ownership and grants.
pub const ROLES_SQL: &str = include_str!("../../../deploy/postgres/roles.sql");

/// The five services, in the order roles.sql handles them.
pub const SERVICES: [&str; 5] = ["gateway", "builder", "registry", "deployer", "monitor"];

/// Runs roles.sql in `db` (settings of a superuser, e.g. from [`crate::fresh_database`]) with
/// fresh passwords, and returns each service's settings: its own role, its own schema.
/// Roles are cluster-wide: each gets the database's name as prefix (`test_…_gateway`), so
/// stacks running at the same time never share one.
pub async fn service_roles(db: &DatabaseSettings) -> HashMap<&'static str, DatabaseSettings> {
    let prefix = format!("{}_", db.database);
    let passwords: HashMap<&'static str, String> = SERVICES
        .iter()
        .map(|service| (*service, crate::unique() + &crate::unique()))
        .collect();
    let mut conn = db
        .server_options()
        .connect()
        .await
        .expect("connect to the test database as the superuser");
    // Session settings roles.sql reads (set_config binds them: no quoting of our own).
    sqlx::query("SELECT set_config('slipway.role_prefix', $1, false)")
        .bind(&prefix)
        .execute(&mut conn)
        .await
        .expect("set slipway.role_prefix");
    for (service, password) in &passwords {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(format!("slipway.password_{service}"))
            .bind(password)
            .execute(&mut conn)
            .await
            .expect("set a role's password");
    }
    sqlx::raw_sql(ROLES_SQL)
        .execute(&mut conn)
        .await
        .expect("deploy/postgres/roles.sql fails");
    conn.close().await.expect("close the superuser connection");
    passwords
        .into_iter()
        .map(|(service, password)| {
            let settings = DatabaseSettings {
                username: format!("{prefix}{service}"),
                password: SecretString::from(password),
                schema: service.to_owned(),
                ..db.clone()
            };
            (service, settings)
        })
        .collect()
}
