//! Issue 12, item 7, end to end: a real giftxd process on a private Redis,
//! driven by the real giftctl. Exchanges succeed (one per provider kind,
//! one reconciled after a lost answer), then every operator command that
//! can reach them (pending list, pending reconcile on every exchange name,
//! preferences and shipments exports, campaign stats, batch show, verify)
//! is run, text and JSON, and its whole output searched for every
//! deliverable secret the holder received. Only `exchange` and
//! `show-exchange` (code + login key) may print them.

mod support;

use std::process::Command;

use serde_json::Value;
use support::Giftxd;

fn giftctl(addr: &str, args: &[&str]) -> String {
    let out = Command::new(support::giftctl())
        .env("GIFTX_ADDR", addr)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "giftctl {args:?}: {out:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(addr: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = Command::new(support::giftctl())
        .env("GIFTX_ADDR", addr)
        .args(&all)
        .output()
        .unwrap();
    assert!(out.status.success(), "giftctl {all:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The secret parts of a deliverable in giftctl's JSON (empty ones left out).
fn secrets(d: &Value) -> Vec<String> {
    ["code", "pin", "redeem_url"]
        .iter()
        .filter_map(|k| d[k].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_operator_command_shows_a_deliverable_secret_on_redis() {
    let server = Giftxd::start("");
    let addr = server.addr.as_str();
    let deadline = "2030-12-15T00:00:00Z";
    giftctl(
        addr,
        &[
            "campaign",
            "create",
            "demo-select",
            "--display-name",
            "Select",
            "--face-value",
            "500",
            "--currency",
            "JPY",
            "--deadline",
            deadline,
            "--option",
            "id=emoney-a,provider=emoney-a,name=A",
        ],
    );
    let options = [
        "select-gift",
        "emoney-a",
        "emoney-b",
        "giftcode-c",
        "book-card",
        "donation",
    ];
    let mut create = vec![
        "campaign",
        "create",
        "views",
        "--display-name",
        "Views",
        "--face-value",
        "500",
        "--currency",
        "JPY",
        "--deadline",
        deadline,
    ];
    let specs: Vec<String> = options
        .iter()
        .chain(["emoney-lost"].iter())
        .map(|o| {
            let provider = if *o == "emoney-lost" { "emoney-a" } else { o };
            format!("id={o},provider={provider},name={o}")
        })
        .collect();
    for s in &specs {
        create.push("--option");
        create.push(s);
    }
    giftctl(addr, &create);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("codes.csv");
    giftctl(
        addr,
        &[
            "issue",
            "--campaign",
            "views",
            "--batch",
            "b1",
            "--count",
            "7",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    let csv = std::fs::read_to_string(&file).unwrap();
    let letters: Vec<(String, String)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].to_owned(), f[2].to_owned())
        })
        .collect();

    let mut names = Vec::new();
    let mut all_secrets = Vec::new();
    for (i, option) in options.iter().chain(["emoney-lost"].iter()).enumerate() {
        let (code, key) = &letters[i];
        let mut args = vec!["exchange", code, key, "--option", option, "--stop-mail"];
        if *option == "book-card" {
            // The mailed option needs somewhere to mail the card.
            args.extend(["--address", "100-0001\\nTokyo, Chiyoda 1-1\\nHolder Name"]);
        }
        let x = json(addr, &args);
        names.push(x["name"].as_str().unwrap().to_owned());
        if *option == "emoney-lost" {
            assert_eq!(x["state"], "EXCHANGE_STATE_PENDING", "{x}");
        } else {
            assert_eq!(x["state"], "EXCHANGE_STATE_SUCCEEDED", "{x}");
            all_secrets.extend(secrets(&x["deliverable"]));
        }
    }
    // The PENDING one is listed, then reconciled by the operator.
    let mut outputs = vec![
        giftctl(addr, &["pending", "list"]),
        format!("{}", json(addr, &["pending", "list"])),
    ];
    for name in &names {
        let r = json(addr, &["pending", "reconcile", name]);
        assert_eq!(r["state"], "EXCHANGE_STATE_SUCCEEDED", "{r}");
        assert!(
            !r["deliverable"]["reference"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{r}"
        );
        outputs.push(r.to_string());
        outputs.push(giftctl(addr, &["pending", "reconcile", name]));
    }
    // Every deliverable as the holder sees it: the secrets to look for.
    for (code, key) in &letters {
        let shown = json(addr, &["show-exchange", code, key]);
        assert_eq!(shown["state"], "EXCHANGE_STATE_SUCCEEDED", "{shown}");
        all_secrets.extend(secrets(&shown["deliverable"]));
        outputs.push(giftctl(addr, &["verify", code, key]));
        outputs.push(json(addr, &["verify", code, key]).to_string());
    }
    all_secrets.sort();
    all_secrets.dedup();
    // Gift ID + management number, three simulator codes (+ pins and
    // redeem URLs), the reconciled one.
    assert!(all_secrets.len() >= 6, "{all_secrets:?}");

    let prefs = work.path().join("prefs.csv");
    outputs.push(giftctl(
        addr,
        &[
            "preferences",
            "export",
            "--campaign",
            "views",
            "--out",
            prefs.to_str().unwrap(),
        ],
    ));
    let prefs_text = std::fs::read_to_string(&prefs).unwrap();
    for name in &names {
        assert!(prefs_text.contains(name.as_str()), "{prefs_text}");
    }
    outputs.push(prefs_text);
    let ship = work.path().join("ship.csv");
    outputs.push(giftctl(
        addr,
        &[
            "shipments",
            "export",
            "--provider",
            "book-card",
            "--out",
            ship.to_str().unwrap(),
        ],
    ));
    outputs.push(std::fs::read_to_string(&ship).unwrap());
    outputs.push(giftctl(addr, &["campaign", "stats", "views"]));
    outputs.push(giftctl(addr, &["batch", "show", "views", "b1"]));
    outputs.push(giftctl(addr, &["campaign", "list"]));

    for out in &outputs {
        for s in &all_secrets {
            assert!(
                !out.contains(s.as_str()),
                "an operator view shows a deliverable secret ({s}):\n{out}"
            );
        }
    }
}
