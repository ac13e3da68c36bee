//! Clients of one protocol era using servers of the other, through Corral, with the official
//! Python SDK client: an initialize-era client and a 2026-07-28 client, each against a server
//! that speaks only 2026-07-28 (tests/fixtures/modern_only.py, refuses `initialize`) and against
//! server-everything (initialize era only), over both fronts. Each run includes an elicitation
//! round trip, which crosses eras as a server-to-client request on one side and as an
//! `input_required` result on the other.

mod common;

use common::*;
use serde_json::Value;

fn modern_yaml() -> String {
    format!(
        "servers:\n  modern:\n    command: {}\n    args: [\"-u\", \"{}\"]\n    autoStart: true\n",
        venv_bin("python").display(),
        repo().join("tests/fixtures/modern_only.py").display()
    )
}

fn script() -> String {
    repo()
        .join("tests/clients/py_cross_era.py")
        .display()
        .to_string()
}

/// Runs the client in `mode` against the server `behind` Corral, over `front` (extra args).
fn run(mode: &str, behind: &str, front: &[String]) -> Value {
    let mut args = vec![script(), mode.into(), behind.into()];
    args.extend_from_slice(front);
    run_client(venv_bin("python").to_str().unwrap(), &args)
}

fn check(out: &Value, mode: &str, behind: &str) {
    let want = if mode == "legacy" {
        "2025-11-25"
    } else {
        "2026-07-28"
    };
    assert_eq!(out["protocol"], want, "{out}");
    assert_eq!(
        out["seen"]["mode"], want,
        "the callback ran in that era: {out}"
    );
    if behind == "modern" {
        assert_eq!(out["echo"][0], "across eras", "{out}");
        assert_eq!(out["asked"][0], "Hello, Grace!", "{out}");
        assert_eq!(out["seen"]["elicitation"], "Who is there?", "{out}");
    } else {
        assert_eq!(out["echo"][0], "Echo: across eras", "{out}");
        assert!(out["asked"].to_string().contains("Name: Grace"), "{out}");
    }
}

async fn over_http(yaml: &str, mode: &str, behind: &str) {
    let c = Corral::start(yaml, &[]).await;
    check(
        &run(mode, behind, &["http".into(), c.url("/mcp")]),
        mode,
        behind,
    );
    c.terminate().await;
}

fn over_stdio(yaml: &str, mode: &str, behind: &str) {
    let (_dir, front) = stdio_front(yaml);
    check(&run(mode, behind, &front), mode, behind);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_only_server_is_found_with_server_discover() {
    let c = Corral::start(&modern_yaml(), &[]).await;
    let s = c
        .wait_status("modern", 20, |s| s["state"] == "running")
        .await;
    assert_eq!(s["protocolVersion"], "2026-07-28", "{s}");
    c.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn initialize_era_client_uses_a_2026_only_server() {
    over_http(&modern_yaml(), "legacy", "modern").await;
    over_stdio(&modern_yaml(), "legacy", "modern");
}

#[tokio::test(flavor = "multi_thread")]
async fn stateless_client_uses_a_2026_only_server() {
    over_http(&modern_yaml(), "auto", "modern").await;
    over_stdio(&modern_yaml(), "auto", "modern");
}

#[tokio::test(flavor = "multi_thread")]
async fn stateless_client_answers_an_initialize_era_server_through_input_required() {
    over_http(&everything_yaml(true), "auto", "everything").await;
    over_stdio(&everything_yaml(true), "auto", "everything");
}

/// The fixture serving Streamable HTTP on a free port, killed on drop.
struct HttpFixture {
    child: std::process::Child,
    url: String,
}

impl HttpFixture {
    async fn start() -> HttpFixture {
        let port = free_port();
        // Killed and waited for on drop.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(venv_bin("python"))
            .arg(repo().join("tests/fixtures/modern_only.py"))
            .args(["http", &port.to_string()])
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/mcp");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return HttpFixture { child, url };
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the HTTP fixture did not listen on {port}");
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn both_eras_use_a_2026_only_remote_server_over_http() {
    let fixture = HttpFixture::start().await;
    let yaml = format!(
        "servers:\n  modern:\n    transport: {{type: http, url: \"{}\"}}\n    autoStart: true\n",
        fixture.url
    );
    let c = Corral::start(&yaml, &[]).await;
    let s = c
        .wait_status("modern", 20, |s| s["state"] == "running")
        .await;
    assert_eq!(s["protocolVersion"], "2026-07-28", "{s}");
    assert_eq!(
        s["inFlight"], 0,
        "the list-change subscription is not a call: {s}"
    );
    for mode in ["legacy", "auto"] {
        check(
            &run(mode, "modern", &["http".into(), c.url("/mcp")]),
            mode,
            "modern",
        );
    }
    c.terminate().await;
}

/// An initialize-era client that never answers the input a 2026-07-28 server needs: when the
/// server's `limits.timeout` passes, the call fails and the client is told the request it was
/// sent is withdrawn (`notifications/cancelled` under the id it got), so nothing waits forever.
#[tokio::test(flavor = "multi_thread")]
async fn unanswered_input_is_withdrawn_from_the_client_when_the_call_gives_up() {
    let yaml = format!("{}    limits:\n      timeout: 2\n", modern_yaml());
    let mut peer = StdioPeer::corral(&yaml).await;
    peer.initialize_as("2025-11-25", serde_json::json!({"elicitation": {}}))
        .await;
    let call = peer
        .start(
            serde_json::json!(1),
            "tools/call",
            serde_json::json!({"name": "modern__greet", "arguments": {}}),
        )
        .await;
    let ask = peer.next_message(30).await;
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    let withdrawn = peer.next_message(30).await;
    assert_eq!(
        withdrawn["method"], "notifications/cancelled",
        "{withdrawn}"
    );
    assert_eq!(withdrawn["params"]["requestId"], ask["id"], "{withdrawn}");
    let failed = tokio::time::timeout(std::time::Duration::from_secs(30), call)
        .await
        .unwrap()
        .unwrap();
    assert!(
        failed
            .to_string()
            .contains("did not answer `elicitation/create` within 2 s"),
        "{failed}"
    );
}
