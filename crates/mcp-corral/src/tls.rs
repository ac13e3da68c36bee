//! TLS for outgoing HTTPS (remote upstreams): rustls with the `ring` provider, which builds
//! without a C toolchain step as heavy as aws-lc's, and the platform's certificate roots.

/// Installs the process-wide crypto provider once; later calls do nothing.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
