//! SQL for streams and sinks, on top of DataFusion's SQL.
//!
//! Scripts are split into statements with their line numbers, so errors can point at them. These
//! statement shapes are ours, the rest go to DataFusion unchanged:
//! - `CREATE TABLE name [(columns [, WATERMARK FOR col AS col - INTERVAL ...])] WITH (connector = ..., ...)`
//!   declares a stream (with a column list, or `connector = 'rate'`) or a sink (without);
//! - `INSERT INTO sink SELECT ...` starts a streaming query, and `EXPLAIN INSERT INTO sink ...`
//!   shows its incremental plan;
//! - `SHOW QUERIES`, `STOP QUERY name`, and `SHOW TABLES` / `DESCRIBE t` (which DataFusion also
//!   knows, but without sinks, which are not in its catalog) look at and steer the session.
//!
//! The `WATERMARK` clause is not SQL that sqlparser knows; it is cut out of the token stream before
//! parsing and kept beside the table.

pub(crate) mod dedup;
pub(crate) mod sessions;
pub(crate) mod sliding;
pub(crate) mod window;

use std::time::Duration;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{self, Expr, SqlOption, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::connector::Options;
use crate::error::{Error, Result};

/// An event-time watermark: rows later than `max(column) - delay` count as late.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// The event-time column.
    pub column: String,
    /// How late a row may be and still count.
    pub delay: Duration,
}

/// One statement of a script.
#[derive(Debug)]
pub(crate) struct ScriptStatement {
    /// 1-based position in the script.
    pub(crate) index: usize,
    /// 1-based line where it starts.
    pub(crate) line: u64,
    tokens: Vec<TokenWithSpan>,
}

/// A statement, sorted into ours and DataFusion's.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// `CREATE TABLE ... WITH (...)`.
    CreateTable {
        name: String,
        /// The statement without its options, for DataFusion to turn the columns into a schema;
        /// `None` when there is no column list.
        columns: Option<DfStatement>,
        options: Options,
        watermark: Option<Watermark>,
    },
    /// `INSERT INTO target <query>`: a streaming query when `target` is a sink.
    Insert {
        target: String,
        statement: DfStatement,
        query: Box<ast::Query>,
    },
    /// `EXPLAIN INSERT INTO ... SELECT ...`: for a sink, the incremental plan the query would run
    /// (`statement`, DataFusion's own explain, for any other table).
    ExplainInsert {
        target: String,
        query: Box<ast::Query>,
        statement: DfStatement,
    },
    /// `SHOW QUERIES`: one row per streaming query of the session, running or ended.
    ShowQueries,
    /// `STOP QUERY name`: stops a running query (by name or id) after its current batch.
    StopQuery {
        /// The query's name or id, as written (unquoted).
        name: String,
    },
    /// `SHOW TABLES` without filters: streams and sinks as well as DataFusion's tables.
    ShowTables,
    /// `DESCRIBE table` (or `DESC`): a sink is not in DataFusion's catalog, so the session
    /// describes it; anything else goes to DataFusion as `statement`.
    Describe {
        /// The table's unquoted name.
        name: String,
        statement: DfStatement,
    },
    /// Anything else.
    Other(DfStatement),
}

/// Splits a script into statements at top-level semicolons.
pub(crate) fn split_script(sql: &str) -> Result<Vec<ScriptStatement>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::plan(format!("SQL syntax: {e}")))?;
    let mut statements = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    for token in tokens
        .into_iter()
        .chain(std::iter::once(TokenWithSpan::wrap(Token::SemiColon)))
    {
        if token.token == Token::SemiColon {
            let meaningful = current.iter().any(|t| !matches!(t.token, Token::Whitespace(_)));
            if meaningful {
                let line = current
                    .iter()
                    .find(|t| !matches!(t.token, Token::Whitespace(_)))
                    .map_or(0, |t| t.span.start.line);
                statements.push(ScriptStatement {
                    index: statements.len() + 1,
                    line,
                    tokens: std::mem::take(&mut current),
                });
            } else {
                current.clear();
            }
        } else {
            current.push(token);
        }
    }
    Ok(statements)
}

/// Stops at a `TABLESAMPLE`.
struct FindSample;

impl ast::Visitor for FindSample {
    type Break = ();

    fn pre_visit_table_factor(&mut self, table: &ast::TableFactor) -> std::ops::ControlFlow<()> {
        match table {
            ast::TableFactor::Table { sample: Some(_), .. } | ast::TableFactor::Derived { sample: Some(_), .. } => {
                std::ops::ControlFlow::Break(())
            }
            _ => std::ops::ControlFlow::Continue(()),
        }
    }
}

impl ScriptStatement {
    /// Parses the statement.
    pub(crate) fn parse(self) -> Result<Parsed> {
        let mut tokens = self.tokens;
        if let Some(parsed) = session_command(&tokens)? {
            return Ok(parsed);
        }
        let watermark = take_watermark(&mut tokens)?;
        let has_watermark = watermark.is_some();
        let mut statements = DFParserBuilder::new(tokens)
            .with_dialect(&GenericDialect {})
            .build()?
            .parse_statements()?;
        let statement = match (statements.pop_front(), statements.is_empty()) {
            (Some(s), true) => s,
            _ => return Err(Error::Internal("a split statement parsed as several".into())),
        };
        if let DfStatement::Statement(s) = &statement
            && ast::Visit::visit(s.as_ref(), &mut FindSample).is_break()
        {
            return Err(Error::plan(
                "TABLESAMPLE is not supported: DataFusion reads every row of the table, not a sample of \
                 them; filter with WHERE (e.g. WHERE random() < 0.1) instead",
            ));
        }
        let parsed = match statement {
            DfStatement::Statement(boxed) => match *boxed {
                ast::Statement::CreateTable(create)
                    if matches!(create.table_options, ast::CreateTableOptions::With(_)) =>
                {
                    create_table(create, watermark)?
                }
                ast::Statement::Insert(insert) => match (&insert.table, &insert.source) {
                    (ast::TableObject::TableName(name), Some(query)) => Parsed::Insert {
                        target: object_name(name),
                        query: query.clone(),
                        statement: DfStatement::Statement(Box::new(ast::Statement::Insert(insert))),
                    },
                    _ => Parsed::Other(DfStatement::Statement(Box::new(ast::Statement::Insert(insert)))),
                },
                ast::Statement::ShowTables {
                    terse: false,
                    history: false,
                    extended: false,
                    full: false,
                    external: false,
                    show_options:
                        ast::ShowStatementOptions {
                            show_in: None,
                            starts_with: None,
                            limit: None,
                            limit_from: None,
                            filter_position: None,
                        },
                } => Parsed::ShowTables,
                ast::Statement::ExplainTable {
                    describe_alias: describe_alias @ (ast::DescribeAlias::Describe | ast::DescribeAlias::Desc),
                    hive_format,
                    has_table_keyword,
                    table_name,
                } => Parsed::Describe {
                    name: object_name(&table_name),
                    statement: DfStatement::Statement(Box::new(ast::Statement::ExplainTable {
                        describe_alias,
                        hive_format,
                        has_table_keyword,
                        table_name,
                    })),
                },
                other => Parsed::Other(DfStatement::Statement(Box::new(other))),
            },
            DfStatement::Explain(explain) => match explain.statement.as_ref() {
                DfStatement::Statement(inner) => match inner.as_ref() {
                    ast::Statement::Insert(ast::Insert {
                        table: ast::TableObject::TableName(name),
                        source: Some(query),
                        ..
                    }) => Parsed::ExplainInsert {
                        target: object_name(name),
                        query: query.clone(),
                        statement: DfStatement::Explain(explain.clone()),
                    },
                    _ => Parsed::Other(DfStatement::Explain(explain)),
                },
                _ => Parsed::Other(DfStatement::Explain(explain)),
            },
            other => Parsed::Other(other),
        };
        if has_watermark && !matches!(parsed, Parsed::CreateTable { .. }) {
            return Err(Error::plan(
                "WATERMARK FOR goes in the column list of CREATE TABLE ... WITH (connector = ...)",
            ));
        }
        Ok(parsed)
    }
}

/// `SHOW QUERIES` and `STOP QUERY <name>`, which sqlparser does not know, from the tokens of a
/// statement; `None` for any other statement.
///
/// # Errors
/// A statement that starts like one of them but does not have its shape, with the shape.
fn session_command(tokens: &[TokenWithSpan]) -> Result<Option<Parsed>> {
    let words: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let is = |i: usize, word: &str| match words.get(i) {
        Some(Token::Word(w)) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word),
        _ => false,
    };
    if is(0, "show") && is(1, "queries") {
        return match words.len() {
            2 => Ok(Some(Parsed::ShowQueries)),
            _ => Err(Error::plan("SHOW QUERIES takes nothing after it")),
        };
    }
    if !is(0, "stop") {
        return Ok(None);
    }
    let usage = "the statement is STOP QUERY <name or id> (quote an id: STOP QUERY 'f81d4fae-...')";
    let name = match (is(1, "query"), words.get(2), words.len()) {
        (true, Some(Token::Word(w)), 3) => w.value.clone(),
        (true, Some(Token::SingleQuotedString(s)), 3) => s.clone(),
        _ => return Err(Error::plan(usage)),
    };
    Ok(Some(Parsed::StopQuery { name }))
}

/// The unquoted name a user meant: the last part of a possibly qualified name.
pub(crate) fn object_name(name: &ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map_or_else(|| name.to_string(), |ident| ident.value.clone())
}

fn create_table(mut create: ast::CreateTable, watermark: Option<Watermark>) -> Result<Parsed> {
    let name = object_name(&create.name);
    let ast::CreateTableOptions::With(with) = std::mem::take(&mut create.table_options) else {
        return Err(Error::Internal("CREATE TABLE without WITH reached create_table".into()));
    };
    let mut options = Options::new(format!("table '{name}'"));
    for option in with {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(Error::option(
                format!("table '{name}'"),
                format!("option '{option}' must be written key = 'value'"),
            ));
        };
        let value = match value {
            Expr::Value(v) => match v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) | Value::Number(s, _) => s,
                Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            },
            Expr::Identifier(ident) => ident.value,
            other => {
                return Err(Error::option(
                    format!("table '{name}'"),
                    format!("option '{}' has value {other}, expected a quoted string", key.value),
                ));
            }
        };
        options.insert(&key.value, value);
    }
    let columns =
        (!create.columns.is_empty()).then(|| DfStatement::Statement(Box::new(ast::Statement::CreateTable(create))));
    Ok(Parsed::CreateTable {
        name,
        columns,
        options,
        watermark,
    })
}

/// Cuts `, WATERMARK FOR col AS expr` out of a CREATE TABLE column list and interprets it.
fn take_watermark(tokens: &mut Vec<TokenWithSpan>) -> Result<Option<Watermark>> {
    let is_word = |t: &TokenWithSpan, k: Keyword| matches!(&t.token, Token::Word(w) if w.keyword == k);
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|i| !matches!(tokens[*i].token, Token::Whitespace(_)))
        .collect();
    let starts_create = significant
        .first()
        .is_some_and(|i| is_word(&tokens[*i], Keyword::CREATE));
    if !starts_create {
        return Ok(None);
    }
    let mut depth = 0usize;
    let mut clause: Option<(usize, usize)> = None;
    for (n, &i) in significant.iter().enumerate() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 1 && w.value.eq_ignore_ascii_case("watermark") => {
                // After a column (`, WATERMARK FOR ...`), or first in the list, as a stream with
                // fixed columns (the rate source) declares it: `(WATERMARK FOR ...)`.
                let after_comma = n > 0 && matches!(tokens[significant[n - 1]].token, Token::Comma | Token::LParen);
                let for_next = significant
                    .get(n + 1)
                    .is_some_and(|j| is_word(&tokens[*j], Keyword::FOR));
                if after_comma && for_next {
                    // The clause runs to the next comma or closing parenthesis at this depth.
                    let mut inner = 0usize;
                    let end = significant[n..]
                        .iter()
                        .copied()
                        .find(|&j| match tokens[j].token {
                            Token::LParen => {
                                inner += 1;
                                false
                            }
                            Token::RParen if inner == 0 => true,
                            Token::RParen => {
                                inner -= 1;
                                false
                            }
                            Token::Comma => inner == 0,
                            _ => false,
                        })
                        .ok_or_else(|| Error::plan("WATERMARK clause: missing closing parenthesis"))?;
                    clause = Some((significant[n - 1], end));
                    break;
                }
            }
            _ => {}
        }
    }
    let Some((comma, end)) = clause else {
        return Ok(None);
    };
    // Cut the clause with the comma before it; first in the list, with the comma after it.
    let first = tokens[comma].token == Token::LParen;
    let (from, to) = if first {
        let after = significant.iter().copied().find(|&j| j >= end);
        match after {
            Some(j) if tokens[j].token == Token::Comma => (comma + 1, j + 1),
            _ => (comma + 1, end),
        }
    } else {
        (comma, end)
    };
    let removed: Vec<TokenWithSpan> = tokens.drain(from..to).collect();
    let mut words: Vec<TokenWithSpan> = removed
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    if words.first().is_some_and(|t| t.token == Token::Comma) {
        words.remove(0);
    }
    if words.last().is_some_and(|t| t.token == Token::Comma) {
        words.pop();
    }
    // WATERMARK FOR <column> AS <expression>
    let usage = "the clause is WATERMARK FOR <column> AS <column> - INTERVAL '<n>' <unit>";
    // Named as DataFusion names the declared columns: unquoted names in lower case.
    let column = match words.get(2).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_lowercase(),
        Some(Token::Word(w)) => w.value.clone(),
        _ => return Err(Error::plan(format!("WATERMARK: {usage}"))),
    };
    if !words.get(3).is_some_and(|t| is_word(t, Keyword::AS)) {
        return Err(Error::plan(format!("WATERMARK FOR {column}: {usage}")));
    }
    let expr = Parser::new(&GenericDialect {})
        .with_tokens_with_locations(words[4..].to_vec())
        .parse_expr()
        .map_err(|e| Error::plan(format!("WATERMARK FOR {column}: {e}")))?;
    let delay = match &expr {
        Expr::Identifier(id) if id.value.eq_ignore_ascii_case(&column) => Duration::ZERO,
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Minus,
            right,
        } if matches!(left.as_ref(), Expr::Identifier(id) if id.value.eq_ignore_ascii_case(&column)) => {
            match right.as_ref() {
                Expr::Interval(interval) => {
                    interval_duration(interval).map_err(|m| Error::plan(format!("WATERMARK FOR {column}: {m}")))?
                }
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => crate::options::parse_duration(s)
                        .map_err(|m| Error::plan(format!("WATERMARK FOR {column}: {m}")))?,
                    _ => return Err(Error::plan(format!("WATERMARK FOR {column}: {usage}"))),
                },
                _ => return Err(Error::plan(format!("WATERMARK FOR {column}: {usage}"))),
            }
        }
        _ => return Err(Error::plan(format!("WATERMARK FOR {column} AS {expr}: {usage}"))),
    };
    Ok(Some(Watermark { column, delay }))
}

/// `INTERVAL '10' MINUTE`, `INTERVAL '10 minutes'` and the like as a duration.
fn interval_duration(interval: &ast::Interval) -> std::result::Result<Duration, String> {
    let amount = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let Some(unit) = interval.leading_field.as_ref() else {
        if amount.trim().parse::<f64>().is_ok() {
            return Err(format!(
                "INTERVAL '{}' needs a unit, e.g. INTERVAL '{0}' SECOND",
                amount.trim()
            ));
        }
        return crate::options::parse_duration(&amount);
    };
    crate::options::parse_duration(&format!("{} {unit}", amount.trim()))
}
