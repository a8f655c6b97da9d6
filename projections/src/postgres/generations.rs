//! A generation's life: its schema (migrated by refinery), creating one for a rebuild, promoting it
//! (the live flag and the `tally_read` views, in one transaction) and dropping one, with the advisory
//! locks that keep nodes from stepping on each other.

use std::fmt::Write as _;

use super::bulk::{Owned, Replaying, Taken, build_deferred_indexes, defer_indexes, write_out};
use super::{NAME, PostgresReadModel, generation_id, schema, unsigned};
use crate::{Generation, ProjectionError};

/// Serialises generation changes between nodes (`pg_advisory_lock` key).
const GENERATIONS_LOCK: i64 = 0x7461_6c6c_7972_6d00;

/// The first key of the session advisory lock a rebuilding process holds on its generation (the second
/// is the generation): it is released when the process lets go of the generation or its session ends,
/// crash included.
const REBUILD_LOCK_CLASS: i32 = 0x7461_6c6c;

const VIEWS: [&str; 7] =
    ["checkpoint", "wallets", "ledger_entries", "program_daily_stats", "wallet_active_days", "tenant_liability", "quarantined_events"];

mod meta {
    refinery::embed_migrations!("migrations/meta");
}
mod generation {
    refinery::embed_migrations!("migrations/generation");
}

impl PostgresReadModel {
    /// Applies pending migrations, creating the first generation if there is none. Nodes starting
    /// together take turns, migrations included.
    pub(super) async fn set_up(&self) -> Result<(), ProjectionError> {
        let mut admin = self.admin().await?;
        admin.execute("SELECT pg_advisory_lock($1)", &[&GENERATIONS_LOCK]).await?;
        let result = set_up(&mut admin).await;
        let _ = admin.execute("SELECT pg_advisory_unlock($1)", &[&GENERATIONS_LOCK]).await;
        result
    }

    pub(super) async fn live_generation(&self) -> Result<Generation, ProjectionError> {
        let client = self.pool.get().await?;
        let live: i32 = client
            .query_opt("SELECT generation FROM tally_read_generations WHERE live", &[])
            .await?
            .ok_or_else(|| ProjectionError::Invalid("no live reporting generation; restart to create one".to_owned()))?
            .get(0);
        let id = u64::try_from(live).unwrap_or(0);
        let position: i64 = client.query_one(&format!("SELECT position FROM {}.checkpoint", schema(id)), &[]).await?.get(0);
        Ok(Generation { id, checkpoint: unsigned(position, "checkpoint")? })
    }

    /// Creates a generation for this process to rebuild, holding its rebuild lock.
    pub(super) async fn create_owned_generation(&self) -> Result<u64, ProjectionError> {
        let mut admin = self.admin().await?;
        // Its session holds the rebuild's lock on the new generation for as long as this process owns it.
        let owner = self.admin().await?;
        admin.execute("SELECT pg_advisory_lock($1)", &[&GENERATIONS_LOCK]).await?;
        let result = async {
            let generation = new_generation(&mut admin).await?;
            owner.execute("SELECT pg_advisory_lock($1, $2)", &[&REBUILD_LOCK_CLASS, &generation_id(generation)?]).await?;
            Ok(generation)
        }
        .await;
        let _ = admin.execute("SELECT pg_advisory_unlock($1)", &[&GENERATIONS_LOCK]).await;
        // Empty, and only this process writes it until it is promoted.
        if let Ok(generation) = result {
            self.put_back(generation, Owned::Holding(Replaying::default()));
            self.owners.lock().insert(generation, owner);
        }
        result
    }

    /// Makes `generation` live; what a replay of it holds is written out now, or kept for the next
    /// attempt if the promotion fails.
    pub(super) async fn promote_owned(&self, generation: u64) -> Result<(), ProjectionError> {
        // Once live, runners on other nodes may write it too.
        let taken = self.take(generation)?;
        let holding = match &taken {
            Taken::Holding(replaying) => Some(replaying),
            Taken::NotOwned | Taken::WrittenOut => None,
        };
        let result = self.promote_with(generation, holding).await;
        match (&result, taken) {
            // Behind the live one: the runner catches it up and promotes it again.
            (Err(ProjectionError::Behind { .. }), Taken::Holding(replaying)) => self.put_back(generation, Owned::Holding(replaying)),
            (Err(ProjectionError::Behind { .. }), Taken::WrittenOut) => self.put_back(generation, Owned::WrittenOut),
            // Promoted, or failed in a way that ends the rebuild (a commit whose answer was lost may even
            // have made it live): this process no longer owns it.
            _ => self.let_go(generation),
        }
        result
    }

    /// Makes `generation` live, first writing out what a replay of it holds in memory.
    async fn promote_with(&self, generation: u64, replaying: Option<&Replaying>) -> Result<(), ProjectionError> {
        let mut admin = self.admin().await?;
        let id = generation_id(generation)?;
        let tx = admin.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GENERATIONS_LOCK]).await?;
        let old: Option<i32> = tx.query_opt("SELECT generation FROM tally_read_generations WHERE live", &[]).await?.map(|r| r.get(0));
        if tx.query_opt("SELECT 1 FROM tally_read_generations WHERE generation = $1 AND NOT live", &[&id]).await?.is_none() {
            return Err(ProjectionError::NoSuchGeneration { model: NAME, generation });
        }
        // Waits for the batches in flight on the live generation; none lands there after it.
        tx.execute("UPDATE tally_read_generations SET live = FALSE WHERE live", &[]).await?;
        let checkpoint = |g: i32| format!("SELECT position FROM {}.checkpoint", schema(u64::try_from(g).unwrap_or(0)));
        let new_position: i64 = tx.query_one(&checkpoint(id), &[]).await?.get(0);
        if let Some(old) = old {
            let live_position: i64 = tx.query_one(&checkpoint(old), &[]).await?.get(0);
            if new_position < live_position {
                return Err(ProjectionError::Behind {
                    generation,
                    checkpoint: unsigned(new_position, "checkpoint")?,
                    live: unsigned(live_position, "checkpoint")?,
                });
            }
        }
        if let Some(replaying) = replaying {
            write_out(&tx, &schema(generation), replaying).await?;
        }
        build_deferred_indexes(&tx, generation).await?;
        tx.execute("UPDATE tally_read_generations SET live = TRUE, promoted_at = now() WHERE generation = $1", &[&id]).await?;
        tx.batch_execute(&views_sql(generation)).await?;
        tx.commit().await?;
        // Promoted. Dropping the old generation is housekeeping: if it fails, the next rebuild does it.
        if let Some(old) = old
            && let Err(error) = drop_abandoned(&mut admin, old).await
        {
            tracing::warn!(%error, generation = old, "cannot drop the previous reporting generation; the next rebuild will");
        }
        Ok(())
    }
}

/// Applies pending migrations, creating the first generation if there is none.
async fn set_up(admin: &mut tokio_postgres::Client) -> Result<(), ProjectionError> {
    meta::migrations::runner()
        .set_migration_table_name("tally_read_migrations")
        .run_async(admin)
        .await
        .map_err(|e| ProjectionError::Migration(e.to_string()))?;
    let live: Option<i32> = admin.query_opt("SELECT generation FROM tally_read_generations WHERE live", &[]).await?.map(|r| r.get(0));
    let live = match live {
        Some(live) => live,
        None => admin
            .query_one(
                "INSERT INTO tally_read_generations (generation, live, promoted_at)
                     VALUES (nextval('tally_read_generation_ids'), TRUE, now()) RETURNING generation",
                &[],
            )
            .await?
            .get(0),
    };
    let live = u64::try_from(live).unwrap_or(0);
    // A migration may change a column's type, which a view over it forbids: the views go while the live
    // generation is migrated, and come back with the grants they had.
    let grants = if pending_migrations(admin, live).await? { drop_views(admin).await? } else { Vec::new() };
    migrate_generation(admin, live).await?;
    admin.batch_execute(&views_sql(live)).await?;
    for grant in grants {
        admin.batch_execute(&grant).await?;
    }
    Ok(())
}

/// Whether `generation` lacks migrations this build has.
async fn pending_migrations(admin: &tokio_postgres::Client, generation: u64) -> Result<bool, ProjectionError> {
    let latest = generation::migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0);
    let table = format!("{}.reporting_migrations", schema(generation));
    if admin.query_one("SELECT to_regclass($1) IS NULL", &[&table]).await?.get::<_, bool>(0) {
        return Ok(true);
    }
    let applied: Option<i64> = admin.query_one(&format!("SELECT max(version)::int8 FROM {table}"), &[]).await?.get(0);
    Ok(applied.unwrap_or(0) < latest)
}

/// Drops the `tally_read` views, returning the GRANT statements that give back what was granted on them.
async fn drop_views(admin: &tokio_postgres::Client) -> Result<Vec<String>, ProjectionError> {
    let grants = admin
        .query(
            "SELECT format('GRANT %s ON tally_read.%I TO %s', a.privilege_type, c.relname,
                           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
             WHERE n.nspname = 'tally_read' AND c.relkind = 'v' AND a.grantee <> c.relowner",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let views: Vec<String> = VIEWS.iter().map(|view| format!("tally_read.{view}")).collect();
    admin.batch_execute(&format!("DROP VIEW IF EXISTS {}", views.join(", "))).await?;
    Ok(grants)
}

async fn migrate_generation(admin: &mut tokio_postgres::Client, generation: u64) -> Result<(), ProjectionError> {
    let schema = schema(generation);
    admin.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}")).await?;
    let result = generation::migrations::runner().set_migration_table_name("reporting_migrations").run_async(admin).await;
    admin.batch_execute("RESET search_path").await?;
    result.map(|_| ()).map_err(|e| ProjectionError::Migration(format!("{schema}: {e}")))
}

/// Points the `tally_read` views at `generation`. The columns are the same in every generation (one
/// set of migrations), so the views are replaced in place and keep their grants.
fn views_sql(generation: u64) -> String {
    let schema = schema(generation);
    let mut sql = String::new();
    for view in VIEWS {
        let _ = write!(sql, "CREATE OR REPLACE VIEW tally_read.{view} AS SELECT * FROM {schema}.{view};");
    }
    sql
}

async fn new_generation(admin: &mut tokio_postgres::Client) -> Result<u64, ProjectionError> {
    let others: Vec<i32> =
        admin.query("SELECT generation FROM tally_read_generations WHERE NOT live", &[]).await?.iter().map(|r| r.get(0)).collect();
    for other in others {
        // Held by its rebuilding process while it lives: a rebuild is running (here or on another node).
        let free: bool = admin.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&REBUILD_LOCK_CLASS, &other]).await?.get(0);
        if !free {
            return Err(ProjectionError::RebuildRunning { model: NAME });
        }
        admin.execute("SELECT pg_advisory_unlock($1, $2)", &[&REBUILD_LOCK_CLASS, &other]).await?;
        tracing::info!(generation = other, "dropping a reporting generation left by an interrupted rebuild");
        drop_abandoned(admin, other).await?;
    }
    let next: i32 = admin
        .query_one(
            "INSERT INTO tally_read_generations (generation) VALUES (nextval('tally_read_generation_ids')) RETURNING generation",
            &[],
        )
        .await?
        .get(0);
    let next = u64::try_from(next).unwrap_or(0);
    migrate_generation(admin, next).await?;
    defer_indexes(admin, next).await?;
    Ok(next)
}

/// Drops a generation that is not live: its row and its schema, together.
pub(super) async fn drop_abandoned(admin: &mut tokio_postgres::Client, generation: i32) -> Result<(), ProjectionError> {
    let tx = admin.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GENERATIONS_LOCK]).await?;
    if tx.execute("DELETE FROM tally_read_generations WHERE generation = $1 AND NOT live", &[&generation]).await? > 0 {
        tx.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema(u64::try_from(generation).unwrap_or(0)))).await?;
    }
    tx.commit().await?;
    Ok(())
}
