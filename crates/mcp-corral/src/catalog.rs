//! Persistence: each server's last known tool, resource, template and prompt lists, so that a
//! stopped server's tools can still be listed and called (which starts it).
//!
//! One JSON file per server in `$XDG_STATE_HOME/corral/lists/`, holding the lists exactly as the
//! server sent them, so nothing a server declared is lost across restarts of Corral. The data is a
//! small key-value map written only when a server's lists change, so plain files do the job: they
//! can be read and deleted by hand, and a long-running gateway does not keep a database engine's
//! code resident for it. A save writes a temporary file and renames it over the old one, so a
//! crash or a second Corral sharing the directory never leaves a half-written list behind, and
//! the gateway saves on tokio's blocking pool so that a slow disk never stalls a call.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
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
#[error("state directory {path}: {source}")]
pub struct StoreError {
    path: String,
    source: std::io::Error,
}

/// One server's file. The id is stored inside so that file names only need to be safe, not
/// reversible. Borrowed when written, owned when read.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    server_id: Cow<'a, str>,
    tools: Cow<'a, [Value]>,
    resources: Cow<'a, [Value]>,
    templates: Cow<'a, [Value]>,
    prompts: Cow<'a, [Value]>,
    updated_at: String,
}

/// The directory of list files. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    /// Per server, the ticket of the newest save written, so a background save that finishes
    /// after a newer one is dropped instead of overwriting it. Held while a file is written.
    written: Arc<Mutex<HashMap<String, u64>>>,
    tickets: Arc<AtomicU64>,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("lists");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Store {
            dir,
            written: Arc::default(),
            tickets: Arc::default(),
        })
    }

    /// Every readable server file. A file that does not parse is skipped with a warning: its
    /// server is simply rediscovered, which is what would happen had it never been written.
    pub fn load_all(&self) -> Result<HashMap<String, Lists>, StoreError> {
        let err = |source| StoreError {
            path: self.dir.display().to_string(),
            source,
        };
        let mut out = HashMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string())
                });
            match record {
                Ok(r) => {
                    out.insert(
                        r.server_id.into_owned(),
                        Lists {
                            tools: r.tools.into_owned(),
                            resources: r.resources.into_owned(),
                            templates: r.templates.into_owned(),
                            prompts: r.prompts.into_owned(),
                            known: true,
                        },
                    );
                }
                Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
            }
        }
        Ok(out)
    }

    /// Saves on the blocking pool: the write and its sync can take milliseconds on a slow disk,
    /// and must not stall the runtime that relays every call. Saves of one server land in the
    /// order they were asked for; a failure is logged.
    pub fn save_in_background(&self, server: &str, lists: &Lists) {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed) + 1;
        let (store, server, lists) = (self.clone(), server.to_string(), lists.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.save_ticketed(&server, &lists, ticket) {
                tracing::warn!("cannot persist lists of {server}: {e}");
            }
        });
    }

    /// A save in the caller's thread, for tests.
    #[cfg(test)]
    pub fn save(&self, server: &str, lists: &Lists) -> Result<(), StoreError> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed) + 1;
        self.save_ticketed(server, lists, ticket)
    }

    fn save_ticketed(&self, server: &str, lists: &Lists, ticket: u64) -> Result<(), StoreError> {
        let mut written = lock(&self.written);
        if written.get(server).is_some_and(|newest| *newest > ticket) {
            return Ok(());
        }
        self.write(server, lists)?;
        written.insert(server.to_string(), ticket);
        Ok(())
    }

    fn write(&self, server: &str, lists: &Lists) -> Result<(), StoreError> {
        let record = Record {
            server_id: Cow::Borrowed(server),
            tools: Cow::Borrowed(&lists.tools),
            resources: Cow::Borrowed(&lists.resources),
            templates: Cow::Borrowed(&lists.templates),
            prompts: Cow::Borrowed(&lists.prompts),
            updated_at: crate::time::now(),
        };
        let path = self.dir.join(format!("{}.json", file_stem(server)));
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        // Values are already JSON, so serialising them cannot fail.
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| err(e.into()))?;
        // Unique per process and per save, so concurrent writers never share a temporary file.
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            file_stem(server),
            std::process::id(),
            SAVES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_data()
        });
        let renamed = written.and_then(|()| std::fs::rename(&tmp, &path));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed.map_err(err)
    }
}

/// A file name for a server id: letters, digits, `-` and `_` as they are, every other byte as
/// `%XX`, so that no id can name a path outside the directory or collide with another id.
fn file_stem(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lists(tool: &str) -> Lists {
        Lists {
            tools: vec![
                json!({"name": tool, "execution": {"taskSupport": "optional"}, "x-vendor": 1}),
            ],
            known: true,
            ..Lists::default()
        }
    }

    #[test]
    fn lists_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .save("a", &lists("echo"))
            .unwrap();
        let loaded = Store::open(dir.path()).unwrap().load_all().unwrap();
        assert_eq!(loaded["a"], lists("echo"));
    }

    #[test]
    fn a_save_replaces_the_previous_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save("a", &lists("old")).unwrap();
        store.save("a", &lists("new")).unwrap();
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["a"], lists("new"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("lists"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["a.json"], "no temporary files are left behind");
    }

    #[test]
    fn any_server_id_stays_inside_the_directory_and_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids = [
            "../escape",
            "a/b",
            "a%2Fb",
            ".",
            "..",
            "name with spaces",
            "é",
        ];
        for id in ids {
            store.save(id, &lists(id)).unwrap();
        }
        let loaded = store.load_all().unwrap();
        for id in ids {
            assert_eq!(loaded[id], lists(id), "{id}");
        }
        assert!(!dir.path().join("escape.json").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_save_that_lands_after_a_newer_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_ticketed("a", &lists("newer"), 2).unwrap();
        store.save_ticketed("a", &lists("older"), 1).unwrap();
        assert_eq!(store.load_all().unwrap()["a"], lists("newer"));
    }

    #[tokio::test]
    async fn a_background_save_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_in_background("a", &lists("echo"));
        for _ in 0..200 {
            if let Some(found) = store.load_all().unwrap().remove("a") {
                assert_eq!(found, lists("echo"));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the background save never landed");
    }

    #[test]
    fn an_unreadable_file_is_skipped_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save("good", &lists("echo")).unwrap();
        std::fs::write(dir.path().join("lists/bad.json"), "{not json").unwrap();
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["good"], lists("echo"));
    }
}
