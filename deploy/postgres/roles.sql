-- One PostgreSQL role per Slipway service, each owning its own schema and nothing else.
-- Idempotent: run it (as a superuser, connected to Slipway's database) on every install and
-- upgrade. It creates the roles and schemas that are missing, sets the passwords (so running it
-- again rotates them), and hands schemas made by an older Slipway, which connected as the
-- superuser, to their service's role with everything in them.
--
-- Inputs, as settings of the session (roles.sh sets them from SLIPWAY_DB_PASSWORD_<SERVICE>):
--   slipway.password_<service>  the role's password, required for each of the five
--   slipway.role_prefix         put in front of every role name (default empty; roles are
--                               cluster-wide, so the e2e tests give each stack its own)
-- The schema keeps the service's name (database.schema), whatever the role is called.
-- Plain SQL, no psql meta-commands, so the tests run this very file.
DO $roles$
DECLARE
  service text;
  owner text;
  password text;
  object record;
BEGIN
  FOREACH service IN ARRAY ARRAY['gateway', 'builder', 'registry', 'deployer', 'monitor'] LOOP
    owner := coalesce(current_setting('slipway.role_prefix', true), '') || service;
    password := current_setting('slipway.password_' || service, true);
    IF coalesce(password, '') = '' THEN
      RAISE EXCEPTION 'no password for role %: set slipway.password_% (roles.sh: SLIPWAY_DB_PASSWORD_%)',
        owner, service, upper(service);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = owner) THEN
      EXECUTE format('CREATE ROLE %I', owner);
    END IF;
    EXECUTE format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
      owner, password);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), owner);

    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = service) THEN
      EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', service, owner);
    END IF;
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', service, owner);
    -- Tables, views and free-standing sequences; a sequence that belongs to a column (serial,
    -- identity) follows its table. Indexes and TOAST tables follow their tables too.
    FOR object IN
      SELECT c.oid::regclass AS name,
             CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                            WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                            ELSE 'TABLE' END AS kind
      FROM pg_class c
      WHERE c.relnamespace = to_regnamespace(service)
        AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
        AND c.relowner <> to_regrole(owner)
        AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype IN ('a', 'i'))
    LOOP
      EXECUTE format('ALTER %s %s OWNER TO %I', object.kind, object.name, owner);
    END LOOP;
    -- Functions (e.g. the registry's trigger keeping releases immutable).
    FOR object IN
      SELECT p.oid::regprocedure AS name FROM pg_proc p
      WHERE p.pronamespace = to_regnamespace(service) AND p.proowner <> to_regrole(owner)
    LOOP
      EXECUTE format('ALTER ROUTINE %s OWNER TO %I', object.name, owner);
    END LOOP;
    -- Nobody else may even look into the schema.
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', service);
  END LOOP;

  -- Only the five roles (and superusers) connect; nobody creates objects in `public`.
  EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
  REVOKE CREATE ON SCHEMA public FROM PUBLIC;
END
$roles$;
