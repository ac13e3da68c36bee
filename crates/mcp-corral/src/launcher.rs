//! Turns a server entry (`package` + `packageManager`, or `command`) into a process to spawn.
//!
//! Seams: called by `config` during normalisation (pure, no I/O) and by the supervisor at
//! start ([`find_program`]) so a missing package manager is a per-server error, not a crash.

use std::path::{Path, PathBuf};

use crate::config::Launch;
use crate::config::model::{PackageManager, ServerSpec};

/// Resolves the launch line. Errors are `(field, message)` for the config diagnostics.
pub fn resolve(spec: &ServerSpec, config_file: &Path) -> Result<Launch, (&'static str, String)> {
    let cwd = spec.cwd.as_deref().map(|c| {
        let p = PathBuf::from(c);
        if p.is_absolute() {
            p
        } else {
            config_file.parent().map(|d| d.join(&p)).unwrap_or(p)
        }
    });
    let (program, mut args, package_manager) = match (&spec.package, &spec.command) {
        (Some(_), Some(_)) => {
            return Err((
                "command",
                "set either `package` (with `packageManager`) or `command`, not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                "",
                "needs `command` (an executable) or `package` with `packageManager`".into(),
            ));
        }
        (None, Some(cmd)) => {
            if cmd.trim().is_empty() {
                return Err(("command", "must not be empty".into()));
            }
            if spec.package_manager.is_some() || spec.version.is_some() {
                return Err((
                    "packageManager",
                    "`packageManager` and `version` only apply with `package`".into(),
                ));
            }
            (cmd.clone(), Vec::new(), None)
        }
        (Some(pkg), None) => {
            let pm = spec.package_manager.ok_or((
                "packageManager",
                "`package` needs `packageManager` (one of npx, pnpm, yarn, bun, deno, uvx, pipx)"
                    .to_string(),
            ))?;
            let (program, args) = package_command(pm, pkg, spec.version.as_deref());
            (program, args, Some(pm))
        }
    };
    args.extend(spec.args.iter().cloned());
    Ok(Launch {
        program,
        args,
        env: spec.env.clone(),
        cwd,
        package_manager,
    })
}

/// The command line each package manager uses to run a package without installing it globally.
fn package_command(pm: PackageManager, pkg: &str, version: Option<&str>) -> (String, Vec<String>) {
    let js = |sep: &str| match version {
        Some(v) => format!("{pkg}{sep}{v}"),
        None => pkg.to_string(),
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match pm {
        PackageManager::Npx => ("npx".into(), vec!["-y".into(), js("@")]),
        PackageManager::Pnpm => ("pnpm".into(), vec!["dlx".into(), js("@")]),
        PackageManager::Yarn => ("yarn".into(), vec!["dlx".into(), js("@")]),
        PackageManager::Bun => ("bun".into(), vec!["x".into(), js("@")]),
        PackageManager::Deno => {
            // Deno runs npm packages through the `npm:` specifier; jsr: and URLs pass as written.
            let spec = if pkg.contains(':') {
                js("@")
            } else {
                format!("npm:{}", js("@"))
            };
            ("deno".into(), s(&["run", "-A", &spec]))
        }
        PackageManager::Uvx => match version {
            Some(v) => ("uvx".into(), s(&["--from", &format!("{pkg}=={v}"), pkg])),
            None => ("uvx".into(), vec![pkg.to_string()]),
        },
        PackageManager::Pipx => match version {
            Some(v) => (
                "pipx".into(),
                s(&["run", "--spec", &format!("{pkg}=={v}"), pkg]),
            ),
            None => ("pipx".into(), s(&["run", pkg])),
        },
    }
}

/// Finds `program` the way `execvp` would; `None` when it is not on `PATH` (or not executable).
pub fn find_program(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path_var = path_var
        .map(|p| p.to_os_string())
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pm: PackageManager, version: Option<&str>) -> ServerSpec {
        ServerSpec {
            package: Some("@scope/pkg".into()),
            package_manager: Some(pm),
            version: version.map(str::to_string),
            args: vec!["--flag".into()],
            ..ServerSpec::default()
        }
    }

    #[test]
    fn package_managers_use_their_own_version_syntax() {
        let l = resolve(
            &spec(PackageManager::Npx, Some("1.2.3")),
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(
            (l.program.as_str(), l.args.clone()),
            (
                "npx",
                vec!["-y".into(), "@scope/pkg@1.2.3".into(), "--flag".into()]
            )
        );
        let l = resolve(&spec(PackageManager::Deno, None), Path::new("c.yaml")).unwrap();
        assert_eq!(l.args, vec!["run", "-A", "npm:@scope/pkg", "--flag"]);
        let l = resolve(&spec(PackageManager::Uvx, Some("2.0")), Path::new("c.yaml")).unwrap();
        assert_eq!(
            l.args,
            vec!["--from", "@scope/pkg==2.0", "@scope/pkg", "--flag"]
        );
        let l = resolve(&spec(PackageManager::Pipx, None), Path::new("c.yaml")).unwrap();
        assert_eq!(l.args, vec!["run", "@scope/pkg", "--flag"]);
    }

    #[test]
    fn package_and_command_are_exclusive() {
        let mut s = spec(PackageManager::Npx, None);
        s.command = Some("node".into());
        assert_eq!(resolve(&s, Path::new("c.yaml")).unwrap_err().0, "command");
    }
}
