//! Confirmation before a destructive command (`batch void`, `campaign
//! extend --force` to an earlier deadline): what it will change is printed
//! on stderr first; on a terminal the operator answers `y`; scripts pass
//! `--yes`. Without a terminal and without `--yes` the command refuses
//! rather than wait for an answer nobody can give.

use std::io::{IsTerminal as _, Write as _};

use crate::error::{Error, Result};

/// Prints `plan` (what will change, one item a line) on stderr, then asks
/// unless `yes`.
///
/// # Errors
/// [`Error::Invalid`] when stdin is not a terminal and `yes` is not set;
/// [`Error::Failed`] when the operator does not answer yes.
pub fn confirm(plan: &[String], yes: bool) -> Result<()> {
    let stdin = std::io::stdin();
    confirm_with(plan, yes, stdin.is_terminal(), &mut stdin.lock())
}

fn confirm_with(
    plan: &[String],
    yes: bool,
    terminal: bool,
    input: &mut dyn std::io::BufRead,
) -> Result<()> {
    let mut err = std::io::stderr().lock();
    for line in plan {
        let _ = writeln!(err, "{line}");
    }
    if yes {
        return Ok(());
    }
    if !terminal {
        return Err(Error::Invalid(
            "this command changes data and asks for confirmation, but stdin is not a \
             terminal: nothing was changed; pass --yes to confirm from a script"
                .to_owned(),
        ));
    }
    let _ = write!(err, "Proceed? [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    input
        .read_line(&mut answer)
        .map_err(Error::io("cannot read the answer"))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::Failed(
            "not confirmed: nothing was changed".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_skips_the_question_and_no_terminal_refuses() {
        let plan = ["will void 10 codes".to_owned()];
        assert!(confirm_with(&plan, true, false, &mut &b""[..]).is_ok());
        let err = confirm_with(&plan, false, false, &mut &b"y\n"[..]).unwrap_err();
        assert!(err.to_string().contains("--yes"), "{err}");
    }

    #[test]
    fn a_terminal_answer_decides() {
        let plan = ["will void 10 codes".to_owned()];
        for yes in ["y\n", "YES\n", " y \n"] {
            assert!(
                confirm_with(&plan, false, true, &mut yes.as_bytes()).is_ok(),
                "{yes}"
            );
        }
        for no in ["\n", "n\n", "", "yep\n"] {
            let err = confirm_with(&plan, false, true, &mut no.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("nothing was changed"),
                "{no:?}: {err}"
            );
        }
    }
}
