//! Trust, end to end: the real giftctl against real giftxd processes that
//! serve TLS (test certificates from giftx-testkit) and need API keys
//! (`GIFTX_ADMIN_TOKEN_FILE`; `GIFTX_AUTH_CACHE_MS=0`, so a revocation is
//! seen at once).
//!
//! - `keys create` (the bootstrap admin's token from a file) prints the
//!   token once; the keys it makes work by role: an operator lists
//!   campaigns, a portal key is refused them (PERMISSION_DENIED, a readable
//!   line, non-zero exit); no token or a wrong one is UNAUTHENTICATED with
//!   a hint naming --token and GIFTX_TOKEN;
//! - `keys list` shows keys and their state, never tokens; `keys revoke`
//!   and the revoked token is refused;
//! - `audit list` shows the calls made, oldest first, by whom, with what
//!   outcome; an operator sees its own tenant's events only;
//! - TLS: https:// without --ca-cert fails on the untrusted CA; http:// to
//!   the TLS port fails clearly; TLS files with http:// and bad PEM files
//!   are refused before connecting;
//! - mTLS: a giftxd with GIFTX_TLS_CLIENT_CA_FILE refuses giftctl without
//!   --client-cert, or with a certificate of another CA, and accepts it
//!   with one.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use giftx_testkit::TestPki;
use serde_json::Value;
use support::Giftxd;

const CONFIG: &str = r#"
[providers.emoney-a]
kind = "simulated"
"#;

/// giftctl with no GIFTX_* from the test's environment, stdin closed, in
/// UTC, with `env` and `args`.
fn giftctl(env: &[(&str, &OsStr)], args: &[&str]) -> Output {
    let mut c = Command::new(support::giftctl());
    for (k, _) in std::env::vars() {
        if k.starts_with("GIFTX_") {
            c.env_remove(k);
        }
    }
    c.env("TZ", "UTC0")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run giftctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "giftctl failed: {out:?}");
    stdout(&out)
}

/// The one-line error of a failed giftctl (stderr).
fn failed(out: Output) -> String {
    assert!(!out.status.success(), "giftctl should have failed: {out:?}");
    let err = stderr(&out);
    assert!(err.starts_with("giftctl: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// 64 random hex characters, as `openssl rand -hex 32` prints.
fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A giftxd serving TLS with the test CA's server certificate, needing API
/// keys (the bootstrap admin's token in `admin.token`), revocations seen at
/// once.
struct Trusted {
    giftxd: Giftxd,
    ca: PathBuf,
    admin_token_file: PathBuf,
}

fn start_trusted(dir: &Path, pki: &TestPki) -> Trusted {
    let admin_token_file = dir.join("admin.token");
    std::fs::write(&admin_token_file, format!("{}\n", random_token())).unwrap();
    let giftxd = Giftxd::start_with(
        CONFIG,
        &[
            ("GIFTX_TLS_CERT_FILE", pki.server_cert().as_os_str()),
            ("GIFTX_TLS_KEY_FILE", pki.server_key().as_os_str()),
            ("GIFTX_ADMIN_TOKEN_FILE", admin_token_file.as_os_str()),
            ("GIFTX_AUTH_CACHE_MS", OsStr::new("0")),
        ],
    );
    assert!(
        giftxd.addr.starts_with("https://127.0.0.1:"),
        "{}",
        giftxd.addr
    );
    Trusted {
        giftxd,
        ca: pki.ca(),
        admin_token_file,
    }
}

impl Trusted {
    /// giftctl over TLS (trusting the test CA) with `token`, if any.
    fn run(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut env: Vec<(&str, &OsStr)> = vec![
            ("GIFTX_ADDR", OsStr::new(&self.giftxd.addr)),
            ("GIFTX_CA_CERT", self.ca.as_os_str()),
        ];
        if let Some(t) = token {
            env.push(("GIFTX_TOKEN", OsStr::new(t)));
        }
        giftctl(&env, args)
    }

    /// giftctl as the bootstrap admin (`--token-file`).
    fn admin(&self, args: &[&str]) -> Output {
        let file = self.admin_token_file.to_str().unwrap();
        let all: Vec<&str> = ["--token-file", file]
            .iter()
            .copied()
            .chain(args.iter().copied())
            .collect();
        self.run(None, &all)
    }

    /// A new key of `tenant` with `role` (`keys create --json`); returns
    /// its JSON.
    fn create_key(&self, tenant: &str, role: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "keys", "create", "--tenant", tenant, "--role", role, "--json",
        ];
        args.extend_from_slice(extra);
        json(&ok(self.admin(&args)))
    }
}

/// `audit list --json` as the bootstrap admin until `want` holds for its
/// events (the trail is written in the background), or 10 s.
fn audit_until(t: &Trusted, token: Option<&str>, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = match token {
            Some(_) => t.run(token, &["audit", "list", "--json"]),
            None => t.admin(&["audit", "list", "--json"]),
        };
        let v = json(&ok(out));
        let events = v["audit_events"].as_array().expect("audit_events").clone();
        if want(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_event(events: &[Value], principal: &str, method: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| e["principal"] == principal && e["method"] == method && e["outcome"] == outcome)
}

#[test]
fn keys_roles_revocation_and_audit_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "giftx-test-ca");
    let t = start_trusted(dir.path(), &pki);

    // keys create: the token once, in JSON as `token`.
    let operator = t.create_key("acme", "operator", &["--description", "acme ops"]);
    let op_name = operator["name"].as_str().unwrap().to_owned();
    assert!(op_name.starts_with("apiKeys/"), "{operator}");
    assert_eq!(operator["tenant"], "acme");
    assert_eq!(operator["role"], "operator");
    assert_eq!(operator["state"], "active");
    assert_eq!(operator["expire_time"], Value::Null);
    assert!(operator["create_time"].is_string(), "{operator}");
    assert_eq!(operator["description"], "acme ops");
    let op_token = operator["token"].as_str().unwrap().to_owned();
    assert!(op_token.starts_with("gx1."), "{operator}");

    let portal = t.create_key("acme", "portal", &["--expires", "30d"]);
    assert_eq!(portal["role"], "portal");
    assert!(portal["expire_time"].is_string(), "{portal}");
    let portal_token = portal["token"].as_str().unwrap().to_owned();

    // Human output: the token on its own line, after the warning.
    let text = ok(t.admin(&[
        "keys",
        "create",
        "--tenant",
        "other",
        "--role",
        "operator",
        "--expires",
        "2099-01-01T09:00:00+09:00",
    ]));
    assert!(text.contains("shown only this once"), "{text}");
    assert!(text.contains("tenant        other"), "{text}");
    assert!(text.contains("role          operator"), "{text}");
    assert!(
        text.contains("expires       2099-01-01T09:00:00+09:00"),
        "{text}"
    );
    let other_token = text.lines().last().unwrap().trim().to_owned();
    assert!(other_token.starts_with("gx1."), "{text}");

    // An operator key works for operator commands, in its tenant.
    let created = ok(t.run(
        Some(&op_token),
        &[
            "campaign",
            "create",
            "apology",
            "--display-name",
            "Apology",
            "--face-value",
            "500",
            "--currency",
            "JPY",
            "--deadline",
            "2099-12-15T00:00:00Z",
            "--option",
            "id=emoney-a,provider=emoney-a",
        ],
    ));
    assert!(created.contains("campaigns/apology"), "{created}");
    let list = ok(t.run(Some(&op_token), &["campaign", "list"]));
    assert!(list.contains("apology"), "{list}");
    // The other tenant's operator does not see acme's campaign.
    let list = ok(t.run(Some(&other_token), &["campaign", "list", "--json"]));
    assert_eq!(json(&list)["campaigns"], serde_json::json!([]), "{list}");

    // A portal key may not: PERMISSION_DENIED, one readable line.
    let err = failed(t.run(Some(&portal_token), &["campaign", "list"]));
    assert!(
        err.contains("ListCampaigns failed: PERMISSION_DENIED"),
        "{err}"
    );
    assert!(err.contains("ROLE_NOT_ALLOWED"), "{err}");
    assert!(err.contains("an operator or admin key"), "{err}");
    assert!(
        !err.contains(&portal_token),
        "the token is never shown: {err}"
    );
    let out = t.run(Some(&portal_token), &["campaign", "list", "--json"]);
    assert!(!out.status.success());
    let v = json(&stdout(&out));
    assert_eq!(v["error"]["code"], "PERMISSION_DENIED", "{v}");
    assert_eq!(v["error"]["reason"], "ROLE_NOT_ALLOWED", "{v}");
    // Nor may an operator manage keys.
    let err = failed(t.run(Some(&op_token), &["keys", "list"]));
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("an admin key"),
        "{err}"
    );

    // No token, a wrong one: UNAUTHENTICATED, saying what to pass.
    let err = failed(t.run(None, &["campaign", "list"]));
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    assert!(err.contains("API_KEY_MISSING"), "{err}");
    assert!(
        err.contains("--token") && err.contains("GIFTX_TOKEN"),
        "{err}"
    );
    let wrong = "gx1.0123456789abcdef.not-the-secret";
    let err = failed(t.run(Some(wrong), &["campaign", "list"]));
    assert!(err.contains("API_KEY_INVALID"), "{err}");
    assert!(!err.contains(wrong), "the token is never shown: {err}");

    // --token and --token-file (or their variables) together: refused.
    let file = t.admin_token_file.to_str().unwrap();
    let err = failed(t.run(Some(&op_token), &["--token-file", file, "campaign", "list"]));
    assert!(
        err.contains("--token") && err.contains("--token-file"),
        "{err}"
    );
    // A token file that does not exist is named.
    let err = failed(t.run(
        None,
        &["--token-file", "/nonexistent/token", "campaign", "list"],
    ));
    assert!(err.contains("/nonexistent/token"), "{err}");

    // keys list: every key, its state, never a token.
    let v = json(&ok(t.admin(&["keys", "list", "--json"])));
    let keys = v["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{v}");
    assert!(keys.iter().all(|k| k.get("token").is_none()), "{v}");
    assert!(
        !v.to_string().contains(&op_token[op_token.len() - 8..]),
        "{v}"
    );
    let v = json(&ok(t.admin(&["keys", "list", "--tenant", "acme", "--json"])));
    assert_eq!(v["api_keys"].as_array().unwrap().len(), 2, "{v}");
    let table = ok(t.admin(&["keys", "list"]));
    assert!(
        table.contains(&op_name) && table.contains("active"),
        "{table}"
    );
    assert!(table.contains("3 key(s)"), "{table}");

    // The operator sees its tenant's audit events only, while it may.
    let events = audit_until(&t, Some(&op_token), |ev| {
        has_event(
            ev,
            &op_name,
            "/giftx.v1.IssuanceService/ListCampaigns",
            "OK",
        )
    });
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["tenant"] == "acme"), "{events:?}");

    // keys revoke (by bare id) and the token is refused from then on.
    let id = op_name.strip_prefix("apiKeys/").unwrap();
    let revoked = json(&ok(t.admin(&["keys", "revoke", id, "--json"])));
    assert_eq!(revoked["name"], op_name.as_str());
    assert_eq!(revoked["state"], "revoked");
    assert!(revoked["revoke_time"].is_string(), "{revoked}");
    let err = failed(t.run(Some(&op_token), &["campaign", "list"]));
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("API_KEY_REVOKED"),
        "{err}"
    );
    assert!(err.contains("revoked"), "{err}");
    let table = ok(t.admin(&["keys", "list"]));
    let line = table.lines().find(|l| l.contains(&op_name)).unwrap();
    assert!(line.contains("revoked"), "{table}");
    let err = failed(t.admin(&["keys", "revoke", "apiKeys/0000000000000000"]));
    assert!(err.contains("NOT_FOUND"), "{err}");

    // audit list: the calls made, oldest first, with their outcome.
    let events = audit_until(&t, None, |ev| {
        has_event(
            ev,
            "bootstrap",
            "/giftx.v1.AccessService/RevokeApiKey",
            "OK",
        ) && has_event(
            ev,
            &op_name,
            "/giftx.v1.IssuanceService/CreateCampaign",
            "OK",
        )
    });
    assert!(
        has_event(
            &events,
            "bootstrap",
            "/giftx.v1.AccessService/CreateApiKey",
            "OK"
        ),
        "{events:?}"
    );
    assert!(
        has_event(
            &events,
            &op_name,
            "/giftx.v1.IssuanceService/CreateCampaign",
            "OK"
        ),
        "{events:?}"
    );
    assert!(
        has_event(
            &events,
            &op_name,
            "/giftx.v1.IssuanceService/ListCampaigns",
            "OK"
        ),
        "{events:?}"
    );
    assert!(
        has_event(
            &events,
            &op_name,
            "/giftx.v1.AccessService/ListApiKeys",
            "PERMISSION_DENIED"
        ),
        "{events:?}"
    );
    assert!(
        has_event(
            &events,
            "bootstrap",
            "/giftx.v1.AccessService/RevokeApiKey",
            "OK"
        ),
        "{events:?}"
    );
    let revoke = events
        .iter()
        .find(|e| e["method"] == "/giftx.v1.AccessService/RevokeApiKey" && e["outcome"] == "OK")
        .unwrap();
    assert_eq!(revoke["resource"], op_name.as_str(), "{revoke}");
    assert_eq!(revoke["role"], "admin", "{revoke}");
    let times: Vec<jiff::Timestamp> = events
        .iter()
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted, "oldest first");
    // --limit, --since, and the table.
    let v = json(&ok(t.admin(&[
        "audit", "list", "--since", "1h", "--limit", "2", "--json",
    ])));
    assert_eq!(v["audit_events"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["audit_events"][0], events[0]);
    let v = json(&ok(t.admin(&[
        "audit",
        "list",
        "--since",
        "2099-01-01T00:00:00Z",
        "--json",
    ])));
    assert_eq!(v["audit_events"], serde_json::json!([]), "{v}");
    let table = ok(t.admin(&["audit", "list"]));
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("IssuanceService/CreateCampaign"), "{table}");
    assert!(table.contains("campaigns/apology"), "{table}");
    // --follow: new events as they come, until --limit.
    let out = ok(t.admin(&["audit", "list", "--follow", "--limit", "3", "--json"]));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(json(out.lines().next().unwrap()), events[0]);
}

#[test]
fn tls_and_mtls_failures_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "giftx-test-ca");
    let t = start_trusted(dir.path(), &pki);
    let addr = t.giftxd.addr.clone();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let admin_file = t.admin_token_file.to_str().unwrap().to_owned();
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let list = |extra: &[&str]| -> Output {
        let mut args = vec!["--token-file", admin_file.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["campaign", "list"]);
        giftctl(&[], &args)
    };

    // Trusting the test CA (flag or variable), by IP or by name: works.
    ok(list(&["--addr", &addr, "--ca-cert", ca]));
    ok(giftctl(
        &[
            (
                "GIFTX_ADDR",
                OsStr::new(&format!("https://localhost:{port}")),
            ),
            ("GIFTX_CA_CERT", OsStr::new(ca)),
            ("GIFTX_TOKEN_FILE", OsStr::new(&admin_file)),
        ],
        &["campaign", "list"],
    ));

    // Without --ca-cert the public web roots are trusted, not the test CA.
    let err = failed(list(&["--addr", &addr]));
    assert!(
        err.contains(&format!("cannot connect to giftxd at {addr}")),
        "{err}"
    );
    assert!(err.contains("not signed by a CA giftctl trusts"), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    // Another CA in --ca-cert: the same, naming the file.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::new(other_dir.path(), "another-ca");
    let other_ca = other.ca();
    let err = failed(list(&[
        "--addr",
        &addr,
        "--ca-cert",
        other_ca.to_str().unwrap(),
    ]));
    assert!(err.contains("not signed by the CA in --ca-cert"), "{err}");

    // http:// to the TLS port: a clear failure, not a hang or a puzzle.
    let out = list(&["--addr", &format!("http://127.0.0.1:{port}")]);
    let err = failed(out);
    assert!(err.contains("https://"), "{err}");

    // TLS files with http://: refused before anything is sent.
    let err = failed(list(&[
        "--addr",
        &format!("http://127.0.0.1:{port}"),
        "--ca-cert",
        ca,
    ]));
    assert!(
        err.contains("plaintext") && err.contains("--ca-cert"),
        "{err}"
    );
    // Unreadable and non-PEM files are named.
    let err = failed(list(&["--addr", &addr, "--ca-cert", "/nonexistent/ca.crt"]));
    assert!(err.contains("--ca-cert /nonexistent/ca.crt"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap();
    let err = failed(list(&["--addr", &addr, "--ca-cert", junk]));
    assert!(
        err.contains(&format!("--ca-cert {junk}")) && err.contains("PEM"),
        "{err}"
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let broken = broken.to_str().unwrap();
    let err = failed(list(&["--addr", &addr, "--ca-cert", broken]));
    assert!(err.contains(&format!("--ca-cert {broken}")), "{err}");
    let (crt, key) = pki.client("ops");
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    let err = failed(list(&[
        "--addr",
        &addr,
        "--ca-cert",
        ca,
        "--client-cert",
        crt,
    ]));
    assert!(
        err.contains("--client-key") && err.contains("both"),
        "{err}"
    );
    let err = failed(list(&[
        "--addr",
        &addr,
        "--ca-cert",
        ca,
        "--client-cert",
        crt,
        "--client-key",
        crt,
    ]));
    assert!(
        err.contains(&format!("--client-key {crt}")) && err.contains("private key"),
        "{err}"
    );

    // mTLS: a giftxd that wants client certificates of the test CA.
    let mtls = Giftxd::start_with(
        CONFIG,
        &[
            ("GIFTX_TLS_CERT_FILE", pki.server_cert().as_os_str()),
            ("GIFTX_TLS_KEY_FILE", pki.server_key().as_os_str()),
            ("GIFTX_TLS_CLIENT_CA_FILE", pki.ca().as_os_str()),
        ],
    );
    let m = |extra: &[&str]| -> Output {
        let mut args = vec!["--addr", mtls.addr.as_str(), "--ca-cert", ca];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["campaign", "list"]);
        giftctl(&[], &args)
    };
    let err = failed(m(&[]));
    assert!(
        err.contains("client certificate") && err.contains("--client-cert"),
        "{err}"
    );
    let (other_crt, other_key) = other.client("stranger");
    let err = failed(m(&[
        "--client-cert",
        other_crt.to_str().unwrap(),
        "--client-key",
        other_key.to_str().unwrap(),
    ]));
    assert!(err.contains("client certificate"), "{err}");
    let out = ok(m(&["--client-cert", crt, "--client-key", key]));
    assert!(out.contains("0 campaign(s)"), "{out}");
    // The variables work as the flags do.
    ok(giftctl(
        &[
            ("GIFTX_ADDR", OsStr::new(&mtls.addr)),
            ("GIFTX_CA_CERT", OsStr::new(ca)),
            ("GIFTX_CLIENT_CERT", OsStr::new(crt)),
            ("GIFTX_CLIENT_KEY", OsStr::new(key)),
        ],
        &["campaign", "list"],
    ));
}

#[test]
fn help_explains_the_global_flags_and_hides_the_token() {
    let out = giftctl(
        &[(
            "GIFTX_TOKEN",
            OsStr::new("gx1.0123456789abcdef.sekrit-value"),
        )],
        &["--help"],
    );
    let help = ok(out);
    for flag in [
        "--ca-cert",
        "--client-cert",
        "--client-key",
        "--token",
        "--token-file",
        "GIFTX_CA_CERT",
        "GIFTX_TOKEN",
        "https://",
        "keys",
        "audit",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    assert!(
        !help.contains("sekrit"),
        "the token's value is hidden: {help}"
    );
}
