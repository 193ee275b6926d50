//! deploy/postgres/roles.sql on the real PostgreSQL: one role per service, owning its schema
//! and nothing else; idempotent; converts an install whose schemas the superuser owns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use sqlx::{ConnectOptions, Connection, PgConnection};

async fn connect(db: &slipway_testkit::Database) -> PgConnection {
    db.connect_options().connect().await.unwrap()
}

async fn denied(conn: &mut PgConnection, statement: &str) -> String {
    let error = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(conn)
        .await
        .expect_err(statement)
        .to_string();
    assert!(error.contains("permission denied"), "{statement}: {error}");
    error
}

#[tokio::test]
async fn each_role_owns_its_schema_and_cannot_touch_the_others() {
    let db = slipway_testkit::fresh_database("unused").await;
    // An install from before the roles: the superuser made the registry's schema and tables.
    let mut admin = db.server_options().connect().await.unwrap();
    sqlx::raw_sql(
        "CREATE SCHEMA registry;
         CREATE TABLE registry.releases (id serial PRIMARY KEY, version text);
         INSERT INTO registry.releases (version) VALUES ('v1');
         CREATE FUNCTION registry.immutable() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN RAISE EXCEPTION 'immutable'; END $$;",
    )
    .execute(&mut admin)
    .await
    .unwrap();

    let first = slipway_testkit::roles::service_roles(&db).await;
    connect(&first["gateway"]).await.close().await.unwrap();
    // Again, as every `scripts/up` and compose start does: new passwords, same result.
    let roles = slipway_testkit::roles::service_roles(&db).await;
    assert!(
        first["gateway"].connect_options().connect().await.is_err(),
        "the second run rotated the password"
    );

    let owners: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, c.relowner::regrole::text FROM pg_class c
         WHERE c.relnamespace = 'registry'::regnamespace
         UNION ALL SELECT p.proname::text, p.proowner::regrole::text FROM pg_proc p
         WHERE p.pronamespace = 'registry'::regnamespace",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(owners.len() >= 4, "{owners:?}");
    for (object, owner) in &owners {
        assert_eq!(
            owner, &roles["registry"].username,
            "owner of registry.{object}"
        );
    }

    let mut registry = connect(&roles["registry"]).await;
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM releases")
        .fetch_one(&mut registry)
        .await
        .unwrap();
    assert_eq!(versions, 1, "the registry still reads its converted table");

    let mut gateway = connect(&roles["gateway"]).await;
    sqlx::raw_sql("CREATE TABLE api_tokens (hash text); INSERT INTO api_tokens VALUES ('h')")
        .execute(&mut gateway)
        .await
        .unwrap();
    let error = denied(&mut registry, "SELECT * FROM gateway.api_tokens").await;
    assert!(error.contains("schema gateway"), "{error}");
    denied(&mut gateway, "UPDATE registry.releases SET version = 'v0'").await;
    denied(&mut gateway, "CREATE TABLE public.stolen (x text)").await;
    denied(&mut gateway, "CREATE SCHEMA stolen").await;

    // Roles are cluster-wide: another stack's roles cannot even connect to this database.
    let other_db = slipway_testkit::fresh_database("unused").await;
    let other = slipway_testkit::roles::service_roles(&other_db).await;
    let mut intruder = other["gateway"].clone();
    intruder.database = db.database.clone();
    let error = intruder
        .connect_options()
        .connect()
        .await
        .expect_err("a role of another database connects")
        .to_string();
    assert!(error.contains("permission denied for database"), "{error}");
    admin.close().await.unwrap();
}
