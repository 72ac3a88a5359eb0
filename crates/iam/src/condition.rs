//! Conditions: the subset of CEL (Google IAM's condition language) that Rouse
//! understands, parsed once when a policy is validated or compiled.
//!
//! ```text
//! expr    := and ('||' and)*
//! and     := unary ('&&' unary)*
//! unary   := '!' unary | '(' expr ')' | 'true' | 'false' | atom
//! atom    := 'request.time' ('<' | '<=' | '>' | '>=') 'timestamp(' STRING ')'
//!          | 'timestamp(' STRING ')' ('<' | '<=' | '>' | '>=') 'request.time'
//!          | 'resource.name' ('==' | '!=') STRING
//!          | 'resource.name.startsWith(' STRING ')'
//! STRING  := "…" or '…' with the escapes \\ \" \' \n \t
//! ```
//!
//! `resource.name` is the resource being accessed (a service, even when the
//! binding is on its project), as in Google IAM. Anything outside the subset
//! is a parse error naming the position (1-based, in characters). Expressions
//! are limited in length and nesting so that no input can exhaust the stack.

use std::fmt;

use crate::time::Timestamp;

/// Longest expression accepted (Google allows 12,800 characters; Rouse's
/// subset needs far fewer, and a bound keeps parsing cheap).
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Deepest nesting of `(` and `!`; deep enough for any real condition,
/// shallow enough that recursion can never exhaust a thread's stack.
pub const MAX_DEPTH: usize = 32;

/// A condition that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition `{expression}` does not parse at position {position}: {message}")]
pub struct ConditionError {
    pub expression: String,
    /// 1-based character position.
    pub position: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Bool(bool),
    /// `request.time OP at`
    Time(TimeOp, Timestamp),
    /// `resource.name == "…"`
    NameEquals(String),
    /// `resource.name.startsWith("…")`
    NameStartsWith(String),
    Not(Box<Expr>),
    /// Conjunction (flat, so long chains do not deepen the tree).
    All(Vec<Expr>),
    Any(Vec<Expr>),
}

/// What a condition is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub time: Timestamp,
    pub resource_name: &'a str,
}

impl Expr {
    pub fn parse(expression: &str) -> Result<Self, ConditionError> {
        let err = |position: usize, message: String| ConditionError {
            expression: expression.to_owned(),
            position,
            message,
        };
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(err(
                MAX_EXPRESSION_LEN + 1,
                format!("expression is longer than {MAX_EXPRESSION_LEN} bytes"),
            ));
        }
        let tokens = lex(expression).map_err(|(p, m)| err(p, m))?;
        let mut parser = Parser {
            tokens,
            next: 0,
            depth: 0,
        };
        let expr = parser.expr().map_err(|(p, m)| err(p, m))?;
        let (token, position) = parser.peek();
        if *token != Token::End {
            return Err(err(
                position,
                format!("expected `&&`, `||` or the end, found {token}"),
            ));
        }
        Ok(expr)
    }

    pub fn evaluate(&self, cx: &Context<'_>) -> bool {
        match self {
            Self::Bool(b) => *b,
            Self::Time(op, at) => match op {
                TimeOp::Lt => cx.time < *at,
                TimeOp::Le => cx.time <= *at,
                TimeOp::Gt => cx.time > *at,
                TimeOp::Ge => cx.time >= *at,
            },
            Self::NameEquals(name) => cx.resource_name == name,
            Self::NameStartsWith(prefix) => cx.resource_name.starts_with(prefix.as_str()),
            Self::Not(e) => !e.evaluate(cx),
            Self::All(es) => es.iter().all(|e| e.evaluate(cx)),
            Self::Any(es) => es.iter().any(|e| e.evaluate(cx)),
        }
    }

    /// Whether the expression reads `resource.name`.
    pub fn uses_resource_name(&self) -> bool {
        match self {
            Self::Bool(_) | Self::Time(..) => false,
            Self::NameEquals(_) | Self::NameStartsWith(_) => true,
            Self::Not(e) => e.uses_resource_name(),
            Self::All(es) | Self::Any(es) => es.iter().any(Expr::uses_resource_name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Dot,
    LParen,
    RParen,
    Not,
    And,
    Or,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Ident(s) => return write!(f, "`{s}`"),
            Self::Str(s) => return write!(f, "the string {s:?}"),
            Self::Dot => "`.`",
            Self::LParen => "`(`",
            Self::RParen => "`)`",
            Self::Not => "`!`",
            Self::And => "`&&`",
            Self::Or => "`||`",
            Self::Lt => "`<`",
            Self::Le => "`<=`",
            Self::Gt => "`>`",
            Self::Ge => "`>=`",
            Self::Eq => "`==`",
            Self::Ne => "`!=`",
            Self::End => "the end of the expression",
        };
        f.write_str(s)
    }
}

type Failure = (usize, String);

fn lex(src: &str) -> Result<Vec<(Token, usize)>, Failure> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        let next = chars.get(i + 1).copied();
        let (token, len) = match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '.' => (Token::Dot, 1),
            '(' => (Token::LParen, 1),
            ')' => (Token::RParen, 1),
            '&' if next == Some('&') => (Token::And, 2),
            '|' if next == Some('|') => (Token::Or, 2),
            '!' if next == Some('=') => (Token::Ne, 2),
            '!' => (Token::Not, 1),
            '<' if next == Some('=') => (Token::Le, 2),
            '<' => (Token::Lt, 1),
            '>' if next == Some('=') => (Token::Ge, 2),
            '>' => (Token::Gt, 1),
            '=' if next == Some('=') => (Token::Eq, 2),
            '"' | '\'' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err((pos, "string is not closed".to_owned())),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            let escaped = match chars.get(j + 1) {
                                Some('\\') => '\\',
                                Some('"') => '"',
                                Some('\'') => '\'',
                                Some('n') => '\n',
                                Some('t') => '\t',
                                other => {
                                    return Err((
                                        j + 1,
                                        format!(
                                            "unsupported escape `\\{}`; use \\\\, \\\", \\', \\n or \\t",
                                            other.map(|c| c.to_string()).unwrap_or_default()
                                        ),
                                    ));
                                }
                            };
                            value.push(escaped);
                            j += 2;
                        }
                        Some('\n') => {
                            return Err((j + 1, "string must not span lines".to_owned()));
                        }
                        Some(&other) => {
                            value.push(other);
                            j += 1;
                        }
                    }
                }
                (Token::Str(value), j + 1 - i)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                (Token::Ident(chars[i..i + len].iter().collect()), len)
            }
            other => {
                return Err((pos, format!("unexpected character {other:?}")));
            }
        };
        tokens.push((token, pos));
        i += len;
    }
    tokens.push((Token::End, chars.len() + 1));
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> (&Token, usize) {
        let (t, p) = &self.tokens[self.next.min(self.tokens.len() - 1)];
        (t, *p)
    }

    fn bump(&mut self) -> (Token, usize) {
        let (t, p) = self.peek();
        let out = (t.clone(), p);
        if self.next < self.tokens.len() - 1 {
            self.next += 1;
        }
        out
    }

    fn expect(&mut self, want: &Token, context: &str) -> Result<usize, Failure> {
        let (t, p) = self.bump();
        if &t == want {
            Ok(p)
        } else {
            Err((p, format!("expected {want} {context}, found {t}")))
        }
    }

    fn expect_ident(&mut self, want: &str, context: &str) -> Result<(), Failure> {
        let (t, p) = self.bump();
        match t {
            Token::Ident(s) if s == want => Ok(()),
            other => Err((p, format!("expected `{want}` {context}, found {other}"))),
        }
    }

    fn string(&mut self, context: &str) -> Result<(String, usize), Failure> {
        match self.bump() {
            (Token::Str(s), p) => Ok((s, p)),
            (other, p) => Err((p, format!("expected a string {context}, found {other}"))),
        }
    }

    fn enter(&mut self, position: usize) -> Result<(), Failure> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err((
                position,
                format!("nested more than {MAX_DEPTH} levels deep"),
            ))
        } else {
            Ok(())
        }
    }

    fn expr(&mut self) -> Result<Expr, Failure> {
        let mut any = vec![self.and()?];
        while *self.peek().0 == Token::Or {
            self.bump();
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Expr::Any(any)
        })
    }

    fn and(&mut self) -> Result<Expr, Failure> {
        let mut all = vec![self.unary()?];
        while *self.peek().0 == Token::And {
            self.bump();
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::All(all)
        })
    }

    fn unary(&mut self) -> Result<Expr, Failure> {
        let (token, position) = self.bump();
        match token {
            Token::Not => {
                self.enter(position)?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Token::LParen => {
                self.enter(position)?;
                let inner = self.expr()?;
                self.expect(
                    &Token::RParen,
                    &format!("to close `(` at position {position}"),
                )?;
                self.depth -= 1;
                Ok(inner)
            }
            Token::Ident(word) => match word.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "request" => {
                    self.expect(&Token::Dot, "after `request`")?;
                    self.expect_ident(
                        "time",
                        "after `request.` (only `request.time` is supported)",
                    )?;
                    let op = self.time_op("after `request.time`")?;
                    let at = self.timestamp("after the comparison")?;
                    Ok(Expr::Time(op, at))
                }
                "timestamp" => {
                    let at = self.timestamp_args()?;
                    let op = self.time_op("after `timestamp(…)`")?;
                    self.expect_ident("request", "after the comparison")?;
                    self.expect(&Token::Dot, "after `request`")?;
                    self.expect_ident("time", "after `request.`")?;
                    // `t OP request.time` is `request.time (flipped OP) t`.
                    let flipped = match op {
                        TimeOp::Lt => TimeOp::Gt,
                        TimeOp::Le => TimeOp::Ge,
                        TimeOp::Gt => TimeOp::Lt,
                        TimeOp::Ge => TimeOp::Le,
                    };
                    Ok(Expr::Time(flipped, at))
                }
                "resource" => {
                    self.expect(&Token::Dot, "after `resource`")?;
                    self.expect_ident(
                        "name",
                        "after `resource.` (only `resource.name` is supported)",
                    )?;
                    match self.bump() {
                        (Token::Eq, _) => Ok(Expr::NameEquals(self.string("after `==`")?.0)),
                        (Token::Ne, _) => Ok(Expr::Not(Box::new(Expr::NameEquals(
                            self.string("after `!=`")?.0,
                        )))),
                        (Token::Dot, _) => {
                            self.expect_ident(
                                "startsWith",
                                "after `resource.name.` (only `startsWith` is supported)",
                            )?;
                            self.expect(&Token::LParen, "after `startsWith`")?;
                            let (prefix, _) = self.string("as the argument of `startsWith`")?;
                            self.expect(&Token::RParen, "after the argument of `startsWith`")?;
                            Ok(Expr::NameStartsWith(prefix))
                        }
                        (other, p) => Err((
                            p,
                            format!(
                                "expected `==`, `!=` or `.startsWith(…)` after `resource.name`, found {other}"
                            ),
                        )),
                    }
                }
                other => Err((
                    position,
                    format!(
                        "unknown name `{other}`; conditions may use `request.time`, `resource.name`, `timestamp(…)`, `true` and `false`"
                    ),
                )),
            },
            other => Err((
                position,
                format!(
                    "expected a condition (e.g. `request.time < timestamp(\"…\")`), found {other}"
                ),
            )),
        }
    }

    fn time_op(&mut self, context: &str) -> Result<TimeOp, Failure> {
        match self.bump() {
            (Token::Lt, _) => Ok(TimeOp::Lt),
            (Token::Le, _) => Ok(TimeOp::Le),
            (Token::Gt, _) => Ok(TimeOp::Gt),
            (Token::Ge, _) => Ok(TimeOp::Ge),
            (other, p) => Err((
                p,
                format!("expected `<`, `<=`, `>` or `>=` {context}, found {other}"),
            )),
        }
    }

    fn timestamp(&mut self, context: &str) -> Result<Timestamp, Failure> {
        self.expect_ident("timestamp", context)?;
        self.timestamp_args()
    }

    fn timestamp_args(&mut self) -> Result<Timestamp, Failure> {
        self.expect(&Token::LParen, "after `timestamp`")?;
        let (text, position) = self.string("as the argument of `timestamp`")?;
        let at = Timestamp::parse_rfc3339(&text)
            .map_err(|e| (position, format!("timestamp {text:?}: {e}")))?;
        self.expect(&Token::RParen, "after the argument of `timestamp`")?;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).expect("timestamp")
    }

    fn eval(expr: &str, time: &str, name: &str) -> bool {
        let e = Expr::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        e.evaluate(&Context {
            time: at(time),
            resource_name: name,
        })
    }

    #[test]
    fn time_bounds() {
        let c = r#"request.time < timestamp("2026-01-01T00:00:00Z")"#;
        assert!(eval(c, "2025-12-31T23:59:59Z", "x"));
        assert!(!eval(c, "2026-01-01T00:00:00Z", "x"));
        let c = r#"request.time <= timestamp("2026-01-01T00:00:00Z")"#;
        assert!(eval(c, "2026-01-01T00:00:00Z", "x"));
        let c = r#"request.time >= timestamp('2026-01-01T00:00:00Z') && request.time > timestamp("2025-01-01T00:00:00Z")"#;
        assert!(eval(c, "2026-01-01T00:00:00Z", "x"));
        assert!(!eval(c, "2025-06-01T00:00:00Z", "x"));
        let c = r#"timestamp("2026-01-01T00:00:00Z") > request.time"#;
        assert!(eval(c, "2025-12-31T00:00:00Z", "x"));
        assert!(!eval(c, "2026-12-31T00:00:00Z", "x"));
    }

    #[test]
    fn resource_names_and_logic() {
        let c = r#"resource.name.startsWith("projects/p/services/dev-")"#;
        assert!(eval(c, "2026-01-01T00:00:00Z", "projects/p/services/dev-a"));
        assert!(!eval(c, "2026-01-01T00:00:00Z", "projects/p/services/prod"));
        let c = r#"resource.name == "projects/p/services/a" || !(resource.name != "projects/p/services/b") "#;
        assert!(eval(c, "2026-01-01T00:00:00Z", "projects/p/services/a"));
        assert!(eval(c, "2026-01-01T00:00:00Z", "projects/p/services/b"));
        assert!(!eval(c, "2026-01-01T00:00:00Z", "projects/p/services/c"));
        assert!(eval(
            "true && (false || !false)",
            "2026-01-01T00:00:00Z",
            ""
        ));
        assert!(!eval("true && false || false", "2026-01-01T00:00:00Z", ""));
        assert!(eval("false && false || true", "2026-01-01T00:00:00Z", ""));
    }

    #[test]
    fn errors_name_the_position() {
        for (bad, position, needle) in [
            ("", 1, "expected a condition"),
            (
                "request.time < now",
                16,
                "expected `timestamp` after the comparison, found `now`",
            ),
            ("request.user == \"x\"", 9, "only `request.time`"),
            ("resource.name.endsWith(\"x\")", 15, "only `startsWith`"),
            ("resource.name == x", 18, "expected a string"),
            ("request.time < timestamp(\"tomorrow\")", 26, "RFC 3339"),
            ("true &&", 8, "found the end"),
            ("(true", 6, "to close `(` at position 1"),
            ("true)", 5, "expected `&&`, `||` or the end"),
            ("true & false", 6, "unexpected character '&'"),
            ("\"open", 1, "not closed"),
            ("size(x) > y", 1, "unknown name `size`"),
            ("'a\\qb' == resource.name", 3, "unsupported escape"),
        ] {
            let err = Expr::parse(bad).expect_err(bad);
            assert_eq!(err.position, position, "{bad}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(needle), "{bad}: {msg}");
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
        }
    }

    #[test]
    fn depth_and_length_are_bounded() {
        let deep = format!("{}true{}", "(".repeat(1000), ")".repeat(1000));
        assert!(
            Expr::parse(&deep)
                .expect_err("deep")
                .message
                .contains("nested")
        );
        let nots = format!("{}true", "!".repeat(1000));
        assert!(Expr::parse(&nots).is_err());
        let ok = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(Expr::parse(&ok).is_ok());
        let long = vec!["true"; 1000].join(" && ");
        assert!(
            Expr::parse(&long)
                .expect_err("long")
                .message
                .contains("longer")
        );
        let chain = vec!["true"; 500].join(" && ");
        assert!(Expr::parse(&chain).is_ok());
    }
}
