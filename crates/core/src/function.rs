//! Functions (FaaSpot's deployments): a Python file whose `main(args,
//! context)` answers each run, with optional requirements and a context.
//! What is checked before a function is deployed lives here: the file has a
//! top-level `main` that takes two arguments, and the context file is
//! `key = value` lines.

use std::collections::BTreeMap;

/// The largest function file, requirements or context accepted (bytes).
pub const MAX_FILE: usize = 1 << 20;

/// The runner a function's revision runs, beside its file: how a service
/// is told to be a function (its serving revision's last argument).
pub const RUNNER_FILE: &str = "rouse_function.py";

/// The secret holding a function's context (a JSON object of strings): an
/// environment variable of its instances, sealed like every secret.
pub const CONTEXT_SECRET: &str = "ROUSE_FUNCTION_CONTEXT";

/// Checks that `code` (the file `file`) defines a top-level `main` that can
/// be called as `main(args, context)`; the error names the file, the line
/// and the fix. The last definition counts, as in Python.
pub fn check_main(file: &str, code: &str) -> Result<(), String> {
    let example = "def main(args, context):\n        return ''";
    if code.len() > MAX_FILE {
        return Err(format!(
            "{file} is {} bytes; a function file may be at most {MAX_FILE} bytes",
            code.len()
        ));
    }
    let lines: Vec<&str> = code.lines().collect();
    let mut in_string: Option<&str> = None;
    let mut found = None;
    for (n, line) in lines.iter().enumerate() {
        if let Some(quote) = in_string {
            if line.matches(quote).count() % 2 == 1 {
                in_string = None;
            }
            continue;
        }
        let def = line
            .strip_prefix("def ")
            .or_else(|| line.strip_prefix("async def "));
        if let Some(rest) = def
            && rest
                .trim_start()
                .strip_prefix("main")
                .is_some_and(|r| r.trim_start().starts_with('('))
        {
            found = Some(n);
        }
        for quote in ["\"\"\"", "'''"] {
            if line.matches(quote).count() % 2 == 1 {
                in_string = Some(quote);
                break;
            }
        }
    }
    let Some(n) = found else {
        return Err(format!(
            "{file} has no top-level `main` function; a function is called as `main(args, context)`, e.g.\n    {example}"
        ));
    };
    // The parameters: from the `(` after `main` to its matching `)`.
    let text: String = lines[n..].join("\n");
    let open = text.find('(').unwrap_or_default();
    let mut depth = 0usize;
    let mut close = None;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let line = n + 1;
    let Some(close) = close else {
        return Err(format!(
            "{file}:{line}: `main`'s parameter list is not closed; write `{example}`"
        ));
    };
    let params = split_top_level(&text[open + 1..close]);
    if callable_with_two(&params) {
        Ok(())
    } else {
        Err(format!(
            "{file}:{line}: `main({})` cannot be called as `main(args, context)`; it must take two arguments, e.g.\n    {example}",
            params.join(", ")
        ))
    }
}

/// The parameters of a `def`, split at commas outside brackets, with their
/// annotations and defaults kept.
fn split_top_level(params: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in params.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|p| {
            // Comments inside a multi-line parameter list.
            p.lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim())
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_owned()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether parameters accept exactly two positional arguments.
fn callable_with_two(params: &[String]) -> bool {
    let mut positional = 0;
    let mut required = 0;
    let mut varargs = false;
    let mut keyword_only = false;
    for p in params {
        if p == "/" {
            continue;
        }
        if p == "*" {
            keyword_only = true;
            continue;
        }
        if p.starts_with("**") {
            continue;
        }
        if p.starts_with('*') {
            varargs = true;
            keyword_only = true;
            continue;
        }
        let has_default = p.contains('=');
        if keyword_only {
            if !has_default {
                // A keyword-only argument with no default is never given.
                return false;
            }
            continue;
        }
        positional += 1;
        if !has_default {
            required += 1;
        }
    }
    required <= 2 && (positional >= 2 || varargs)
}

/// Reads a context file (FaaSpot's): `key = value` lines, the value bare or
/// quoted (`"…"` with `\"`, `\\`, `\n` escapes, or `'…'`); blank lines and
/// `#` comments are skipped, `export ` before a key is allowed. A repeated
/// key is an error rather than a silent choice.
pub fn parse_context(file: &str, text: &str) -> Result<BTreeMap<String, String>, String> {
    if text.len() > MAX_FILE {
        return Err(format!(
            "{file} is {} bytes; a context file may be at most {MAX_FILE} bytes",
            text.len()
        ));
    }
    let mut out = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line_no = n + 1;
        let bad = |why: &str| {
            format!(
                "{file}:{line_no}: `{line}` {why}; write one `key = value` per line, e.g. access_key = \"XYZ\""
            )
        };
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad("has no `=`"));
        };
        let key = key.trim();
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_key {
            return Err(bad(
                "has no valid key (letters, digits, `_`, `-`, `.`, not starting with a digit)",
            ));
        }
        let value = unquote(value.trim()).map_err(bad)?;
        if let Some(first) = seen.insert(key.to_owned(), line_no) {
            return Err(format!(
                "{file}:{line_no}: `{key}` is set again (first on line {first}); keep one of the two"
            ));
        }
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

fn unquote(value: &str) -> Result<String, &'static str> {
    if let Some(inner) = value.strip_prefix('\'') {
        return inner
            .strip_suffix('\'')
            .map(str::to_owned)
            .ok_or("opens a `'` it does not close");
    }
    let Some(inner) = value.strip_prefix('"') else {
        // A bare value ends at a comment.
        let bare = value.split(" #").next().unwrap_or_default().trim_end();
        return Ok(bare.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => return Err("ends in a lone `\\`"),
            },
            '"' => {
                let rest = chars.as_str().trim();
                if rest.is_empty() || rest.starts_with('#') {
                    return Ok(out);
                }
                return Err("has text after its closing `\"`");
            }
            c => out.push(c),
        }
    }
    Err("opens a `\"` it does not close")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_main_that_takes_args_and_context_passes() {
        for code in [
            "def main(args, context):\n    return ''\n",
            "import os\n\nasync def main(args, context=None):\n    pass\n",
            "def main(\n    args: dict,  # the parameters\n    context: dict = {},\n):\n    return 1\n",
            "def main(*a):\n    return a\n",
            "def main(args, context, *, verbose=False, **rest):\n    pass\n",
            "def main(a, b, c=1, /):\n    pass\n",
            // The last definition counts.
            "def main():\n    pass\n\ndef main(args, context):\n    pass\n",
        ] {
            assert_eq!(check_main("f.py", code), Ok(()), "{code}");
        }
    }

    #[test]
    fn a_missing_or_wrong_main_names_the_file_line_and_fix() {
        let none =
            check_main("hello.py", "def helper(args, context):\n    pass\n").expect_err("refused");
        assert!(
            none.starts_with("hello.py has no top-level `main`"),
            "{none}"
        );
        assert!(none.contains("def main(args, context):"), "{none}");
        // A method, or a `def` inside a docstring, is not a top-level main.
        let nested = "class A:\n    def main(self, args, context):\n        pass\n";
        assert!(check_main("a.py", nested).is_err());
        let quoted = "\"\"\"\ndef main(args, context):\n\"\"\"\nx = 1\n";
        assert!(check_main("q.py", quoted).is_err());
        let one = check_main("hello.py", "import os\n\ndef main(args):\n    pass\n")
            .expect_err("refused");
        assert!(
            one.starts_with("hello.py:3: `main(args)` cannot be called"),
            "{one}"
        );
        let three = check_main("h.py", "def main(a, b, c):\n    pass\n").expect_err("refused");
        assert!(three.starts_with("h.py:1: `main(a, b, c)`"), "{three}");
        let kw = check_main("h.py", "def main(a, b, *, c):\n    pass\n");
        assert!(
            kw.is_err(),
            "a required keyword-only argument is never given"
        );
        let open = check_main("h.py", "def main(a, b:\n").expect_err("refused");
        assert!(open.contains("not closed"), "{open}");
    }

    #[test]
    fn context_files_are_key_value_lines() {
        let text = "# FaaSpot's example\naccess_key_is = \"XYZ\"\nsecret_access_key = \"123\"\n\nexport region=eu-west-1 # a comment\nquote = 'it'\nescaped = \"a \\\"b\\\"\\n\"\n";
        let context = parse_context("context.env", text).expect("parses");
        assert_eq!(context["access_key_is"], "XYZ");
        assert_eq!(context["secret_access_key"], "123");
        assert_eq!(context["region"], "eu-west-1");
        assert_eq!(context["quote"], "it");
        assert_eq!(context["escaped"], "a \"b\"\n");
        assert_eq!(context.len(), 5);
    }

    #[test]
    fn a_bad_context_line_is_named() {
        let cases = [
            (
                "a = 1\nnot a pair\n",
                "context.env:2: `not a pair` has no `=`",
            ),
            ("1a = x\n", "context.env:1: `1a = x` has no valid key"),
            ("a = \"open\n", "opens a `\"` it does not close"),
            ("a = \"x\" y\n", "has text after its closing"),
            (
                "a = 1\na = 2\n",
                "context.env:2: `a` is set again (first on line 1)",
            ),
        ];
        for (text, wanted) in cases {
            let error = parse_context("context.env", text).expect_err("refused");
            assert!(error.contains(wanted), "{text:?}: {error}");
        }
    }
}
