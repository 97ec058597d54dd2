//! `giftctl --addr https://…` (issue 12, item 9) once connected in
//! plaintext, sending codes and login keys in the clear to an address that
//! asked for TLS. Now `https://` means TLS: against a plaintext giftxd the
//! handshake fails with a clear error, and nothing is sent in the clear;
//! other schemes are refused before connecting.

mod support;

use std::process::Command;

use support::Giftxd;

#[test]
fn https_is_tls_and_never_spoken_in_plaintext() {
    let server = Giftxd::start("");
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let run = |addr: &str| {
        let mut c = Command::new(support::giftctl());
        for (k, _) in std::env::vars() {
            if k.starts_with("GIFTX_") {
                c.env_remove(k);
            }
        }
        c.args(["--addr", addr, "campaign", "list"])
            .output()
            .unwrap()
    };
    // The same giftxd over http:// works.
    let ok = run(&format!("http://127.0.0.1:{port}"));
    assert!(ok.status.success(), "{ok:?}");
    for addr in [
        format!("https://127.0.0.1:{port}"),
        format!("HTTPS://127.0.0.1:{port}"),
    ] {
        let out = run(&addr);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{addr} was spoken to: {out:?}");
        assert!(stderr.contains("does not seem to speak TLS"), "{stderr}");
        assert!(stderr.contains(&addr), "{stderr}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    let out = run(&format!("ftp://127.0.0.1:{port}"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported scheme"),
        "{out:?}"
    );
}
