//! `.dockerignore`, read and applied the way Docker reads and applies it.
//!
//! No crate on crates.io implements Docker's semantics as a library of its own, so this is a
//! port of the three pieces Docker uses, kept to their behaviour rather than to a tidier one:
//!
//! - reading the file (moby `patternmatcher/ignorefile.ReadAll`): a UTF-8 BOM dropped; a line
//!   starting with `#` in its first column is a comment; each line trimmed, blank lines
//!   skipped; `!` makes an exception; the pattern cleaned as Go's `filepath.Clean` cleans it
//!   and one leading `/` dropped, so `/foo`, `./foo` and `foo/` all mean `foo`;
//! - matching (moby `patternmatcher`): `*` and `?` stop at `/`, `[...]` is a class (`^`
//!   negates), `\` escapes, `**` matches any number of directories (none too) and a trailing
//!   `**` anything; a pattern matches a path when it matches the path or one of its parent
//!   directories; the last matching line decides, so a later `!` line re-includes; a pattern
//!   Go's `filepath.Match` refuses makes the whole file refused, as Docker refuses the build;
//! - walking the context (the CLI's context tar, BuildKit's fsutil alike): an excluded
//!   directory is not descended into unless an exception's text starts with its path (so
//!   `!**/keep` does not bring a file back out of an excluded directory, in Docker either),
//!   and the `.dockerignore` and the Dockerfile are sent even when excluded (the engine reads
//!   them, then leaves them out of `COPY`).
//!
//! buildah is given the same reading ([`DockerIgnore::buildah_file`] for `--ignorefile`), so
//! both builders leave out the same files (`.git` too: buildah would otherwise copy the
//! checkout's metadata on `COPY .`) and neither looks at `.containerignore`.

use std::path::Path;

use regex::Regex;

/// The file's name at the root of the context (the only place Docker's classic builder reads it).
pub const FILE: &str = ".dockerignore";

/// Why a `.dockerignore` is refused (Docker refuses the build for the same lines).
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error(
        "{path} must be a regular file of at most {max} bytes inside the source (a link may \
         lead only to such a file)"
    )]
    File { path: String, max: u64 },
    #[error("{file} line {line}: a lone `!` is not a pattern")]
    LoneBang { file: String, line: usize },
    #[error("{file} line {line}: `{pattern}` is not a valid pattern ({why})")]
    Bad {
        file: String,
        line: usize,
        pattern: String,
        why: &'static str,
    },
}

/// How one rule compares a path (moby's match types; the first three spare a regex).
#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    /// A literal followed by a trailing `**`: the literal is a prefix.
    Prefix(String),
    /// A leading `**` followed by a literal: the literal is a suffix.
    Suffix(String),
    Regex(Regex),
}

/// One line of the file.
#[derive(Debug, Clone)]
struct Rule {
    /// A `!` line: re-includes what it matches.
    exception: bool,
    /// The cleaned pattern, without its `!`.
    pattern: String,
    matcher: Matcher,
}

impl Rule {
    fn parse(line: &str) -> Result<Self, &'static str> {
        let (exception, pattern) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        validate(pattern)?;
        let matcher = compile(pattern)?;
        Ok(Self {
            exception,
            pattern: pattern.to_owned(),
            matcher,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.pattern,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Matcher::Regex(re) => re.is_match(path),
        }
    }
}

/// The rules of one `.dockerignore` (none when the context has no such file).
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

impl DockerIgnore {
    /// The `.dockerignore` at the root of `context` (Docker's classic builder reads no other)
    /// in the source `root`, parsed; without one, no rules.
    pub fn read(root: &Path, context: &Path, max: u64) -> Result<Self, IgnoreError> {
        let path = context.join(FILE);
        let shown = path.strip_prefix(root).map_or_else(
            |_| FILE.into(),
            |p| crate::builds::output::cut(&p.to_string_lossy(), 200).into_owned(),
        );
        if path.symlink_metadata().is_err() {
            return Ok(Self::default());
        }
        let refused = || IgnoreError::File {
            path: shown.clone(),
            max,
        };
        let real = path.canonicalize().map_err(|_| refused())?;
        let meta = std::fs::metadata(&real).map_err(|_| refused())?;
        if !real.starts_with(root) || !meta.is_file() || meta.len() > max {
            return Err(refused());
        }
        let bytes = std::fs::read(&real).map_err(|_| refused())?;
        Self::parse(&String::from_utf8_lossy(&bytes), &shown)
    }

    /// Reads the text of a `.dockerignore` named `file` (for the error).
    pub fn parse(text: &str, file: &str) -> Result<Self, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let Some(line) = read_line(raw) else {
                continue;
            };
            if line == "!" {
                return Err(IgnoreError::LoneBang {
                    file: file.to_owned(),
                    line: n + 1,
                });
            }
            let rule = Rule::parse(&line).map_err(|why| IgnoreError::Bad {
                file: file.to_owned(),
                line: n + 1,
                pattern: crate::builds::output::cut(raw.trim(), 200).into_owned(),
                why,
            })?;
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        if path == "." {
            return false;
        }
        let parents: Vec<&str> = match path.rfind('/') {
            Some(end) => path[..end].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for rule in &self.rules {
            // An exclusion cannot change an excluded path, nor an exception a kept one.
            if rule.exception != excluded {
                continue;
            }
            let matched = rule.matches(&path)
                || (1..=parents.len()).any(|n| rule.matches(&parents[..n].join("/")));
            if matched {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// These rules with exceptions for `files` that they exclude (what the Docker CLI does for
    /// the `.dockerignore` and the Dockerfile before it makes the context).
    pub fn keeping(&self, files: &[&str]) -> Self {
        let mut kept = self.clone();
        for file in files {
            if self.excludes(file)
                && let Ok(rule) = Rule::parse(&format!("!{}", clean(file)))
            {
                kept.rules.push(rule);
            }
        }
        kept
    }

    /// Whether the walk goes into excluded directory `dir`: an exception may bring back
    /// something in it (Docker's test: the exception's text starts with `dir/`).
    fn may_reinclude_under(&self, dir: &str) -> bool {
        let dir = format!("{dir}/");
        self.rules
            .iter()
            .any(|r| r.exception && format!("{}/", r.pattern).starts_with(&dir))
    }

    /// The rules as an ignore file for buildah's `--ignorefile`, already cleaned: buildah's
    /// own reader neither trims spaces nor drops the `/` after a `!`. `.git` last: the
    /// checkout's metadata stays out whatever the rules say, as [`walk`] leaves it out.
    pub fn buildah_file(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            if rule.exception {
                out.push('!');
            }
            // A pattern that begins with `#` (its line did not): escaped, not a comment.
            if !rule.exception && rule.pattern.starts_with('#') {
                out.push('\\');
            }
            out.push_str(&rule.pattern);
            out.push('\n');
        }
        out.push_str(".git\n");
        out
    }
}

/// One line as `ignorefile.ReadAll` leaves it; `None` for comments and blank lines.
fn read_line(raw: &str) -> Option<String> {
    if raw.starts_with('#') {
        return None;
    }
    let line = raw.trim();
    if line.is_empty() {
        return None;
    }
    let (invert, pattern) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut pattern = if pattern.is_empty() {
        String::new()
    } else {
        clean(pattern)
    };
    if pattern.len() > 1 && pattern.starts_with('/') {
        pattern.remove(0);
    }
    // patternmatcher.New cleans the line again, `!` and all.
    Some(clean(&if invert {
        format!("!{pattern}")
    } else {
        pattern
    }))
}

/// Go's `path.Clean`: the shortest equivalent path, lexically.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            part => parts.push(part),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// What Go's `filepath.Match` refuses: a `\` at the end, a class not closed, empty, or with
/// a bound that is `-` or `]` unescaped.
fn validate(pattern: &str) -> Result<(), &'static str> {
    let mut chars = pattern.chars().peekable();
    // One class bound (Go's getEsc): not `-` or `]`, maybe escaped, and something after it.
    fn bound(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<(), &'static str> {
        const BAD: &str = "a malformed character class";
        match chars.next() {
            None | Some('-' | ']') => return Err(BAD),
            Some('\\') if chars.next().is_none() => return Err(BAD),
            Some(_) => {}
        }
        chars.peek().map(|_| ()).ok_or(BAD)
    }
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return Err("a `\\` at its end"),
            '[' => {
                chars.next_if_eq(&'^');
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    bound(&mut chars)?;
                    if chars.next_if_eq(&'-').is_some() {
                        bound(&mut chars)?;
                    }
                    ranges += 1;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// moby's `Pattern.compile`: the match type, and the regex when it needs one.
fn compile(pattern: &str) -> Result<Matcher, &'static str> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let mut chars = pattern.chars().peekable();
    let mut i = 0;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                chars.next_if_eq(&'/');
                if chars.peek().is_none() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if i == 0 {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(c);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    re.push('\\');
                    re.push(next);
                    kind = Kind::Regex;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(c);
                kind = Kind::Regex;
            }
            c => re.push(c),
        }
        i += 1;
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact,
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_owned()),
        Kind::Regex => {
            re.push('$');
            Matcher::Regex(Regex::new(&re).map_err(|_| "not a pattern Docker can match")?)
        }
    })
}

/// What the walk found at one path of the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A file, a link (never followed) or another special file: sent as it is.
    Other,
}

/// The paths of `context` Docker would send, relative, parents before children, in name
/// order; `.git` at its root is never sent (the builder's checkout metadata). Links are not
/// followed (a link to a directory is a link).
pub fn walk(context: &Path, ignore: &DockerIgnore) -> std::io::Result<Vec<(String, Kind)>> {
    let mut found = Vec::new();
    walk_dir(context, "", ignore, &mut found)?;
    Ok(found)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    ignore: &DockerIgnore,
    found: &mut Vec<(String, Kind)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && name == ".git" {
            continue;
        }
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        // `file_type` does not follow links.
        let is_dir = entry.file_type()?.is_dir();
        if ignore.excludes(&path) {
            if is_dir && ignore.may_reinclude_under(&path) {
                walk_dir(&entry.path(), &path, ignore, found)?;
            }
            continue;
        }
        if is_dir {
            found.push((path.clone(), Kind::Dir));
            walk_dir(&entry.path(), &path, ignore, found)?;
        } else {
            found.push((path, Kind::Other));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "ignore_tests.rs"]
mod tests;
