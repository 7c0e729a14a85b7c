//! Versioned migrations, applied when a store opens.
//!
//! `fleetops_migrations` (in the store's schema) records each applied version with the time
//! it was applied. Opening takes a transaction-scoped advisory lock (one key for every schema,
//! so that two instances creating schemas at once cannot race on `CREATE SCHEMA` either),
//! creates the schema and the bookkeeping table if missing, applies the versions above the
//! recorded one and commits: the lock is released with the commit, and an instance that
//! waited for it finds the work done. A failed migration rolls back whole.

use tokio_postgres::Client;

use crate::config::{lock_key, PostgresConfig};
use crate::error::PgError;

/// The migrations in order; `{channel}` is replaced by the schema's notification channel.
/// Never edit a released one: add a new version.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1_FEED)];

/// The latest schema version this build applies.
pub(crate) const LATEST: i32 = 1;

/// The feed, its indexes, snapshots, and the group-commit function.
const V1_FEED: &str = r#"
-- The global feed. `recorded_at_ms` is core's `Timestamp` (milliseconds since the epoch);
-- `payload` is the event's serde_json encoding, byte for byte as it was appended (bytea rather
-- than jsonb: no re-normalisation of numbers or key order, and no refusal of \u0000).
CREATE TABLE events (
    position        bigint   PRIMARY KEY,
    stream          text     NOT NULL,
    stream_version  bigint   NOT NULL,
    event_id        uuid     NOT NULL,
    recorded_at_ms  bigint   NOT NULL,
    schema_version  smallint NOT NULL,
    correlation_id  uuid,
    causation_id    uuid,
    idempotency_key bytea,
    payload         bytea    NOT NULL,
    UNIQUE (stream, stream_version)
);

-- Each stream's current version.
CREATE TABLE streams (
    stream  text   PRIMARY KEY,
    version bigint NOT NULL
);

-- Used idempotency keys (bytea: a key is any string, NUL included) and their first result.
CREATE TABLE idempotency (
    key            bytea    PRIMARY KEY,
    first_position bigint   NOT NULL,
    last_position  bigint   NOT NULL,
    streams        text[]   NOT NULL,
    versions       bigint[] NOT NULL
);

-- The feed's head: the last assigned position. Its row lock serializes appenders, so
-- positions are assigned, and become visible, in commit order (see the crate README).
CREATE TABLE feed_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint  NOT NULL
);
INSERT INTO feed_head (position) VALUES (0);

CREATE TABLE snapshots (
    name      text        PRIMARY KEY,
    position  bigint      NOT NULL,
    event_key bigint      NOT NULL,
    bytes     bytea       NOT NULL,
    saved_at  timestamptz NOT NULL DEFAULT now()
);

-- One group commit: every queued batch, in order, in the caller's single transaction.
-- Per batch: `b_key` (NULL: no key) and `b_streams` (its number of stream entries); per stream
-- entry: name, expectation (-2 any, -1 no stream, n >= 0 exactly n) and number of events; per
-- event, in batch order: its envelope and payload. Returns one row per batch: outcome 0
-- (stored, or the remembered result of a used key) with positions and versions, or outcome 1
-- (conflict) with the failing stream and its actual version (NULL: no stream) in
-- `r_streams[1]` / `r_versions[1]`. A conflicting batch is found before anything of it is
-- written, so it stores nothing and the other batches go on.
CREATE FUNCTION fleetops_append(
    b_key bytea[], b_streams int[],
    s_stream text[], s_expected bigint[], s_events int[],
    e_id uuid[], e_recorded bigint[], e_schema smallint[],
    e_correlation uuid[], e_causation uuid[], e_payload bytea[]
) RETURNS TABLE (
    r_outcome smallint, r_first bigint, r_last bigint, r_streams text[], r_versions bigint[]
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    start_head bigint;
    head bigint;
    si int := 1;         -- next stream entry
    ei int := 1;         -- next event
    s_end int;
    e_end int;
    n int;
    k int;
    actual bigint;
    expected bigint;
    bad int;
    bad_actual bigint;
    actuals bigint[];
    out_streams text[];
    out_versions bigint[];
BEGIN
    -- Taken first and held to commit: every appender queues here, in every instance.
    SELECT f.position INTO head FROM feed_head f FOR UPDATE;
    start_head := head;
    FOR b IN 1 .. coalesce(array_length(b_key, 1), 0) LOOP
        s_end := si + b_streams[b];
        n := 0;
        FOR k IN si .. s_end - 1 LOOP
            n := n + s_events[k];
        END LOOP;
        e_end := ei + n;

        -- A used key: the first result, before any expectation is looked at.
        IF b_key[b] IS NOT NULL THEN
            SELECT 0::smallint, i.first_position, i.last_position, i.streams, i.versions
              INTO r_outcome, r_first, r_last, r_streams, r_versions
              FROM idempotency i WHERE i.key = b_key[b];
            IF FOUND THEN
                RETURN NEXT;
                si := s_end;
                ei := e_end;
                CONTINUE;
            END IF;
        END IF;

        -- Every expectation, before anything is written.
        bad := NULL;
        actuals := '{}';
        FOR k IN si .. s_end - 1 LOOP
            SELECT st.version INTO actual FROM streams st WHERE st.stream = s_stream[k] FOR UPDATE;
            IF NOT FOUND THEN
                actual := NULL;
            END IF;
            expected := s_expected[k];
            IF NOT (expected = -2
                    OR (expected = -1 AND actual IS NULL)
                    OR (expected >= 0 AND actual IS NOT NULL AND actual = expected)) THEN
                bad := k;
                bad_actual := actual;
                EXIT;
            END IF;
            actuals := actuals || coalesce(actual, 0);
        END LOOP;
        IF bad IS NOT NULL THEN
            r_outcome := 1;
            r_first := NULL;
            r_last := NULL;
            r_streams := ARRAY[s_stream[bad]];
            r_versions := ARRAY[bad_actual];
            RETURN NEXT;
            si := s_end;
            ei := e_end;
            CONTINUE;
        END IF;

        -- Store it: consecutive positions after the head, versions after each stream's.
        r_first := head + 1;
        out_streams := '{}';
        out_versions := '{}';
        FOR k IN si .. s_end - 1 LOOP
            n := s_events[k];
            actual := actuals[k - si + 1];
            INSERT INTO events (position, stream, stream_version, event_id, recorded_at_ms,
                                schema_version, correlation_id, causation_id, idempotency_key,
                                payload)
            SELECT head + t.o, s_stream[k], actual + t.o, t.id, t.rec, t.sch, t.cor, t.cau,
                   b_key[b], t.pl
              FROM unnest(e_id[ei:ei + n - 1], e_recorded[ei:ei + n - 1],
                          e_schema[ei:ei + n - 1], e_correlation[ei:ei + n - 1],
                          e_causation[ei:ei + n - 1], e_payload[ei:ei + n - 1])
                   WITH ORDINALITY AS t(id, rec, sch, cor, cau, pl, o);
            INSERT INTO streams AS st (stream, version) VALUES (s_stream[k], actual + n)
                ON CONFLICT (stream) DO UPDATE SET version = excluded.version;
            out_streams := out_streams || s_stream[k];
            out_versions := out_versions || (actual + n);
            head := head + n;
            ei := ei + n;
        END LOOP;
        IF b_key[b] IS NOT NULL THEN
            INSERT INTO idempotency (key, first_position, last_position, streams, versions)
                VALUES (b_key[b], r_first, head, out_streams, out_versions);
        END IF;
        r_outcome := 0;
        r_last := head;
        r_streams := out_streams;
        r_versions := out_versions;
        RETURN NEXT;
        si := s_end;
    END LOOP;
    IF head > start_head THEN
        UPDATE feed_head SET position = head;
        -- Delivered to listeners at commit, never for a rolled-back group.
        PERFORM pg_notify('{channel}', head::text);
    END IF;
END
$fn$;
"#;

/// Brings the schema up to [`LATEST`]; returns the version found before.
pub(crate) async fn migrate(client: &mut Client, config: &PostgresConfig) -> Result<i32, PgError> {
    let schema = &config.schema;
    let at = |version| move |source| PgError::Migrate { version, source };
    let tx = client.transaction().await.map_err(at(0))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("fleetops-migrate")],
    )
    .await
    .map_err(at(0))?;
    // The schema name is a checked plain identifier (`PostgresConfig::check_schema`).
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS fleetops_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(at(0))?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM fleetops_migrations",
            &[],
        )
        .await
        .map_err(at(0))?
        .get(0);
    if found > LATEST {
        return Err(PgError::TooNew {
            found,
            known: LATEST,
        });
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let sql = sql.replace("{channel}", &config.channel());
        tx.batch_execute(&sql).await.map_err(at(version))?;
        tx.execute(
            "INSERT INTO fleetops_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(at(version))?;
        tracing::info!(schema = %schema, version, "applied migration");
    }
    tx.commit().await.map_err(at(LATEST))?;
    Ok(found)
}
