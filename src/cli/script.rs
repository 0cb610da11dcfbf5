//! Cutting the shell's input into statements at the semicolons outside quotes and comments, with
//! the same SQL tokenizer the library splits scripts with, so both agree on where a statement
//! ends.

use tidewater::datafusion::sql::sqlparser::dialect::GenericDialect;
use tidewater::datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

/// A statement as the user wrote it, without its `;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub(crate) text: String,
    /// 1-based line of the text the statement starts on.
    pub(crate) line: u64,
}

/// A piece of input cut into statements.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Split {
    /// The statements that a `;` ended, in order.
    pub(crate) complete: Vec<Statement>,
    /// The statement still being written after the last `;` (an open quote or comment counts),
    /// or `None` when only blanks and comments follow.
    pub(crate) rest: Option<Statement>,
}

/// Cuts `text` into statements. Text the tokenizer refuses for a reason other than an open quote
/// or comment is taken as one complete statement, so that running it reports the error.
pub(crate) fn split(text: &str) -> Split {
    let tokens = match Tokenizer::new(&GenericDialect {}, text).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) => {
            let statement = Statement {
                text: text.trim().to_string(),
                line: 1,
            };
            let open = e.message.contains("Unterminated") || e.message.contains("EOF");
            return if open {
                Split {
                    complete: Vec::new(),
                    rest: Some(statement),
                }
            } else {
                Split {
                    complete: vec![statement],
                    rest: None,
                }
            };
        }
    };
    let lines = LineStarts::of(text);
    let mut split = Split::default();
    // The current statement's first token that is not blank: its text starts there.
    let mut first: Option<Location> = None;
    for token in &tokens {
        match &token.token {
            Token::SemiColon => {
                let end = lines.offset(text, token.span.start);
                if let Some(at) = first.take() {
                    split.complete.push(Statement {
                        text: text[lines.offset(text, at)..end].trim_end().to_string(),
                        line: at.line,
                    });
                }
            }
            Token::Whitespace(_) => {}
            _ => {
                first.get_or_insert(token.span.start);
            }
        }
    }
    split.rest = first.map(|at| Statement {
        text: text[lines.offset(text, at)..].trim_end().to_string(),
        line: at.line,
    });
    split
}

/// The byte offset where each line of a text starts, to turn the tokenizer's line and column
/// (1-based, in characters) into a byte offset.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineStarts(starts)
    }

    fn offset(&self, text: &str, at: Location) -> usize {
        let Some(&line_start) = usize::try_from(at.line)
            .ok()
            .and_then(|line| self.0.get(line.saturating_sub(1)))
        else {
            return text.len();
        };
        let column = usize::try_from(at.column).unwrap_or(usize::MAX).saturating_sub(1);
        text[line_start..]
            .char_indices()
            .nth(column)
            .map_or(text.len(), |(i, _)| line_start + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(split: &Split) -> Vec<&str> {
        split.complete.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn cuts_at_semicolons_outside_quotes_and_comments() {
        let split = split("SELECT 'a;b' AS x; -- c;\nSELECT \"é;\" FROM t;\n/* ; */ SELECT 3");
        // A statement starts at its first token: comments before it are left out.
        assert_eq!(texts(&split), ["SELECT 'a;b' AS x", "SELECT \"é;\" FROM t"]);
        assert_eq!(split.complete[1].line, 2);
        let rest = split.rest.unwrap();
        assert_eq!((rest.text.as_str(), rest.line), ("SELECT 3", 3));
    }

    #[test]
    fn an_open_quote_or_comment_is_a_statement_still_being_written() {
        let split = split("SELECT 'it''s; still");
        assert!(split.complete.is_empty());
        assert!(split.rest.is_some());
        assert!(super::split("SELECT 1 /* open;").complete.is_empty());
    }

    #[test]
    fn blanks_and_comments_alone_are_no_statement() {
        assert_eq!(split("  ;; -- nothing\n"), Split::default());
    }
}
