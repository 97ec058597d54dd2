//! Issue 21 ("Operator and SRE experience"), end to end: the real giftctl
//! against a real giftxd process on a private Redis (giftxd started as
//! docs/OPERATING.md says, see `support`).
//!
//! - `--json` errors: one JSON object on stdout, non-zero exit.
//! - `batch void` and `campaign extend --force` (earlier) say what they will
//!   change, refuse without a terminal unless `--yes`, ask on a terminal.
//! - times shown in the typed zone, the local zone (TZ), or UTC (`--utc`).
//! - `shipments mark-shipped` with unknown references fails and lists them.
//! - `pending reconcile hello` is INVALID_ARGUMENT.
//! - a closed stdout (`| head`) ends giftctl quietly.
//! - a giftxd that does not serve a service: giftctl says which and how.
//! - `exchange` suggests no retry after a permanent refusal.
//! - `giftxd --help` says what giftxd is.

mod support;

use std::io::Read as _;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::Giftxd;

const CONFIG: &str = r#"
[providers.emoney-a]
kind = "simulated"

[providers.book-card]
kind = "shipment"
reference_prefix = "BOOK"
"#;

/// giftctl against `addr`, stdin closed (not a terminal), no TZ surprises.
fn giftctl(addr: &str, args: &[&str]) -> Command {
    let mut c = Command::new(support::giftctl());
    c.env("GIFTX_ADDR", addr)
        .env("TZ", "UTC0")
        .args(args)
        .stdin(Stdio::null());
    c
}

fn run(addr: &str, args: &[&str]) -> Output {
    giftctl(addr, args).output().unwrap()
}

fn ok(addr: &str, args: &[&str]) -> String {
    let out = run(addr, args);
    assert!(out.status.success(), "giftctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one JSON object a failed `--json` command prints on stdout.
fn json_error(out: &Output) -> Value {
    assert!(!out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout: {out:?}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert!(v["error"].is_object(), "{v}");
    v["error"].clone()
}

/// A campaign `c` (deadline typed in +09:00) with `n` codes in batch `b1`;
/// returns the first code and login key.
fn campaign_with_codes(addr: &str, work: &std::path::Path, n: usize) -> (String, String) {
    let created = ok(
        addr,
        &[
            "campaign",
            "create",
            "c",
            "--display-name",
            "C",
            "--face-value",
            "500",
            "--currency",
            "JPY",
            "--deadline",
            "2030-12-15T00:00:00+09:00",
            "--option",
            "id=emoney-a,provider=emoney-a",
            "--option",
            "id=book-card,provider=book-card",
        ],
    );
    // Shown back in the zone it was typed in, not as 2030-12-14T15:00:00Z.
    assert!(
        created.contains("deadline      2030-12-15T00:00:00+09:00"),
        "{created}"
    );
    let file = work.join("b1.csv");
    ok(
        addr,
        &[
            "issue",
            "--campaign",
            "c",
            "--count",
            &n.to_string(),
            "--batch",
            "b1",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let row: Vec<&str> = text.lines().nth(1).unwrap().split(',').collect();
    (row[1].to_owned(), row[2].to_owned())
}

#[test]
fn operator_surface_on_redis() {
    let server = Giftxd::start(CONFIG);
    let addr = server.addr.as_str();
    let work = tempfile::tempdir().unwrap();
    let (code, key) = campaign_with_codes(addr, work.path(), 5);

    // --json errors: code, reason, message, details; non-zero exit.
    let e = json_error(&run(addr, &["--json", "campaign", "show", "nope"]));
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    assert_eq!(e["reason"], "CAMPAIGN_NOT_FOUND", "{e}");
    assert_eq!(e["rpc"], "GetCampaign", "{e}");
    assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    assert_eq!(
        e["details"]["error_info"]["reason"], "CAMPAIGN_NOT_FOUND",
        "{e}"
    );
    // …command-line errors too, naming giftxd's real bound for --count.
    let e = json_error(&run(
        addr,
        &[
            "--json",
            "issue",
            "--campaign",
            "c",
            "--count",
            "0",
            "--batch",
            "b",
            "--out",
            "x",
        ],
    ));
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert!(e["message"].as_str().unwrap().contains("10000000"), "{e}");

    // pending reconcile hello: INVALID_ARGUMENT, as the proto says.
    let out = run(addr, &["--json", "pending", "reconcile", "hello"]);
    let e = json_error(&out);
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert_eq!(e["details"]["field_violations"][0]["field"], "name", "{e}");

    // Times: the local zone from TZ, or UTC with --utc.
    let tokyo = giftctl(addr, &["campaign", "show", "c"])
        .env("TZ", "JST-9")
        .output()
        .unwrap();
    let tokyo = String::from_utf8_lossy(&tokyo.stdout);
    assert!(
        tokyo.contains("deadline      2030-12-15T00:00:00+09:00"),
        "{tokyo}"
    );
    let utc = giftctl(addr, &["campaign", "show", "c", "--utc"])
        .env("TZ", "JST-9")
        .output()
        .unwrap();
    let utc = String::from_utf8_lossy(&utc.stdout);
    assert!(utc.contains("deadline      2030-12-14T15:00:00Z"), "{utc}");
    let ny: Value = serde_json::from_slice(
        &giftctl(addr, &["--json", "campaign", "show", "c"])
            .env("TZ", "EST5")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(ny["expire_time"], "2030-12-14T10:00:00-05:00", "{ny}");

    // campaign extend --force to an earlier deadline: the plan (5 codes),
    // then a refusal without a terminal; nothing changed.
    let extend = [
        "campaign",
        "extend",
        "c",
        "--deadline",
        "2030-06-01T00:00:00+09:00",
        "--force",
    ];
    let out = run(addr, &extend);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("EARLIER"), "{err}");
    assert!(err.contains("5 ACTIVE code(s)"), "{err}");
    assert!(err.contains("2030-12-15T00:00:00+09:00"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(ok(addr, &["campaign", "show", "c"]).contains("2030-12-14T15:00:00Z"));
    // On a terminal the operator is asked; "n" changes nothing, "y" does.
    for (answer, moved) in [("n", false), ("y", true)] {
        let shown = on_terminal(addr, &extend, answer);
        assert!(shown.contains("Proceed? [y/N]"), "{shown}");
        let now = ok(addr, &["--utc", "campaign", "show", "c"]);
        assert_eq!(
            now.contains("2030-05-31T15:00:00Z"),
            moved,
            "{answer}: {now}"
        );
    }

    // exchange: a permanent refusal suggests no retry.
    let out = run(
        addr,
        &["exchange", &code, &key, "--option", "no-such-option"],
    );
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("INVALID_ARGUMENT") || err.contains("NOT_FOUND"),
        "{err}"
    );
    assert!(!err.contains("retry"), "{err}");
    // A shipment, then mark-shipped with one unknown reference.
    let done: Value = serde_json::from_str(&ok(
        addr,
        &[
            "--json",
            "exchange",
            &code,
            &key,
            "--option",
            "book-card",
            "--address",
            "100-0001\\nTokyo, Chiyoda 1-1\\nHolder Name",
        ],
    ))
    .unwrap();
    let reference = done["deliverable"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run(
        addr,
        &[
            "shipments",
            "mark-shipped",
            "--provider",
            "book-card",
            &reference,
            "BOOK-NOPE",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("marked 1 orders"),
        "{out:?}"
    );
    assert!(stderr(&out).contains("BOOK-NOPE"), "{out:?}");
    assert!(!stderr(&out).contains(&reference), "{out:?}");
    let e = json_error(&run(
        addr,
        &[
            "--json",
            "shipments",
            "mark-shipped",
            "--provider",
            "book-card",
            "BOOK-NOPE",
        ],
    ));
    assert_eq!(e["reason"], "UNKNOWN_REFERENCES", "{e}");
    assert_eq!(e["details"]["unknown_references"][0], "BOOK-NOPE", "{e}");
    // All known: success.
    ok(
        addr,
        &[
            "shipments",
            "mark-shipped",
            "--provider",
            "book-card",
            &reference,
        ],
    );

    // batch void: the plan, a refusal without a terminal, then --yes.
    let out = run(addr, &["batch", "void", "c", "b1"]);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("5 code(s) issued"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(ok(addr, &["batch", "show", "c", "b1"]).contains("COMPLETE"));
    let voided = ok(addr, &["batch", "void", "c", "b1", "--yes"]);
    assert!(voided.contains("VOID"), "{voided}");

    // A closed stdout (`giftctl … | head`) ends giftctl quietly.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = giftctl(addr, &["campaign", "list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr(&out), "", "{out:?}");
}

/// Runs giftctl `args` on a pseudo-terminal (util-linux `script`), typing
/// `answer`; returns what the terminal showed.
fn on_terminal(addr: &str, args: &[&str], answer: &str) -> String {
    let cmd = std::iter::once(support::giftctl().display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("GIFTX_ADDR", addr)
        .env("TZ", "UTC0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script");
    let mut out = child.stdout.take().unwrap();
    // Type the answer once the question is on the terminal.
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&shown).contains("[y/N]") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no question: {}", String::from_utf8_lossy(&shown));
        shown.extend_from_slice(&buf[..n]);
    }
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("{answer}\n").as_bytes(),
    )
    .unwrap();
    out.read_to_end(&mut shown).unwrap();
    child.wait().unwrap();
    String::from_utf8_lossy(&shown).into_owned()
}

#[test]
fn a_service_this_giftxd_does_not_serve_is_named_with_the_way_to_reach_it() {
    let server = Giftxd::start(&format!("services = [\"exchange\"]\n{CONFIG}"));
    let out = run(&server.addr, &["campaign", "list"]);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("this giftxd does not serve giftx.v1.IssuanceService"),
        "{err}"
    );
    assert!(err.contains("GIFTX_SERVICES including issuance"), "{err}");
    let e = json_error(&run(&server.addr, &["--json", "pending", "list"]));
    assert_eq!(e["reason"], "SERVICE_NOT_SERVED", "{e}");
    assert_eq!(
        e["details"]["service_not_served"]["service"], "giftx.v1.ExpiryService",
        "{e}"
    );
}

#[test]
fn giftxd_help_describes_the_program_for_its_users() {
    let out = Command::new(support::giftxd())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("gift-code exchange broker"), "{help}");
    assert!(help.contains("GIFTX_REDIS_URL"), "{help}");
    assert!(help.contains("giftctl demo"), "{help}");
    assert!(!help.contains("tonic"), "{help}");
}
