//! Reading a scenario a job at a time.
//!
//! The toml crate reads a document whole: every token into one vector, then a table per
//! `[[job]]`, then serde's walk over them. A day of 100,000 jobs is 18 MB of TOML and that
//! document peaks near 1 GB, most of it faulted in page by page and freed again before the
//! run starts. The `[[job]]` tables of a scenario do not depend on each other, so when the
//! file's shape allows it each job's table is read as a document of its own (its memory
//! reused by the next), and the other tables together as one more document, in their file
//! order.
//!
//! The shape is checked conservatively, with the toml crate's own lexer, so strings and
//! comments that look like headers are not taken for them. Any doubt sends the whole text
//! to the whole-document parse, whose answer or error (with the line it names) stands:
//! a root key or a quoted header that might name `job`, a `[job]` table, a `[job.x]` table
//! that does not directly follow its `[[job]]`, a piece that fails to parse, a bracket that
//! closes nothing. A scenario read in pieces equals the one read whole (the property test
//! below checks it against the whole-document parse).

use serde::Deserialize;
use toml_parser::lexer::{Lexer, Token, TokenKind};
use toml_parser::Source;

use super::{JobSpec, Scenario};

/// What a table header opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opens {
    /// `[[job]]`: the next job.
    Job,
    /// `[job.x]` or `[[job.x]]`: a table inside the last job.
    InJob,
    /// A table that is not a job's.
    Other,
}

/// One `[[job]]` read alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneJob {
    job: Vec<JobSpec>,
}

/// The scenario `text` holds, read a job at a time; `None` when it must be read whole
/// (see the module's documentation), which includes every text with an error.
pub(super) fn by_job(text: &str) -> Option<Scenario> {
    let headers = headers(text)?;
    let ends = headers
        .iter()
        .skip(1)
        .map(|(start, _)| *start)
        .chain([text.len()]);
    let mut rest = String::with_capacity(text.len().min(1 << 16));
    rest.push_str(&text[..headers.first()?.0]);
    let mut jobs: Vec<std::ops::Range<usize>> = Vec::new();
    let mut before = None;
    for (&(start, opens), end) in headers.iter().zip(ends) {
        match opens {
            Opens::Job => jobs.push(start..end),
            Opens::InJob => match (before, jobs.last_mut()) {
                (Some(Opens::Job | Opens::InJob), Some(job)) => job.end = end,
                _ => return None,
            },
            Opens::Other => rest.push_str(&text[start..end]),
        }
        before = Some(opens);
    }
    if jobs.is_empty() {
        return None;
    }
    let mut scenario: Scenario = toml::from_str(&rest).ok()?;
    if !scenario.jobs.is_empty() {
        return None;
    }
    scenario.jobs.reserve_exact(jobs.len());
    for range in jobs {
        let OneJob { mut job } = toml::from_str(&text[range]).ok()?;
        match (job.pop(), job.is_empty()) {
            (Some(one), true) => scenario.jobs.push(one),
            _ => return None,
        }
    }
    Some(scenario)
}

/// Where each table header of `text` starts and what it opens, in file order; `None` when
/// the text cannot be split safely.
fn headers(text: &str) -> Option<Vec<(usize, Opens)>> {
    let source = Source::new(text);
    let mut tokens = source.lex();
    let mut headers = Vec::new();
    let mut line = Vec::new();
    // Brackets and braces opened by values and not yet closed: a line inside an array or
    // an inline table is not a header even when it starts with `[`.
    let mut depth = 0usize;
    let mut line_start = true;
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::Newline => {
                line_start = true;
                continue;
            }
            TokenKind::Eof => break,
            _ => {}
        }
        if std::mem::replace(&mut line_start, false) && depth == 0 {
            if kind == TokenKind::LeftSquareBracket {
                let opens = header(&source, &mut tokens, &mut line)?;
                headers.push((token.span().start(), opens));
                // `header` read through the end of the line.
                line_start = true;
                continue;
            }
            // A key of the root table, before any header.
            if headers.is_empty() && may_be_job(&source, &token) {
                return None;
            }
        }
        match kind {
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
            }
            _ => {}
        }
    }
    Some(headers)
}

/// Reads the rest of a header line (its opening `[` read already) and says what it opens;
/// `None` for a header that might name `job` in a form not split on.
fn header(source: &Source<'_>, tokens: &mut Lexer<'_>, line: &mut Vec<Token>) -> Option<Opens> {
    line.clear();
    for token in tokens.by_ref() {
        match token.kind() {
            TokenKind::Newline | TokenKind::Eof => break,
            TokenKind::Comment => {}
            _ => line.push(token),
        }
    }
    // `[[` has no whitespace between its brackets.
    let array = line.first()?.kind() == TokenKind::LeftSquareBracket;
    let mut keys = line[usize::from(array)..]
        .iter()
        .filter(|token| token.kind() != TokenKind::Whitespace);
    let first = keys.next()?;
    let after = keys.next()?.kind();
    match first.kind() {
        TokenKind::Atom if source.get(first.span())?.as_str() == "job" => match after {
            TokenKind::Dot => Some(Opens::InJob),
            TokenKind::RightSquareBracket if array => Some(Opens::Job),
            _ => None,
        },
        TokenKind::Atom => Some(Opens::Other),
        TokenKind::BasicString
        | TokenKind::LiteralString
        | TokenKind::MlBasicString
        | TokenKind::MlLiteralString => (!may_be_job(source, first)).then_some(Opens::Other),
        _ => None,
    }
}

/// Whether a key token might spell `job`: the bare key itself, or any quoted key with
/// `job` in it (escapes are not decoded; such a key is merely read whole).
fn may_be_job(source: &Source<'_>, token: &Token) -> bool {
    let Some(raw) = source.get(token.span()) else {
        return true;
    };
    match token.kind() {
        TokenKind::Atom => raw.as_str() == "job",
        _ => raw.as_str().contains("job"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The whole-document parse the split must agree with.
    fn whole(text: &str) -> Result<Scenario, toml::de::Error> {
        toml::from_str(text)
    }

    fn job(n: usize, meta_as_table: bool) -> String {
        let name = format!("[[job]]\nname = \"j{n}\"\nsubmit_at = \"{n}s\"\n");
        if meta_as_table {
            format!("{name}[job.meta]\nmin_clients = 1\n[job.meta.deploy_map]\napp = [\"@ALL\"]\n")
        } else {
            format!("{name}meta = {{ deploy_map = {{ app = [\"@ALL\"] }}, min_clients = 1 }}\n")
        }
    }

    /// Blocks a scenario is made of, each a header with what belongs to it; shuffled, any
    /// order of them is a valid scenario.
    fn blocks(jobs: usize, tables: bool) -> Vec<String> {
        let mut blocks = vec![
            "[sim]\nuntil = \"2h\"\n".to_string(),
            "[server]\nmax_jobs = 2\n".to_string(),
            "[[site]]\nname = \"s1\"\n[site.jobs.j0]\nexit_code = 1\n".to_string(),
            "[[site]]\nname = \"s2\"\nresources = { gpu = 2 }\n".to_string(),
            "[[action]]\nat = \"1s\"\ndo = \"abort j0\"\n".to_string(),
        ];
        blocks.extend((0..jobs).map(|n| job(n, tables && n % 2 == 1)));
        blocks
    }

    /// Texts the split must not read as the whole parse would not: each either reads
    /// whole or must give what the whole parse gives.
    const HAZARDS: &[&str] = &[
        "job = []\n",
        "\"job\" = 1\n",
        "job.name = \"x\"\n",
        "[job]\nname = \"x\"\n",
        "[job.meta]\nmin_clients = 2\n",
        "[\"job\"]\nname = \"x\"\n",
        "[[ \"job\" ]]\nname = \"x\"\n",
        "[[job]]\nname = \"x\"\nmeta = { deploy_map = { app = [\"@ALL\"] } }\nnope = 1\n",
        "[sim]\nuntil = \"1h\"\n",
        "[server]\nnote = \"\"\"\n[[job]]\nname = \"hidden\"\n\"\"\"\n",
        "# [[job]]\n",
        "[[action]]\nat = \"2s\"\ndo = 'abort j1'\nwhy = [\n  [1],\n]\n",
        "]\n",
        "x = [1,\n",
        "[[job]\nname = \"x\"\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A well-shaped scenario is read in pieces, and the pieces give what the whole
        /// parse gives, whatever the order of its tables, its line endings and indents.
        #[test]
        fn a_scenario_in_pieces_is_the_scenario_read_whole(
            blocks in (1usize..6, any::<bool>())
                .prop_flat_map(|(jobs, tables)| Just(blocks(jobs, tables)).prop_shuffle()),
            crlf: bool,
            indent: bool,
        ) {
            let mut text = blocks.concat();
            if indent {
                text = text.replace("\n[", "\n  [");
            }
            if crlf {
                text = text.replace('\n', "\r\n");
            }
            let read = by_job(&text);
            prop_assert!(read.is_some(), "a well-shaped scenario is split:\n{text}");
            prop_assert_eq!(read, Some(whole(&text).expect("valid")));
        }

        /// With a hazard anywhere, the split either declines or agrees with the whole
        /// parse; it never reads what the whole parse refuses.
        #[test]
        fn a_hazard_is_read_whole_or_read_the_same(
            jobs in 0usize..4,
            tables: bool,
            hazard in 0..HAZARDS.len(),
            at in 0usize..16,
        ) {
            let mut blocks = blocks(jobs, tables);
            let at = at % (blocks.len() + 1);
            blocks.insert(at, HAZARDS[hazard].to_string());
            super::super::check_read_by_job(blocks.concat().as_bytes());
        }
    }

    #[test]
    fn texts_that_might_name_job_otherwise_are_read_whole() {
        for hazard in [
            "job = []\n[[job]]\nname = \"a\"\n",
            "[job]\nname = \"a\"\n",
            "[[\"job\"]]\nname = \"a\"\n",
            "[sim]\n[job.meta]\nmin_clients = 1\n[[job]]\nname = \"a\"\n",
            "[[job]]\nname = \"a\"\n[sim]\n[job.meta]\nmin_clients = 1\n",
        ] {
            assert_eq!(by_job(hazard), None, "{hazard}");
        }
        // A header inside a multi-line string is text, not a table: the one job is read.
        let hidden = "[server]\nnote = '''\n[[job]]\n'''\n[[job]]\nname = \"a\"\n\
                      meta = { deploy_map = { app = [\"@ALL\"] } }\n";
        let read = by_job(hidden).expect("split");
        assert_eq!(read.jobs.len(), 1);
        assert_eq!(Some(read), whole(hidden).ok());
    }

    #[test]
    fn an_error_in_a_piece_names_its_line_in_the_whole_file() {
        let text = format!("{}{}[[job]]\nname = 5\n", job(0, false), job(1, true));
        assert_eq!(by_job(&text), None);
        let message = super::super::parse(&text)
            .expect_err("bad name")
            .to_string();
        assert!(message.contains("line 13"), "{message}");
    }
}
