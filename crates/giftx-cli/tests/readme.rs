//! README.md's operator example, run exactly as printed (issue 12, item 9):
//! the `sh` block of its `## giftctl` section, extracted from the README at
//! test time, executed by `sh -eu` with the real `giftctl` first on PATH
//! against a real giftxd process on a private Redis, configured as the
//! README says (demo providers plus a `stock` provider `edy-stock`; the
//! vendor's `gift-ids.csv` in the working directory).

mod support;

use std::io::Read as _;
use std::path::Path;
use std::process::Command;

use support::Giftxd;

/// The demo provider set (giftxd's default when none is configured) plus
/// the stock provider the README's example imports into.
const CONFIG: &str = r#"
[providers.select-gift]
kind = "select"
campaign = "demo-select"

[providers.emoney-a]
kind = "simulated"

[providers.emoney-b]
kind = "simulated"

[providers.giftcode-c]
kind = "simulated"

[providers.book-card]
kind = "shipment"
reference_prefix = "BOOK"

[providers.donation]
kind = "donation"

[providers.edy-stock]
kind = "stock"
"#;

/// The first ```sh block after `## giftctl` in README.md.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let section = readme
        .split_once("\n## giftctl\n")
        .expect("README has a ## giftctl section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the giftctl section has a ```sh block")
        .1;
    block
        .split_once("\n```")
        .expect("the block ends")
        .0
        .to_owned()
}

/// The README's first screen: the Rust version the workspace needs, the
/// first command and, right under it, what to run next; exactly two
/// commands (run giftxd, run the tests).
#[test]
fn the_readme_first_screen_says_the_rust_version_and_what_to_run_next() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("workspace rust-version")
        .trim_matches('"');
    let screen: Vec<&str> = readme.lines().take(30).collect();
    let text = screen.join("\n");
    assert!(text.contains(&format!("Rust {version}")), "{text}");
    let commands: Vec<&str> = screen
        .iter()
        .filter(|l| l.starts_with("    "))
        .map(|l| l.trim())
        .collect();
    assert_eq!(
        commands,
        ["cargo run --release --bin giftxd", "scripts/test.sh"],
        "{text}"
    );
    let after_first = text
        .split_once("cargo run --release --bin giftxd")
        .expect("first command")
        .1;
    let next = after_first
        .split("\n\n")
        .nth(1)
        .expect("a paragraph under it");
    assert!(
        next.contains("giftctl -- demo") && next.contains("another terminal"),
        "{next}"
    );
}

#[test]
fn the_readme_operator_example_runs_as_printed_on_redis() {
    let script = readme_example();
    assert!(
        script.contains("giftctl campaign create leak-2014"),
        "{script}"
    );
    let server = Giftxd::start(CONFIG);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("gift-ids.csv"),
        "code,pin\nEDY-0000-0001,1111\nEDY-0000-0002,2222\n",
    )
    .unwrap();
    let bin_dir = support::giftctl().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-euc")
        // Echo each command, so a failure shows which README line broke.
        .arg(format!("set -x\n{script}"))
        .current_dir(work.path())
        .env("PATH", path)
        .env("GIFTX_ADDR", &server.addr)
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README example failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // It did what it says: 10,000 codes on file, one exchanged and shipped,
    // the stock loaded, the batch voided at the end.
    let mut csv = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(work.path().join("print-01.csv.gz")).unwrap())
        .read_to_string(&mut csv)
        .unwrap();
    assert_eq!(csv.lines().count(), 10_001, "header + 10,000 codes");
    let shipped = std::fs::read_to_string(work.path().join("to-mail.csv")).unwrap();
    // Header + one order (its quoted address spans lines).
    assert!(shipped.starts_with("reference,"), "{shipped}");
    assert_eq!(shipped.matches("\nBOOK-").count(), 1, "{shipped}");
    let prefs = std::fs::read_to_string(work.path().join("preferences.csv")).unwrap();
    assert!(
        prefs.contains("campaigns/leak-2014/batches/print-01"),
        "{prefs}"
    );
    assert!(stdout.contains("VOID"), "{stdout}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
}
