//! Pub/Sub subscription filters: parsing and matching.
//!
//! A subscription with a filter receives only the messages whose attributes
//! match it; Pub/Sub acknowledges the others on its own
//! (<https://cloud.google.com/pubsub/docs/subscription-message-filter>).
//! The language, as documented there and as Google's own fake server
//! (`google-cloud-go`, `pubsub/pstest/filtering.go` and its tests) reads it:
//!
//! ```text
//! filter     = expression                       ; at most 256 bytes
//! expression = term { "AND" term }              ; one operator per level:
//!            | term { "OR" term }               ; mixing needs parentheses
//! term       = [ "NOT" | "-" ] primary          ; NOT binds tightest
//! primary    = "(" expression ")"
//!            | "attributes" ":" key             ; the attribute is present
//!            | "attributes" "." key ( "=" | "!=" ) string
//!            | "hasPrefix(" "attributes" "." key "," string ")"
//! key        = name | string                    ; non-empty
//! name       = 1*( ASCII letter | digit | "_" | "-" )
//! string     = '"' { character | escape } '"'
//! escape     = \\ \" \' \` \? \a \b \f \n \r \t \v
//!            | \xHH | \uHHHH | \UHHHHHHHH | \ooo (octal, at most \377)
//! ```
//!
//! Operators are uppercase. Values are always quoted strings: attributes are
//! strings and the language has no numbers, no `<`/`>` and no access to the
//! message data. Where the documentation is silent (a space after `-`,
//! spaces inside `attributes.KEY`, a repeated `NOT`, raw control characters
//! in a string) the parser refuses: a filter that works here but that Google
//! rejects would only fail at deployment, while the reverse fails at once,
//! naming the position.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

/// The longest filter Pub/Sub accepts, in bytes (UTF-8).
pub const MAX_FILTER_BYTES: usize = 256;

/// Why a filter text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text is empty or only whitespace. Pub/Sub reads an empty filter as
    /// "no filter"; [`Filter::parse_optional`] does the same.
    #[error("invalid filter: it is empty (leave the filter unset to receive every message)")]
    Empty,
    /// The text is longer than [`MAX_FILTER_BYTES`].
    #[error("invalid filter: it is {len} bytes long; Pub/Sub allows at most {max} bytes")]
    TooLong {
        /// Length of the text in bytes.
        len: usize,
        /// The limit, [`MAX_FILTER_BYTES`].
        max: usize,
    },
    /// The text does not follow the filter grammar.
    #[error("invalid filter at position {position}: {message}")]
    Syntax {
        /// 1-based byte offset of the offending token (one past the end when
        /// the text ended too early).
        position: usize,
        /// What was expected and what was found, with a hint where one helps.
        message: String,
    },
}

impl FilterError {
    /// The 1-based byte position a syntax error names, if it names one.
    pub fn position(&self) -> Option<usize> {
        match self {
            Self::Syntax { position, .. } => Some(*position),
            Self::Empty | Self::TooLong { .. } => None,
        }
    }
}

/// A parsed subscription filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    expr: Expr,
}

/// A node of a parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `attributes:KEY`: the attribute is present, whatever its value.
    HasKey(String),
    /// `attributes.KEY = "VALUE"`: present with exactly this value.
    Equals {
        /// Attribute name.
        key: String,
        /// Expected value.
        value: String,
    },
    /// `attributes.KEY != "VALUE"`: the negation of [`Expr::Equals`], so it
    /// also holds when the attribute is absent (Google's fake server,
    /// `pstest/filtering_test.go`, delivers messages without the attribute).
    NotEquals {
        /// Attribute name.
        key: String,
        /// Excluded value.
        value: String,
    },
    /// `hasPrefix(attributes.KEY, "PREFIX")`: present and starting with the
    /// prefix; absent attributes do not match.
    HasPrefix {
        /// Attribute name.
        key: String,
        /// Required prefix.
        prefix: String,
    },
    /// `NOT term` or `-term`.
    Not(Box<Expr>),
    /// Two or more terms joined by `AND`.
    And(Vec<Expr>),
    /// Two or more terms joined by `OR`.
    Or(Vec<Expr>),
}

impl Filter {
    /// Parses a filter. Empty or whitespace-only text is not a filter and
    /// gives [`FilterError::Empty`]; use [`Filter::parse_optional`] where an
    /// empty text means "no filter".
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong {
                len: text.len(),
                max: MAX_FILTER_BYTES,
            });
        }
        if text.trim().is_empty() {
            return Err(FilterError::Empty);
        }
        let mut parser = Parser { src: text, pos: 0 };
        let expr = parser.expression()?;
        parser.skip_ws();
        if parser.pos < text.len() {
            return Err(parser.after_term_error(None));
        }
        Ok(Self { expr })
    }

    /// Parses a filter as a subscription's `filter` field is read: empty or
    /// whitespace-only text is `None`, i.e. every message matches.
    pub fn parse_optional(text: &str) -> Result<Option<Self>, FilterError> {
        match Self::parse(text) {
            Ok(filter) => Ok(Some(filter)),
            Err(FilterError::Empty) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The root of the parsed expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Does a message with these attributes match?
    pub fn matches<S: BuildHasher>(&self, attributes: &HashMap<String, String, S>) -> bool {
        self.matches_by(|key| attributes.get(key).map(String::as_str))
    }

    /// Does a message match, its attributes looked up by `get` (for maps
    /// other than a `HashMap`)?
    pub fn matches_by<'a, F>(&self, get: F) -> bool
    where
        F: Fn(&str) -> Option<&'a str>,
    {
        self.expr.eval(&get)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Expr {
    // Recursion is bounded: 256 bytes allow at most ~128 nested parentheses.
    fn eval<'a, F>(&self, get: &F) -> bool
    where
        F: Fn(&str) -> Option<&'a str>,
    {
        match self {
            Self::HasKey(key) => get(key).is_some(),
            Self::Equals { key, value } => get(key) == Some(value.as_str()),
            Self::NotEquals { key, value } => get(key) != Some(value.as_str()),
            Self::HasPrefix { key, prefix } => {
                get(key).is_some_and(|v| v.starts_with(prefix.as_str()))
            }
            Self::Not(inner) => !inner.eval(get),
            Self::And(terms) => terms.iter().all(|t| t.eval(get)),
            Self::Or(terms) => terms.iter().any(|t| t.eval(get)),
        }
    }
}

/// Canonical text: parses back to the same [`Filter`].
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HasKey(key) => write!(f, "attributes:{}", Key(key)),
            Self::Equals { key, value } => write!(f, "attributes.{} = {}", Key(key), Quoted(value)),
            Self::NotEquals { key, value } => {
                write!(f, "attributes.{} != {}", Key(key), Quoted(value))
            }
            Self::HasPrefix { key, prefix } => {
                write!(f, "hasPrefix(attributes.{}, {})", Key(key), Quoted(prefix))
            }
            Self::Not(inner) => match **inner {
                Self::And(_) | Self::Or(_) | Self::Not(_) => write!(f, "NOT ({inner})"),
                _ => write!(f, "NOT {inner}"),
            },
            Self::And(terms) => join(f, terms, " AND "),
            Self::Or(terms) => join(f, terms, " OR "),
        }
    }
}

fn join(f: &mut fmt::Formatter<'_>, terms: &[Expr], op: &str) -> fmt::Result {
    for (i, term) in terms.iter().enumerate() {
        if i > 0 {
            f.write_str(op)?;
        }
        match term {
            // A nested group keeps its parentheses, or AND and OR would mix.
            Expr::And(_) | Expr::Or(_) => write!(f, "({term})")?,
            _ => write!(f, "{term}")?,
        }
    }
    Ok(())
}

/// An attribute name, bare when it may be, quoted otherwise.
struct Key<'a>(&'a str);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() && self.0.bytes().all(is_name_byte) {
            f.write_str(self.0)
        } else {
            Quoted(self.0).fmt(f)
        }
    }
}

/// A string literal with the escapes the parser reads.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Characters of an unquoted attribute name (the documentation: hyphens,
/// underscores and alphanumerics; anything else needs a string literal).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

const CONDITION_FORMS: &str =
    "`attributes:KEY`, `attributes.KEY = \"VALUE\"`, `hasPrefix(attributes.KEY, \"PREFIX\")`";
const QUOTE_NAME_HINT: &str = "names with characters other than letters, digits, `_` and `-` must be quoted, e.g. `attributes.\"iana.org/language_tag\"`";

/// Recursive descent over the text, tracking a byte offset.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// The run of name characters starting at `at` (may be empty).
    fn word_at(&self, at: usize) -> &'a str {
        let src: &'a str = self.src;
        let rest = src.get(at..).unwrap_or("");
        let len = rest.bytes().take_while(|&b| is_name_byte(b)).count();
        &rest[..len]
    }

    fn error(&self, at: usize, message: String) -> FilterError {
        FilterError::Syntax {
            position: at + 1,
            message,
        }
    }

    /// The token at `at`, quoted for a message.
    fn found(&self, at: usize) -> String {
        let rest = self.src.get(at..).unwrap_or("");
        let Some(c) = rest.chars().next() else {
            return "the end of the filter".to_owned();
        };
        if c.is_whitespace() {
            return "a space".to_owned();
        }
        let token = if is_name_byte(rest.as_bytes()[0]) {
            self.word_at(at)
        } else if c == '"' {
            // The whole literal, up to an unescaped closing quote.
            let mut end = rest.len();
            let mut escaped = false;
            for (i, ch) in rest.char_indices().skip(1) {
                match ch {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            &rest[..end]
        } else if ["!=", "==", "<=", ">=", "&&", "||"]
            .iter()
            .any(|op| rest.starts_with(op))
        {
            &rest[..2]
        } else {
            &rest[..c.len_utf8()]
        };
        // Keep messages short: a long literal is cut after 24 characters.
        match token.char_indices().nth(24) {
            Some((cut, _)) => format!("`{}…`", &token[..cut]),
            None => format!("`{token}`"),
        }
    }

    fn expression(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.term()?];
        let mut joined_by: Option<&'static str> = None;
        loop {
            self.skip_ws();
            let at = self.pos;
            let op = match self.word_at(at) {
                "AND" => "AND",
                "OR" => "OR",
                _ => break,
            };
            if let Some(previous) = joined_by
                && previous != op
            {
                return Err(self.error(
                    at,
                    format!(
                        "`{op}` follows `{previous}` at the same level; Pub/Sub needs parentheses to combine them, e.g. `A {previous} (B {op} C)`"
                    ),
                ));
            }
            joined_by = Some(op);
            self.pos += op.len();
            terms.push(self.term()?);
        }
        Ok(match joined_by {
            Some("AND") => Expr::And(terms),
            Some(_) => Expr::Or(terms),
            None => terms.swap_remove(0),
        })
    }

    fn term(&mut self) -> Result<Expr, FilterError> {
        self.skip_ws();
        if self.peek() == Some(b'-') {
            self.pos += 1;
            if self.peek().is_some_and(is_ws) {
                return Err(self.error(
                    self.pos,
                    "expected the condition to negate right after `-`, found a space; write `-attributes:KEY` or `NOT attributes:KEY`".to_owned(),
                ));
            }
            return Ok(Expr::Not(Box::new(self.primary(Some("`-`"))?)));
        }
        if self.word_at(self.pos) == "NOT" {
            self.pos += 3;
            self.skip_ws();
            return Ok(Expr::Not(Box::new(self.primary(Some("NOT"))?)));
        }
        self.primary(None)
    }

    fn primary(&mut self, negated_by: Option<&str>) -> Result<Expr, FilterError> {
        self.skip_ws();
        let at = self.pos;
        if self.peek() == Some(b'(') {
            self.pos += 1;
            let inner = self.expression()?;
            self.skip_ws();
            if self.peek() != Some(b')') {
                return Err(self.after_term_error(Some(at)));
            }
            self.pos += 1;
            return Ok(inner);
        }
        match self.word_at(at) {
            "attributes" => {
                self.pos += "attributes".len();
                self.attribute_condition()
            }
            "hasPrefix" => {
                self.pos += "hasPrefix".len();
                self.has_prefix()
            }
            _ => Err(self.condition_error(at, negated_by)),
        }
    }

    /// After `attributes`: `:KEY` or `.KEY = "V"` / `.KEY != "V"`.
    fn attribute_condition(&mut self) -> Result<Expr, FilterError> {
        match self.peek() {
            Some(b':') => {
                self.pos += 1;
                Ok(Expr::HasKey(self.key("attributes:")?))
            }
            Some(b'.') => {
                self.pos += 1;
                let key = self.key("attributes.")?;
                self.skip_ws();
                let at = self.pos;
                let rest = &self.src[at..];
                let (negated, op) = if rest.starts_with("!=") {
                    (true, "!=")
                } else if rest.starts_with('=') && !rest.starts_with("==") {
                    (false, "=")
                } else {
                    return Err(self.operator_error(at, &key));
                };
                self.pos += op.len();
                self.skip_ws();
                let value = self.string_value(op)?;
                Ok(if negated {
                    Expr::NotEquals { key, value }
                } else {
                    Expr::Equals { key, value }
                })
            }
            _ => Err(self.error(
                self.pos,
                format!(
                    "expected `:` or `.` right after `attributes`, found {}; write `attributes:KEY` to test that an attribute is present or `attributes.KEY = \"VALUE\"` to compare it",
                    self.found(self.pos)
                ),
            )),
        }
    }

    /// After `hasPrefix`: `(attributes.KEY, "PREFIX")`.
    fn has_prefix(&mut self) -> Result<Expr, FilterError> {
        if self.peek() != Some(b'(') {
            return Err(self.error(
                self.pos,
                format!(
                    "expected `(` right after `hasPrefix`, found {}",
                    self.found(self.pos)
                ),
            ));
        }
        self.pos += 1;
        self.skip_ws();
        let at = self.pos;
        if self.word_at(at) != "attributes" || self.src.as_bytes().get(at + 10) != Some(&b'.') {
            return Err(self.error(
                at,
                format!(
                    "expected `attributes.KEY` as the first argument of `hasPrefix`, found {}",
                    self.found(at)
                ),
            ));
        }
        self.pos += "attributes.".len();
        let key = self.key("attributes.")?;
        self.skip_ws();
        if self.peek() != Some(b',') {
            return Err(self.error(
                self.pos,
                format!(
                    "expected `,` after the attribute in `hasPrefix(attributes.KEY, \"PREFIX\")`, found {}",
                    self.found(self.pos)
                ),
            ));
        }
        self.pos += 1;
        self.skip_ws();
        let prefix = self.string_value(",")?;
        self.skip_ws();
        if self.peek() != Some(b')') {
            return Err(self.error(
                self.pos,
                format!(
                    "expected `)` to close `hasPrefix(`, found {}",
                    self.found(self.pos)
                ),
            ));
        }
        self.pos += 1;
        Ok(Expr::HasPrefix { key, prefix })
    }

    /// An attribute name right after `attributes:` or `attributes.`.
    fn key(&mut self, after: &str) -> Result<String, FilterError> {
        let at = self.pos;
        if self.peek() == Some(b'"') {
            let key = self.string()?;
            if key.is_empty() {
                return Err(self.error(at, "an attribute name cannot be empty".to_owned()));
            }
            return Ok(key);
        }
        let word = self.word_at(at);
        if word.is_empty() {
            let hint = if self.peek().is_some_and(is_ws) {
                "; no space is allowed after `attributes:` or `attributes.`".to_owned()
            } else if self.peek().is_some() {
                format!("; {QUOTE_NAME_HINT}")
            } else {
                String::new()
            };
            return Err(self.error(
                at,
                format!(
                    "expected an attribute name after `{after}`, found {}{hint}",
                    self.found(at)
                ),
            ));
        }
        self.pos += word.len();
        Ok(word.to_owned())
    }

    /// A string literal where a value is required, after `after`.
    fn string_value(&mut self, after: &str) -> Result<String, FilterError> {
        if self.peek() == Some(b'"') {
            return self.string();
        }
        let at = self.pos;
        let hint = match self.peek() {
            Some(b'\'') => "; use double quotes".to_owned(),
            Some(b) if is_name_byte(b) => format!(
                "; values are always strings in double quotes: write `\"{}\"`",
                self.word_at(at)
            ),
            _ => String::new(),
        };
        Err(self.error(
            at,
            format!(
                "expected a string in double quotes after `{after}`, found {}{hint}",
                self.found(at)
            ),
        ))
    }

    /// A double-quoted string literal at the current position, unescaped.
    fn string(&mut self) -> Result<String, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let at = self.pos;
            let Some(c) = self.src[at..].chars().next() else {
                return Err(self.error(open, "unterminated string: no closing `\"`".to_owned()));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => out.push(self.escape(at, open)?),
                c if c.is_control() => {
                    return Err(self.error(
                        at,
                        format!(
                            "raw control character U+{:04X} in a string; escape it, e.g. `\\n` or `\\x{:02x}`",
                            u32::from(c),
                            u32::from(c)
                        ),
                    ));
                }
                c => out.push(c),
            }
        }
    }

    /// The character an escape stands for; `backslash` is its position and
    /// `self.pos` is just after the backslash.
    fn escape(&mut self, backslash: usize, open: usize) -> Result<char, FilterError> {
        let Some(c) = self.src[self.pos..].chars().next() else {
            return Err(self.error(open, "unterminated string: no closing `\"`".to_owned()));
        };
        self.pos += c.len_utf8();
        let simple = match c {
            '\\' | '"' | '\'' | '`' | '?' => Some(c),
            'a' => Some('\u{07}'),
            'b' => Some('\u{08}'),
            'f' => Some('\u{0C}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{0B}'),
            _ => None,
        };
        if let Some(s) = simple {
            return Ok(s);
        }
        let (digits, radix) = match c {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => {
                // The first octal digit is already consumed.
                self.pos -= 1;
                (3, 8)
            }
            _ => {
                return Err(self.error(
                    backslash,
                    format!(
                        "unknown escape `\\{c}`; valid escapes are \\\\ \\\" \\' \\n \\r \\t \\a \\b \\f \\v \\xHH \\uHHHH \\UHHHHHHHH and octal \\ooo"
                    ),
                ));
            }
        };
        // Up to `digits` characters, cut on a character boundary.
        let end = self.src[self.pos..]
            .char_indices()
            .nth(digits)
            .map_or(self.src.len(), |(i, _)| self.pos + i);
        let text = &self.src[self.pos..end];
        let shown = &self.src[backslash..end];
        if text.chars().count() != digits || !text.chars().all(|d| d.is_digit(radix)) {
            let kind = if radix == 8 { "octal" } else { "hex" };
            return Err(self.error(
                backslash,
                format!("escape `{shown}` needs exactly {digits} {kind} digits"),
            ));
        }
        self.pos = end;
        let code = u32::from_str_radix(text, radix).unwrap_or(u32::MAX);
        if radix == 8 && code > 0o377 {
            return Err(self.error(backslash, format!("octal escape `{shown}` is above \\377")));
        }
        char::from_u32(code).ok_or_else(|| {
            self.error(
                backslash,
                format!("escape `{shown}` is not a Unicode scalar value"),
            )
        })
    }

    /// Where a condition should start but does not.
    fn condition_error(&self, at: usize, negated_by: Option<&str>) -> FilterError {
        let word = self.word_at(at);
        let after = match negated_by {
            Some(op) => format!(" after {op}"),
            None => String::new(),
        };
        let hint = match (word, self.peek()) {
            ("NOT", _) | (_, Some(b'-')) if negated_by.is_some() => {
                "; a negation cannot be negated again without parentheses: `NOT (NOT …)`".to_owned()
            }
            ("and" | "or" | "not", _) => {
                "; boolean operators are uppercase: AND, OR, NOT".to_owned()
            }
            ("AND" | "OR", _) => format!("; a condition is missing before `{word}`"),
            ("", Some(b'"')) => {
                "; the attribute comes first: `attributes.KEY = \"VALUE\"`".to_owned()
            }
            ("", Some(b')')) => "; the parentheses hold no condition".to_owned(),
            ("", None) => String::new(),
            (w, _) if !w.is_empty() && self.src.as_bytes().get(at + w.len()) == Some(&b'(') => {
                "; the only function is `hasPrefix(attributes.KEY, \"PREFIX\")`".to_owned()
            }
            (w, _) if !w.is_empty() => format!(
                "; filters can test only message attributes ({CONDITION_FORMS}), not data or other fields"
            ),
            _ => String::new(),
        };
        self.error(
            at,
            format!(
                "expected a condition{after} such as {CONDITION_FORMS}, NOT, `-` or `(`, found {}{hint}",
                self.found(at)
            ),
        )
    }

    /// After a complete term, where only AND, OR, `)` (inside parentheses
    /// opened at `open`) or the end may follow.
    fn after_term_error(&self, open: Option<usize>) -> FilterError {
        let at = self.pos;
        if let Some(open) = open
            && at >= self.src.len()
        {
            return self.error(
                at,
                format!(
                    "expected `)` to close the `(` at position {}, found the end of the filter",
                    open + 1
                ),
            );
        }
        if open.is_none() && self.peek() == Some(b')') {
            return self.error(at, "found `)` without a matching `(`".to_owned());
        }
        let expected = if open.is_some() {
            "AND, OR or `)`"
        } else {
            "AND, OR or the end of the filter"
        };
        let word = self.word_at(at);
        let rest = &self.src[at..];
        let hint = if matches!(word, "and" | "or") {
            "; boolean operators are uppercase: AND, OR".to_owned()
        } else if rest.starts_with("&&") || rest.starts_with("||") {
            "; write AND or OR".to_owned()
        } else if rest.starts_with('=') || rest.starts_with("!=") {
            "; `attributes:KEY` only tests presence; compare with `attributes.KEY = \"VALUE\"`"
                .to_owned()
        } else if matches!(word, "attributes" | "hasPrefix" | "NOT")
            || rest.starts_with('(')
            || rest.starts_with('-')
        {
            "; join conditions with AND or OR".to_owned()
        } else {
            String::new()
        };
        self.error(
            at,
            format!("expected {expected}, found {}{hint}", self.found(at)),
        )
    }

    /// After `attributes.KEY`, where `=` or `!=` must follow.
    fn operator_error(&self, at: usize, key: &str) -> FilterError {
        let rest = &self.src[at..];
        let hint = if rest.starts_with("==") {
            "; use a single `=`".to_owned()
        } else if rest.starts_with('<') || rest.starts_with('>') {
            "; filters compare attributes only with `=` and `!=` (values are strings)".to_owned()
        } else if rest.starts_with(':') {
            "; write `attributes:KEY` to test that an attribute is present".to_owned()
        } else if self.peek().is_some_and(|b| !is_ws(b)) {
            format!("; {QUOTE_NAME_HINT}")
        } else {
            String::new()
        };
        self.error(
            at,
            format!(
                "expected `=` or `!=` after `attributes.{}`, found {}{hint}",
                Key(key),
                self.found(at)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(text: &str) -> Filter {
        Filter::parse(text).expect("the filter parses")
    }

    fn syntax_error(text: &str) -> (usize, String) {
        match Filter::parse(text).expect_err("the filter is refused") {
            FilterError::Syntax { position, message } => (position, message),
            other => panic!("expected a syntax error for {text:?}, got {other:?}"),
        }
    }

    fn has(key: &str) -> Expr {
        Expr::HasKey(key.to_owned())
    }

    fn eq(key: &str, value: &str) -> Expr {
        Expr::Equals {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    // The messages of Google's fake server's filter tests
    // (google-cloud-go, pubsub/pstest/filtering_test.go).
    fn pstest_messages() -> Vec<(u32, HashMap<String, String>)> {
        vec![
            (
                1,
                attrs(&[("lang", "en"), ("name", "com"), ("timezone", "UTC")]),
            ),
            (
                2,
                attrs(&[("lang", "en"), ("name", "net"), ("timezone", "UTC")]),
            ),
            (
                3,
                attrs(&[("lang", "en"), ("name", "org"), ("timezone", "UTC")]),
            ),
            (
                4,
                attrs(&[("lang", "cn"), ("name", "com"), ("timezone", "UTC")]),
            ),
            (
                5,
                attrs(&[("lang", "cn"), ("name", "net"), ("timezone", "UTC")]),
            ),
            (
                6,
                attrs(&[("lang", "cn"), ("name", "org"), ("timezone", "UTC")]),
            ),
            (
                7,
                attrs(&[("lang", "jp"), ("name", "co"), ("timezone", "UTC")]),
            ),
            (8, attrs(&[("lang", "jp"), ("timezone", "UTC")])),
            (9, attrs(&[("name", "com"), ("timezone", "UTC")])),
            (
                10,
                attrs(&[("lang", "jp"), ("\u{307F}\u{3093}\u{306A}", "dummy1")]),
            ),
            (11, attrs(&[("\u{307F}\u{3093}\u{306A}", "dummy2")])),
            (
                12,
                attrs(&[("name", "com"), ("\u{307F}\u{3093}\u{306A}", "dummy3")]),
            ),
        ]
    }

    fn matching(text: &str) -> Vec<u32> {
        let filter = parse(text);
        pstest_messages()
            .into_iter()
            .filter(|(_, a)| filter.matches(a))
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn agrees_with_googles_fake_server() {
        let cases: &[(&str, &[u32])] = &[
            (r#"attributes.name = "com""#, &[1, 4, 9, 12]),
            (r#"attributes.name != "com""#, &[2, 3, 5, 6, 7, 8, 10, 11]),
            (r#"hasPrefix(attributes.name, "co")"#, &[1, 4, 7, 9, 12]),
            ("attributes:name", &[1, 2, 3, 4, 5, 6, 7, 9, 12]),
            ("NOT attributes:name", &[8, 10, 11]),
            (
                r#"(NOT attributes:name) OR attributes.name = "co""#,
                &[7, 8, 10, 11],
            ),
            (r#"NOT (attributes:name OR attributes.lang = "jp")"#, &[11]),
            (
                r#"attributes.name = "com" AND -attributes:"lang""#,
                &[9, 12],
            ),
            ("attributes:\"\u{307F}\u{3093}\u{306A}\"", &[10, 11, 12]),
            (r#"attributes:"\u307F\u3093\u306A""#, &[10, 11, 12]),
        ];
        for (text, want) in cases {
            assert_eq!(matching(text), *want, "filter {text}");
        }
    }

    #[test]
    fn has_key() {
        let f = parse("attributes:name");
        assert!(f.matches(&attrs(&[("name", "")])));
        assert!(f.matches(&attrs(&[("name", "x"), ("other", "y")])));
        assert!(!f.matches(&attrs(&[("other", "name")])));
        assert!(!f.matches(&attrs(&[])));
    }

    #[test]
    fn equals_is_exact_and_case_sensitive() {
        let f = parse(r#"attributes.name = "com""#);
        assert!(f.matches(&attrs(&[("name", "com")])));
        assert!(!f.matches(&attrs(&[("name", "Com")])));
        assert!(!f.matches(&attrs(&[("name", "com ")])));
        assert!(!f.matches(&attrs(&[("Name", "com")])));
        assert!(!f.matches(&attrs(&[])));
    }

    #[test]
    fn not_equals_holds_when_absent() {
        let f = parse(r#"attributes.name != "com""#);
        assert!(!f.matches(&attrs(&[("name", "com")])));
        assert!(f.matches(&attrs(&[("name", "org")])));
        assert!(f.matches(&attrs(&[])));
    }

    #[test]
    fn has_prefix() {
        let f = parse(r#"hasPrefix(attributes.name, "co")"#);
        assert!(f.matches(&attrs(&[("name", "co")])));
        assert!(f.matches(&attrs(&[("name", "com")])));
        assert!(!f.matches(&attrs(&[("name", "c")])));
        assert!(!f.matches(&attrs(&[("name", "Com")])));
        assert!(!f.matches(&attrs(&[])));
        // The empty prefix matches any present value, never an absent one.
        let empty = parse(r#"hasPrefix(attributes.name, "")"#);
        assert!(empty.matches(&attrs(&[("name", "")])));
        assert!(!empty.matches(&attrs(&[])));
        // Spaces inside the parentheses are fine.
        assert_eq!(parse(r#"hasPrefix( attributes.name ,"co" )"#), f);
    }

    #[test]
    fn spaces_around_comparison_are_optional() {
        let want = parse(r#"attributes.ce-type = "dev.chainguard.bar""#);
        assert_eq!(parse(r#"attributes.ce-type="dev.chainguard.bar""#), want);
        assert_eq!(
            parse("  attributes.ce-type\t=\n\"dev.chainguard.bar\"  "),
            want
        );
        assert_eq!(
            want.expr(),
            &eq("ce-type", "dev.chainguard.bar"),
            "hyphens belong to bare names"
        );
    }

    #[test]
    fn quoted_keys() {
        let f = parse(r#"attributes:"iana.org/language_tag" AND attributes."a b" = "c""#);
        assert_eq!(
            f.expr(),
            &Expr::And(vec![has("iana.org/language_tag"), eq("a b", "c")])
        );
        assert!(f.matches(&attrs(&[("iana.org/language_tag", "en"), ("a b", "c")])));
        assert!(!f.matches(&attrs(&[("iana.org/language_tag", "en")])));
    }

    #[test]
    fn and_or_not() {
        let and = parse("attributes:a AND attributes:b AND attributes:c");
        assert_eq!(and.expr(), &Expr::And(vec![has("a"), has("b"), has("c")]));
        assert!(and.matches(&attrs(&[("a", ""), ("b", ""), ("c", "")])));
        assert!(!and.matches(&attrs(&[("a", ""), ("b", "")])));

        let or = parse("attributes:a OR attributes:b");
        assert_eq!(or.expr(), &Expr::Or(vec![has("a"), has("b")]));
        assert!(or.matches(&attrs(&[("b", "")])));
        assert!(!or.matches(&attrs(&[("c", "")])));

        let not = parse("NOT attributes:a");
        assert_eq!(not.expr(), &Expr::Not(Box::new(has("a"))));
        assert!(not.matches(&attrs(&[])));
        assert!(!not.matches(&attrs(&[("a", "")])));
        assert_eq!(parse("-attributes:a"), not, "`-` is NOT");
        assert_eq!(parse("NOT(attributes:a)"), not);
    }

    #[test]
    fn not_binds_tighter_than_and_or() {
        let f = parse("NOT attributes:a AND attributes:b");
        assert_eq!(
            f.expr(),
            &Expr::And(vec![Expr::Not(Box::new(has("a"))), has("b")])
        );
        let f = parse(r#"NOT attributes.a = "x" OR -hasPrefix(attributes.b, "y")"#);
        assert!(f.matches(&attrs(&[("a", "y"), ("b", "yes")])));
        assert!(!f.matches(&attrs(&[("a", "x"), ("b", "yes")])));
        assert!(f.matches(&attrs(&[("a", "x")])));
    }

    #[test]
    fn parentheses_group() {
        let f =
            parse(r#"attributes:lang AND (attributes.name = "com" OR attributes.name = "net")"#);
        assert_eq!(
            f.expr(),
            &Expr::And(vec![
                has("lang"),
                Expr::Or(vec![eq("name", "com"), eq("name", "net")])
            ])
        );
        assert!(f.matches(&attrs(&[("lang", "en"), ("name", "net")])));
        assert!(!f.matches(&attrs(&[("lang", "en"), ("name", "org")])));
        assert!(!f.matches(&attrs(&[("name", "com")])));

        let f = parse("(attributes:a AND attributes:b) OR (attributes:c)");
        assert_eq!(
            f.expr(),
            &Expr::Or(vec![Expr::And(vec![has("a"), has("b")]), has("c")])
        );
        assert_eq!(parse("((attributes:a))").expr(), &has("a"));
        assert_eq!(
            parse("NOT (NOT attributes:a)").expr(),
            &Expr::Not(Box::new(Expr::Not(Box::new(has("a")))))
        );
    }

    #[test]
    fn mixing_and_or_needs_parentheses() {
        let (pos, msg) = syntax_error("attributes:a AND attributes:b OR attributes:c");
        assert_eq!(pos, 31);
        assert!(msg.contains("`OR` follows `AND`"), "{msg}");
        assert!(msg.contains("parentheses"), "{msg}");
        let (pos, msg) = syntax_error("attributes:a OR attributes:b AND attributes:c");
        assert_eq!(pos, 30);
        assert!(msg.contains("`AND` follows `OR`"), "{msg}");
        // Inside parentheses the same rule holds, level by level.
        let (pos, _) =
            syntax_error("attributes:a AND (attributes:b OR attributes:c AND attributes:d)");
        assert_eq!(pos, 48);
    }

    #[test]
    fn string_escapes() {
        let cases: &[(&str, &str)] = &[
            (r#""a\"b""#, "a\"b"),
            (r#""a\\b""#, "a\\b"),
            (r#""\n\r\t\a\b\f\v\'\`\?""#, "\n\r\t\u{7}\u{8}\u{c}\u{b}'`?"),
            (r#""\x44\x45""#, "DE"),
            (r#""\101\102""#, "AB"),
            (r#""\u307F\U0001F600""#, "\u{307F}\u{1F600}"),
            (r#""\xff""#, "\u{ff}"),
            (r#""é✓""#, "é✓"),
        ];
        for (literal, want) in cases {
            let f = parse(&format!("attributes.k = {literal}"));
            assert_eq!(f.expr(), &eq("k", want), "literal {literal}");
        }
    }

    #[test]
    fn bad_string_escapes() {
        let (pos, msg) = syntax_error(r#"attributes.k = "a\qb""#);
        assert_eq!(pos, 18);
        assert!(msg.contains("unknown escape `\\q`"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes.k = "\x4""#);
        assert_eq!(pos, 17);
        assert!(msg.contains("2 hex digits"), "{msg}");
        // A multi-byte character where digits should be: refused, no panic.
        let (pos, msg) = syntax_error(r#"attributes.k = "\xé""#);
        assert_eq!(pos, 17);
        assert!(msg.contains("`\\xé\"`"), "{msg}");
        let (_, msg) = syntax_error(r#"attributes.k = "\uD800""#);
        assert!(msg.contains("not a Unicode scalar value"), "{msg}");
        let (_, msg) = syntax_error(r#"attributes.k = "\400""#);
        assert!(msg.contains("above \\377"), "{msg}");
        let (pos, msg) = syntax_error("attributes.k = \"a\nb\"");
        assert_eq!(pos, 18);
        assert!(msg.contains("control character"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes.k = "abc"#);
        assert_eq!(pos, 16);
        assert!(msg.contains("unterminated string"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes.k = "abc\"#);
        assert_eq!(pos, 16);
        assert!(msg.contains("unterminated string"), "{msg}");
    }

    #[test]
    fn values_must_be_quoted_strings() {
        let err = Filter::parse("attributes.recipient = foo").expect_err("unquoted value");
        assert_eq!(
            err.to_string(),
            "invalid filter at position 24: expected a string in double quotes after `=`, found `foo`; values are always strings in double quotes: write `\"foo\"`"
        );
        let (pos, msg) = syntax_error("attributes.x = 1");
        assert_eq!(pos, 16);
        assert!(msg.contains("write `\"1\"`"), "{msg}");
        let (pos, msg) = syntax_error("attributes.x != 'a'");
        assert_eq!(pos, 17);
        assert!(msg.contains("after `!=`"), "{msg}");
        assert!(msg.contains("double quotes"), "{msg}");
        let (pos, msg) = syntax_error("attributes.x =");
        assert_eq!(pos, 15);
        assert!(msg.contains("found the end of the filter"), "{msg}");
    }

    #[test]
    fn unsupported_operators() {
        let (pos, msg) = syntax_error(r#"attributes.x < "5""#);
        assert_eq!(pos, 14);
        assert!(msg.contains("found `<`"), "{msg}");
        assert!(msg.contains("only with `=` and `!=`"), "{msg}");
        let (_, msg) = syntax_error(r#"attributes.x >= "5""#);
        assert!(msg.contains("found `>=`"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes.x == "5""#);
        assert_eq!(pos, 14);
        assert!(msg.contains("single `=`"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes:x = "5""#);
        assert_eq!(pos, 14);
        assert!(msg.contains("only tests presence"), "{msg}");
        let (pos, msg) = syntax_error("attributes.x");
        assert_eq!(pos, 13);
        assert!(
            msg.contains("expected `=` or `!=` after `attributes.x`"),
            "{msg}"
        );
        let (pos, msg) = syntax_error(r#"attributes:a && attributes:b"#);
        assert_eq!(pos, 14);
        assert!(msg.contains("write AND or OR"), "{msg}");
    }

    #[test]
    fn only_attributes_can_be_tested() {
        let (pos, msg) = syntax_error(r#"data = "x""#);
        assert_eq!(pos, 1);
        assert!(msg.contains("found `data`"), "{msg}");
        assert!(msg.contains("only message attributes"), "{msg}");
        let (pos, msg) = syntax_error(r#""com" = attributes.name"#);
        assert_eq!(pos, 1);
        assert!(msg.contains("the attribute comes first"), "{msg}");
        let (pos, msg) = syntax_error(r#"hasSuffix(attributes.name, "x")"#);
        assert_eq!(pos, 1);
        assert!(msg.contains("only function is `hasPrefix"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes = "x""#);
        assert_eq!(pos, 11);
        assert!(msg.contains("right after `attributes`"), "{msg}");
        let (pos, msg) = syntax_error("message.attributes:x");
        assert_eq!(pos, 1);
        assert!(msg.contains("found `message`"), "{msg}");
    }

    #[test]
    fn attribute_names() {
        let (pos, msg) = syntax_error(r#"attributes.iana.org/x = "en""#);
        assert_eq!(pos, 16);
        assert!(msg.contains("must be quoted"), "{msg}");
        let (pos, msg) = syntax_error("attributes: name");
        assert_eq!(pos, 12);
        assert!(msg.contains("no space is allowed"), "{msg}");
        let (pos, msg) = syntax_error(r#"attributes:"""#);
        assert_eq!(pos, 12);
        assert!(msg.contains("cannot be empty"), "{msg}");
        let (pos, msg) = syntax_error("attributes:@x");
        assert_eq!(pos, 12);
        assert!(msg.contains("must be quoted"), "{msg}");
        let (pos, _) = syntax_error("attributes:");
        assert_eq!(pos, 12);
        // Non-ASCII names must be quoted too.
        let (pos, _) = syntax_error("attributes:é");
        assert_eq!(pos, 12);
    }

    #[test]
    fn has_prefix_errors() {
        let (pos, msg) = syntax_error(r#"hasPrefix (attributes.a, "x")"#);
        assert_eq!(pos, 10);
        assert!(msg.contains("right after `hasPrefix`"), "{msg}");
        let (pos, msg) = syntax_error(r#"hasPrefix(attributes:a, "x")"#);
        assert_eq!(pos, 11);
        assert!(msg.contains("first argument"), "{msg}");
        let (pos, msg) = syntax_error(r#"hasPrefix(attributes.a "x")"#);
        assert_eq!(pos, 24);
        assert!(msg.contains("expected `,`"), "{msg}");
        let (pos, msg) = syntax_error(r#"hasPrefix(attributes.a, x)"#);
        assert_eq!(pos, 25);
        assert!(msg.contains("after `,`"), "{msg}");
        let (pos, msg) = syntax_error(r#"hasPrefix(attributes.a, "x""#);
        assert_eq!(pos, 28);
        assert!(msg.contains("close `hasPrefix(`"), "{msg}");
    }

    #[test]
    fn boolean_operator_errors() {
        let (pos, msg) = syntax_error("attributes:a and attributes:b");
        assert_eq!(pos, 14);
        assert!(msg.contains("uppercase"), "{msg}");
        let (pos, msg) = syntax_error("not attributes:a");
        assert_eq!(pos, 1);
        assert!(msg.contains("uppercase"), "{msg}");
        let (pos, msg) = syntax_error("attributes:a attributes:b");
        assert_eq!(pos, 14);
        assert!(msg.contains("join conditions with AND or OR"), "{msg}");
        let (pos, msg) = syntax_error("attributes:a AND");
        assert_eq!(pos, 17);
        assert!(msg.contains("found the end of the filter"), "{msg}");
        let (pos, msg) = syntax_error("AND attributes:a");
        assert_eq!(pos, 1);
        assert!(msg.contains("missing before `AND`"), "{msg}");
        let (pos, msg) = syntax_error("attributes:a AND AND attributes:b");
        assert_eq!(pos, 18);
        assert!(msg.contains("missing before `AND`"), "{msg}");
        let (pos, msg) = syntax_error("NOT NOT attributes:a");
        assert_eq!(pos, 5);
        assert!(msg.contains("after NOT"), "{msg}");
        assert!(msg.contains("NOT (NOT"), "{msg}");
        let (pos, msg) = syntax_error("--attributes:a");
        assert_eq!(pos, 2);
        assert!(msg.contains("after `-`"), "{msg}");
        let (pos, msg) = syntax_error("- attributes:a");
        assert_eq!(pos, 2);
        assert!(msg.contains("right after `-`"), "{msg}");
        let (pos, msg) = syntax_error("NOT");
        assert_eq!(pos, 4);
        assert!(msg.contains("found the end of the filter"), "{msg}");
    }

    #[test]
    fn parenthesis_errors() {
        let (pos, msg) = syntax_error("(attributes:a");
        assert_eq!(pos, 14);
        assert!(msg.contains("close the `(` at position 1"), "{msg}");
        let (pos, msg) = syntax_error("attributes:a)");
        assert_eq!(pos, 13);
        assert!(msg.contains("without a matching `(`"), "{msg}");
        let (pos, msg) = syntax_error("()");
        assert_eq!(pos, 2);
        assert!(msg.contains("hold no condition"), "{msg}");
        let (pos, msg) = syntax_error("(attributes:a attributes:b)");
        assert_eq!(pos, 15);
        assert!(msg.contains("expected AND, OR or `)`"), "{msg}");
    }

    #[test]
    fn positions_count_bytes() {
        // "é" is two bytes: the stray `x` is at byte offset 22, position 23.
        let (pos, _) = syntax_error("attributes.\"é\" = \"x\" x");
        assert_eq!(pos, 23);
        let err = Filter::parse("attributes:a b").expect_err("trailing word");
        assert_eq!(err.position(), Some(14));
    }

    #[test]
    fn long_tokens_are_shortened_in_messages() {
        let text = format!("attributes:a {}", "x".repeat(60));
        let (_, msg) = syntax_error(&text);
        assert!(msg.contains(&format!("`{}…`", "x".repeat(24))), "{msg}");
    }

    #[test]
    fn empty_and_blank() {
        assert_eq!(Filter::parse(""), Err(FilterError::Empty));
        assert_eq!(Filter::parse(" \t\n"), Err(FilterError::Empty));
        assert_eq!(Filter::parse_optional(""), Ok(None));
        assert_eq!(Filter::parse_optional("   "), Ok(None));
        assert_eq!(
            Filter::parse_optional("attributes:a"),
            Ok(Some(parse("attributes:a")))
        );
        assert!(Filter::parse_optional("attributes").is_err());
        assert_eq!(FilterError::Empty.position(), None);
    }

    #[test]
    fn length_limit_is_256_bytes() {
        let prefix = "attributes.k = \"";
        let fill = MAX_FILTER_BYTES - prefix.len() - 1;
        let at_limit = format!("{prefix}{}\"", "v".repeat(fill));
        assert_eq!(at_limit.len(), MAX_FILTER_BYTES);
        assert!(Filter::parse(&at_limit).is_ok());
        let over = format!("{prefix}{}\"", "v".repeat(fill + 1));
        let err = Filter::parse(&over).expect_err("too long");
        assert_eq!(err, FilterError::TooLong { len: 257, max: 256 });
        assert_eq!(
            err.to_string(),
            "invalid filter: it is 257 bytes long; Pub/Sub allows at most 256 bytes"
        );
        // Bytes, not characters: 135 characters, 257 bytes.
        let wide = format!("attributes:\"{}\"", "é".repeat(122));
        assert_eq!(wide.len(), 257);
        assert!(matches!(
            Filter::parse(&wide),
            Err(FilterError::TooLong { .. })
        ));
        // Deep nesting within the limit parses (and evaluates) fine.
        let deep = format!("{}attributes:a{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).matches(&attrs(&[("a", "")])));
    }

    #[test]
    fn octue_filters() {
        // octue 0.69.1, octue/twined/cloud/pub_sub/service.py: the child's
        // question subscription and the parent's answer subscription.
        let sruid = "octue/example-service:1.0.0";
        let question_uuid = "6b1e1b5e-6f42-4a3c-9b9f-2f1a3d1c0e7a";
        let serve = parse(&format!(
            r#"attributes.recipient = "{sruid}" AND attributes.sender_type = "PARENT""#
        ));
        let ask = parse(&format!(
            r#"attributes.recipient = "{sruid}" AND attributes.question_uuid = "{question_uuid}" AND attributes.sender_type = "CHILD""#
        ));
        assert_eq!(
            ask.expr(),
            &Expr::And(vec![
                eq("recipient", sruid),
                eq("question_uuid", question_uuid),
                eq("sender_type", "CHILD"),
            ])
        );
        let question = attrs(&[
            ("recipient", sruid),
            ("sender", "octue/parent:local"),
            ("sender_type", "PARENT"),
            ("question_uuid", question_uuid),
        ]);
        let answer = attrs(&[
            ("recipient", sruid),
            ("sender_type", "CHILD"),
            ("question_uuid", question_uuid),
        ]);
        let other_answer = attrs(&[
            ("recipient", sruid),
            ("sender_type", "CHILD"),
            ("question_uuid", "00000000-0000-0000-0000-000000000000"),
        ]);
        assert!(serve.matches(&question));
        assert!(!serve.matches(&answer));
        assert!(ask.matches(&answer));
        assert!(!ask.matches(&question));
        assert!(!ask.matches(&other_answer));
    }

    #[test]
    fn display_round_trips() {
        let texts = [
            "attributes:a",
            r#"attributes.a = "x""#,
            r#"attributes.a != "x""#,
            r#"hasPrefix(attributes."a.b", "p\"q\\r")"#,
            r#"NOT attributes:a AND -attributes:"x y""#,
            r#"(attributes:a OR attributes:b) AND NOT (attributes:c AND attributes:d)"#,
            r#"NOT (NOT attributes:a) OR ((attributes:b))"#,
            r#"attributes.k = "\x01\n\u307F""#,
        ];
        for text in texts {
            let filter = parse(text);
            let shown = filter.to_string();
            assert_eq!(parse(&shown), filter, "{text} -> {shown}");
        }
        assert_eq!(
            parse(r#"-attributes:a   AND   (attributes.b="c"   OR attributes:"d e")"#).to_string(),
            r#"NOT attributes:a AND (attributes.b = "c" OR attributes:"d e")"#
        );
    }

    #[test]
    fn from_str_and_matches_by() {
        let filter: Filter = r#"attributes.a = "1""#.parse().expect("parses");
        let map = std::collections::BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        assert!(filter.matches_by(|k| map.get(k).map(String::as_str)));
        assert!(!filter.matches_by(|_| None));
    }
}
