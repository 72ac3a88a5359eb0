//! File globs, for a trigger's included and ignored files and for
//! `.dockerignore`: `*` and `?` stay within one path segment, `**` crosses
//! segments (`**/` also matches no directory at all), `[abc]`, `[a-z]` and
//! `[!abc]` are character classes, `\` escapes the next character. Paths are
//! relative, `/`-separated, and matched as a whole.
//!
//! A glob is compiled into an anchored regular expression once, so matching
//! a push's changed files is linear in their length.

use std::fmt;

use regex::Regex;

/// Longest accepted pattern: globs name files, and a bound keeps compiled
/// patterns small.
pub const MAX_GLOB_LEN: usize = 1024;

/// A compiled file glob.
#[derive(Clone)]
pub struct FileGlob {
    pattern: String,
    regex: Regex,
}

/// Why a glob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file glob `{pattern}` {problem}")]
pub struct GlobError {
    pub pattern: String,
    pub problem: String,
}

impl FileGlob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let error = |problem: &str| GlobError {
            pattern: pattern.to_owned(),
            problem: problem.to_owned(),
        };
        if pattern.is_empty() {
            return Err(error(
                "is empty: give a path pattern such as `docs/**` or `*.md`",
            ));
        }
        if pattern.len() > MAX_GLOB_LEN {
            return Err(error(&format!("is longer than {MAX_GLOB_LEN} characters")));
        }
        let mut out = String::with_capacity(pattern.len() * 2 + 2);
        out.push('^');
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    let at_start = i == 0 || chars[i - 1] == '/';
                    let next = chars.get(i + 2);
                    if at_start && next == Some(&'/') {
                        // `**/`: any number of leading directories, even none.
                        out.push_str("(?:.*/)?");
                        i += 3;
                    } else if at_start && next.is_none() && i > 0 {
                        // trailing `/**`: everything below; the `/` was
                        // already written, so make it optional with it.
                        out.pop();
                        out.push_str("(?:/.*)?");
                        i += 2;
                    } else {
                        out.push_str(".*");
                        i += 2;
                    }
                }
                '*' => {
                    out.push_str("[^/]*");
                    i += 1;
                }
                '?' => {
                    out.push_str("[^/]");
                    i += 1;
                }
                '[' => {
                    let close = chars[i + 1..]
                        .iter()
                        .enumerate()
                        .skip(1)
                        .find(|(_, c)| **c == ']')
                        .map(|(offset, _)| i + 1 + offset)
                        .ok_or_else(|| {
                            error("has a `[` without its closing `]`: escape it as `\\[`")
                        })?;
                    let mut class = String::from("[");
                    let mut body = &chars[i + 1..close];
                    if let Some(('!' | '^', rest)) = body.split_first() {
                        class.push('^');
                        body = rest;
                    }
                    for c in body {
                        // Inside a class only these mean something to regex.
                        if matches!(c, '\\' | '[' | ']' | '&' | '~' | '^') {
                            class.push('\\');
                        }
                        class.push(*c);
                    }
                    class.push(']');
                    out.push_str(&class);
                    i = close + 1;
                }
                '\\' => {
                    let escaped = chars
                        .get(i + 1)
                        .ok_or_else(|| error("ends with a lone `\\`"))?;
                    out.push_str(&regex::escape(&escaped.to_string()));
                    i += 2;
                }
                c => {
                    out.push_str(&regex::escape(&c.to_string()));
                    i += 1;
                }
            }
        }
        out.push('$');
        let regex =
            Regex::new(&out).map_err(|err| error(&format!("is not a valid glob: {err}")))?;
        Ok(Self {
            pattern: pattern.to_owned(),
            regex,
        })
    }

    /// Whether the relative, `/`-separated `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Debug for FileGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FileGlob").field(&self.pattern).finish()
    }
}

impl fmt::Display for FileGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl PartialEq for FileGlob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for FileGlob {}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str) -> FileGlob {
        FileGlob::new(pattern).expect("valid glob")
    }

    #[test]
    fn star_stays_within_a_segment() {
        let g = glob("*.md");
        assert!(g.matches("README.md"));
        assert!(!g.matches("docs/README.md"));
        assert!(glob("docs/*.md").matches("docs/a.md"));
        assert!(!glob("docs/*.md").matches("docs/sub/a.md"));
    }

    #[test]
    fn double_star_crosses_segments() {
        let g = glob("**/*.md");
        assert!(g.matches("README.md"));
        assert!(g.matches("docs/sub/a.md"));
        assert!(!g.matches("src/main.rs"));
        let g = glob("docs/**");
        assert!(g.matches("docs"));
        assert!(g.matches("docs/a/b.txt"));
        assert!(!g.matches("docsx/a"));
        assert!(glob("src/**/test_*.py").matches("src/test_a.py"));
        assert!(glob("src/**/test_*.py").matches("src/a/b/test_a.py"));
        assert!(glob("a**b").matches("a/x/b"));
    }

    #[test]
    fn question_mark_classes_and_escapes() {
        assert!(glob("v?.txt").matches("v1.txt"));
        assert!(!glob("v?.txt").matches("v/.txt"));
        assert!(glob("[ab].txt").matches("a.txt"));
        assert!(!glob("[ab].txt").matches("c.txt"));
        assert!(glob("[!ab].txt").matches("c.txt"));
        assert!(glob("[a-c].txt").matches("b.txt"));
        assert!(glob(r"\*.txt").matches("*.txt"));
        assert!(!glob(r"\*.txt").matches("a.txt"));
        assert!(glob("a.b").matches("a.b"));
        assert!(!glob("a.b").matches("axb"), "`.` is literal");
        assert!(glob("(x)+").matches("(x)+"));
    }

    #[test]
    fn bad_globs_name_the_pattern() {
        let err = FileGlob::new("[abc").expect_err("unterminated class");
        assert_eq!(err.pattern, "[abc");
        assert!(err.to_string().contains("without its closing `]`"), "{err}");
        assert!(FileGlob::new("").is_err());
        assert!(FileGlob::new("a\\").is_err());
        assert!(FileGlob::new(&"a".repeat(MAX_GLOB_LEN + 1)).is_err());
    }
}
