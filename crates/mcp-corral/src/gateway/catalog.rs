//! The merged view of every enabled server's tools, prompts, resources and templates.
//!
//! Rebuilt whenever a server's lists change, so the hot path (`tools/list`, routing a call)
//! only reads: list results are pre-serialised and names map straight to their owner.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::Namespace;
use crate::config::model::NamespaceMode;
use crate::jsonrpc;
use crate::supervisor::Supervisor;

/// A pre-serialised list result (`{"tools":[…]}`).
pub struct ListResult {
    raw: Box<RawValue>,
    pub count: usize,
}

impl ListResult {
    fn new(field: &str, items: Vec<Value>) -> ListResult {
        let count = items.len();
        let mut obj = serde_json::Map::new();
        obj.insert(field.into(), Value::Array(items));
        ListResult {
            raw: jsonrpc::to_raw(&obj),
            count,
        }
    }

    pub fn to_response(&self, id: &RawValue) -> Vec<u8> {
        jsonrpc::response_raw(id, "result", self.raw.get())
    }

    pub fn raw(&self) -> &str {
        self.raw.get()
    }
}

pub struct Merged {
    pub tools: ListResult,
    pub prompts: ListResult,
    pub resources: ListResult,
    pub templates: ListResult,
    /// Exposed name → (server id, the server's own name).
    pub tool_owner: HashMap<String, (String, String)>,
    pub prompt_owner: HashMap<String, (String, String)>,
    resource_owner: HashMap<String, String>,
    /// Literal prefix of each URI template (up to its first `{`) → server, longest first.
    template_prefixes: Vec<(String, String)>,
    /// Every server with known lists, in order: the fallback owner for unmatched URIs.
    uri_schemes: Vec<(String, String)>,
}

/// Marks a tool as callable as a task unless it says otherwise.
fn offer_tasks(tool: &mut Value) {
    let Some(obj) = tool.as_object_mut() else {
        return;
    };
    let execution = obj
        .entry("execution")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(execution) = execution.as_object_mut() {
        execution
            .entry("taskSupport")
            .or_insert_with(|| Value::String("optional".into()));
    }
}

impl Merged {
    pub fn build(sup: &Supervisor, ns: &Namespace) -> Merged {
        let mut tools = Vec::new();
        let mut prompts = Vec::new();
        let mut resources = Vec::new();
        let mut templates = Vec::new();
        let mut tool_owner = HashMap::new();
        let mut prompt_owner = HashMap::new();
        let mut resource_owner = HashMap::new();
        let mut template_prefixes = Vec::new();
        let mut uri_schemes = Vec::new();
        for server in sup.all() {
            if !server.config.enabled {
                continue;
            }
            let id = server.id().to_string();
            let lists = server.lists();
            // Corral runs task-augmented calls itself for servers without task support, so
            // their tools may be called as tasks (`execution.taskSupport: optional`).
            let corral_runs_tasks = server
                .capabilities()
                .pointer("/tasks/requests/tools/call")
                .is_none();
            let expose = |name: &str| match ns.mode {
                NamespaceMode::Always => format!("{id}{}{name}", ns.separator),
                NamespaceMode::Never => name.to_string(),
            };
            for (items, out, owner, are_tools) in [
                (&lists.tools, &mut tools, &mut tool_owner, true),
                (&lists.prompts, &mut prompts, &mut prompt_owner, false),
            ] {
                for item in items {
                    let Some(name) = item.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    let exposed = expose(name);
                    if let Some((other, _)) = owner.get(&exposed) {
                        let msg = format!(
                            "name `{exposed}` is offered by both `{other}` and `{id}`; keeping `{other}`'s (use namespace mode `always`)"
                        );
                        tracing::error!("{msg}");
                        server.logs.push("corral", &msg);
                        continue;
                    }
                    owner.insert(exposed.clone(), (id.clone(), name.to_string()));
                    let mut item = item.clone();
                    item["name"] = Value::String(exposed);
                    if are_tools && corral_runs_tasks {
                        offer_tasks(&mut item);
                    }
                    out.push(item);
                }
            }
            for r in &lists.resources {
                if let Some(uri) = r.get("uri").and_then(Value::as_str) {
                    resource_owner
                        .entry(uri.to_string())
                        .or_insert_with(|| id.clone());
                }
                resources.push(r.clone());
            }
            for t in &lists.templates {
                if let Some(tpl) = t.get("uriTemplate").and_then(Value::as_str) {
                    let prefix = tpl.split('{').next().unwrap_or_default().to_string();
                    template_prefixes.push((prefix, id.clone()));
                }
                templates.push(t.clone());
            }
            for uri in lists
                .resources
                .iter()
                .filter_map(|r| r.get("uri")?.as_str())
                .chain(
                    lists
                        .templates
                        .iter()
                        .filter_map(|t| t.get("uriTemplate")?.as_str()),
                )
            {
                if let Some((scheme, _)) = uri.split_once("://") {
                    uri_schemes.push((format!("{scheme}://"), id.clone()));
                }
            }
        }
        template_prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Merged {
            tools: ListResult::new("tools", tools),
            prompts: ListResult::new("prompts", prompts),
            resources: ListResult::new("resources", resources),
            templates: ListResult::new("resourceTemplates", templates),
            tool_owner,
            prompt_owner,
            resource_owner,
            template_prefixes,
            uri_schemes,
        }
    }

    /// The server that owns `uri`: an exact listed resource, else the longest matching template
    /// prefix, else the only server using that URI scheme.
    pub fn owner_of_uri(&self, uri: &str) -> Option<String> {
        if let Some(s) = self.resource_owner.get(uri) {
            return Some(s.clone());
        }
        if let Some((_, s)) = self
            .template_prefixes
            .iter()
            .find(|(p, _)| !p.is_empty() && uri.starts_with(p.as_str()))
        {
            return Some(s.clone());
        }
        let mut owners = self
            .uri_schemes
            .iter()
            .filter(|(scheme, _)| uri.starts_with(scheme.as_str()))
            .map(|(_, s)| s);
        let first = owners.next()?;
        owners.all(|s| s == first).then(|| first.clone())
    }

    /// The `list_changed` notifications to send after replacing `old` with `self`.
    pub fn changed_since(&self, old: &Merged) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.tools.raw() != old.tools.raw() {
            out.push("notifications/tools/list_changed");
        }
        if self.prompts.raw() != old.prompts.raw() {
            out.push("notifications/prompts/list_changed");
        }
        if self.resources.raw() != old.resources.raw()
            || self.templates.raw() != old.templates.raw()
        {
            out.push("notifications/resources/list_changed");
        }
        out
    }
}
