//! `giftctl --addr https://…` (issue 12, item 9) used to connect in
//! plaintext, sending codes and login keys in the clear to an address that
//! asked for TLS. giftctl has no TLS yet, so it refuses such an address
//! with a clear error instead, before connecting, even when a plaintext
//! giftxd answers at that host and port.

mod support;

use std::process::Command;

use support::Giftxd;

#[test]
fn https_is_refused_instead_of_spoken_in_plaintext() {
    let server = Giftxd::start("");
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let run = |addr: &str| {
        Command::new(support::giftctl())
            .env_remove("GIFTX_ADDR")
            .args(["--addr", addr, "campaign", "list"])
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
        assert!(stderr.contains("does not support TLS"), "{stderr}");
        assert!(stderr.contains(&addr), "{stderr}");
    }
    let out = run(&format!("ftp://127.0.0.1:{port}"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported scheme"),
        "{out:?}"
    );
}
