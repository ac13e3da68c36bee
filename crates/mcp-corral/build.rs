//! Link-time choices for the `corral` binary.
//!
//! A position-independent binary carries one relocation per stored pointer, and the dynamic loader
//! reads all of them at every start. In the classic `RELA` form that table is about 1 MiB here,
//! and reading it leaves 1 MiB of the binary resident in a long-lived gateway that never looks at
//! it again. `-z pack-relative-relocs` (`DT_RELR`) stores the same relocations as bitmaps in a
//! few kilobytes. The loader support arrived in glibc 2.36, so the flag is only passed when the
//! binary is built for the glibc it runs on and that glibc is recent enough.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CORRAL_NO_RELR");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host
        || !target.ends_with("-linux-gnu")
        || std::env::var_os("CORRAL_NO_RELR").is_some()
    {
        return;
    }
    if host_glibc().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The host's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}
