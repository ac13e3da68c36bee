//! Persistence: each server's last known tool, resource, template and prompt lists, so that a
//! stopped server's tools can still be listed and called (which starts it).
//!
//! SQLite in `$XDG_STATE_HOME/corral/state.db`. Lists are stored as the raw JSON the server sent,
//! so nothing a server declared is lost across restarts of Corral.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use serde_json::Value;

use crate::upstream::lock;

/// What one server offers, as last seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lists {
    pub tools: Vec<Value>,
    pub resources: Vec<Value>,
    pub templates: Vec<Value>,
    pub prompts: Vec<Value>,
    /// False until the server has been listed at least once (live or from the store).
    pub known: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StoreError {
    path: String,
    source: rusqlite::Error,
}

/// The state database. Cheap to clone; writes are small and rare (on list changes).
#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    path: String,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("state.db");
        let shown = path.display().to_string();
        let err = |source| StoreError {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let db = Connection::open(&path).map_err(err)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA busy_timeout=2000;
             CREATE TABLE IF NOT EXISTS server_lists (
                 server_id TEXT PRIMARY KEY,
                 tools TEXT NOT NULL,
                 resources TEXT NOT NULL,
                 templates TEXT NOT NULL,
                 prompts TEXT NOT NULL,
                 updated_at TEXT NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Store {
            db: Arc::new(Mutex::new(db)),
            path: shown,
        })
    }

    pub fn load_all(&self) -> Result<HashMap<String, Lists>, StoreError> {
        let err = |source| StoreError {
            path: self.path.clone(),
            source,
        };
        let db = lock(&self.db);
        let mut stmt = db
            .prepare("SELECT server_id, tools, resources, templates, prompts FROM server_lists")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |row| {
                let parse = |i: usize| -> rusqlite::Result<Vec<Value>> {
                    let text: String = row.get(i)?;
                    Ok(serde_json::from_str(&text).unwrap_or_default())
                };
                Ok((
                    row.get::<_, String>(0)?,
                    Lists {
                        tools: parse(1)?,
                        resources: parse(2)?,
                        templates: parse(3)?,
                        prompts: parse(4)?,
                        known: true,
                    },
                ))
            })
            .map_err(err)?;
        rows.collect::<Result<HashMap<_, _>, _>>().map_err(err)
    }

    pub fn save(&self, server: &str, lists: &Lists) -> Result<(), StoreError> {
        let text = |v: &Vec<Value>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        lock(&self.db)
            .execute(
                "INSERT INTO server_lists (server_id, tools, resources, templates, prompts, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(server_id) DO UPDATE SET tools=?2, resources=?3, templates=?4, prompts=?5, updated_at=?6",
                params![server, text(&lists.tools), text(&lists.resources), text(&lists.templates), text(&lists.prompts), crate::time::now()],
            )
            .map(|_| ())
            .map_err(|source| StoreError { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let lists = Lists {
            tools: vec![json!({"name": "echo", "execution": {"taskSupport": "optional"}})],
            known: true,
            ..Lists::default()
        };
        Store::open(dir.path()).unwrap().save("a", &lists).unwrap();
        let loaded = Store::open(dir.path()).unwrap().load_all().unwrap();
        assert_eq!(loaded["a"], lists);
    }
}
