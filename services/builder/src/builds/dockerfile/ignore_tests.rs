//! The matcher against moby's own cases (patternmatcher_test.go, ignorefile_test.go) and the
//! walk against a real directory.

use super::*;

fn rules(lines: &[&str]) -> DockerIgnore {
    DockerIgnore::parse(&lines.join("\n"), ".dockerignore").unwrap()
}

#[test]
fn single_patterns_match_as_in_moby() {
    // (pattern, path, excluded): moby's TestMatches table, paths without a trailing `/`
    // (the walk never makes one).
    let cases = [
        ("**", "file", true),
        ("**/", "file", true),
        ("**", "dir/file", true),
        ("**/", "dir/file", true),
        ("**/**", "dir/file", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/dir2/file", true),
        ("**/dir", "dir", true),
        ("**/dir", "dir/file", true),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("**file", "file", true),
        ("**file", "dir/file", true),
        ("**/file", "dir/file", true),
        ("**file", "dir/dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file*", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/file*.txt", "dir/dir/file.txt", true),
        ("**/file*.txt*", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc.def", "abcZdef", false),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("a\\\\", "a\\", true),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def", true),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        // `*` and `?` stop at `/`; a match of a parent directory excludes what is under it.
        ("*", "fileutils.go", true),
        ("*.go", "pkg/fileutils.go", false),
        ("pkg", "pkg/deep/file.go", true),
        ("*/temp*", "somedir/temporary.txt", true),
        ("*/temp*", "somedir/sub/temporary.txt", false),
        ("*/temp*", "somedir/temp/inside.txt", true),
        ("*/temp*", "temporary.txt", false),
        ("temp?", "temp1", true),
        ("temp?", "temp12", false),
    ];
    for (pattern, path, excluded) in cases {
        assert_eq!(
            rules(&[pattern]).excludes(path),
            excluded,
            "pattern {pattern:?}, path {path:?}"
        );
    }
}

#[test]
fn the_last_matching_line_wins() {
    let cases: [(&[&str], &str, bool); 9] = [
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (&["**", "!dist/*.whl"], "dist/a-1.0-py3-none-any.whl", false),
        (&["!fileutils.go", "*.go"], "fileutils.go", true),
        (&["*.go", "!fileutils.go"], "fileutils.go", false),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/other.md", true),
    ];
    for (lines, path, excluded) in cases {
        assert_eq!(rules(lines).excludes(path), excluded, "{lines:?}, {path:?}");
    }
    assert!(!rules(&["*.go"]).excludes("."), "the context itself stays");
    assert!(!DockerIgnore::default().excludes("any/path"));
}

#[test]
fn lines_are_read_as_docker_reads_them() {
    let text = "\u{feff}test1\n/test2\n/a/file/here\n\nlastfile\n# a comment\n \
                # not a comment\n! /inverted/abs/path\n  ./spaced/../dir/  \r\n";
    let ignore = DockerIgnore::parse(text, ".dockerignore").unwrap();
    assert_eq!(
        ignore.buildah_file(),
        "test1\ntest2\na/file/here\nlastfile\n\\# not a comment\n!inverted/abs/path\ndir\n.git\n"
    );
    for path in ["test1", "test2", "a/file/here/x", "dir", "# not a comment"] {
        assert!(ignore.excludes(path), "{path}");
    }
    assert!(!ignore.excludes("a/file"));
    assert!(!ignore.excludes("# a comment"), "a comment in column one");
}

#[test]
fn patterns_docker_refuses_are_refused_with_their_line() {
    for (text, line) in [
        ("ok\n!\n", 2),
        ("!  \n", 1),
        ("[", 1),
        ("a\n[a-", 2),
        ("x[]", 1),
        ("x[a-]", 1),
        ("x[^]", 1),
        ("trailing\\", 1),
        ("a[z-b]", 1),
    ] {
        let err = DockerIgnore::parse(text, "app/.dockerignore").unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("app/.dockerignore line {line}: ")),
            "{text:?}: {shown}"
        );
    }
    // Valid, if odd: a lone `]` is a literal; an escaped `-` is a bound.
    assert!(rules(&["a]"]).excludes("a]"));
    assert!(rules(&["[\\-]x"]).excludes("-x"));
}

#[test]
fn keeping_adds_exceptions_only_for_what_is_excluded() {
    let ignore = rules(&["*", "!app.py"]);
    let kept = ignore.keeping(&[".dockerignore", "Dockerfile"]);
    assert!(!kept.excludes(".dockerignore") && !kept.excludes("Dockerfile"));
    assert!(kept.excludes("other"));
    assert_eq!(kept.rules.len(), 4);
    let untouched = rules(&["secret"]).keeping(&[".dockerignore", "Dockerfile"]);
    assert_eq!(untouched.rules.len(), 1);
}

fn tree(files: &[&str]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "slipway-ignore-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    for name in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, name).unwrap();
    }
    dir
}

fn walked(dir: &Path, ignore: &DockerIgnore) -> Vec<String> {
    walk(dir, ignore)
        .unwrap()
        .into_iter()
        .map(|(p, kind)| match kind {
            Kind::Dir => format!("{p}/"),
            Kind::Other => p,
        })
        .collect()
}

#[test]
fn the_walk_leaves_out_what_is_excluded_and_follows_no_link() {
    let dir = tree(&[
        ".git/config",
        "Dockerfile",
        "app.py",
        "secret.env",
        "docs/guide.md",
        "docs/keep.md",
        "sub/.git/kept",
        "sub/cache/a.bin",
        "build/out/x.o",
        "build/out/keep/y.o",
    ]);
    let outside = tree(&["private.key"]);
    std::os::unix::fs::symlink(&outside, dir.join("linked")).unwrap();
    std::os::unix::fs::symlink("app.py", dir.join("alias.py")).unwrap();
    let ignore = rules(&[
        "# build outputs",
        "secret*",
        "docs",
        "!docs/keep.md",
        "**/cache",
        "build",
        "!**/keep",
    ]);
    assert_eq!(
        walked(&dir, &ignore),
        [
            "Dockerfile",
            "alias.py",
            "app.py",
            // Docker walks into `docs` for the exception, without sending `docs` itself.
            "docs/keep.md",
            // A link to a directory is a link: nothing behind it is listed.
            "linked",
            "sub/",
            "sub/.git/",
            "sub/.git/kept",
        ],
        "`.git` at the root left out; `!**/keep` does not reopen `build` (nor does it in Docker)"
    );
    // Everything but the Dockerfile, which the engine needs.
    let all = rules(&["*"]).keeping(&[FILE, "Dockerfile"]);
    assert_eq!(walked(&dir, &all), ["Dockerfile"]);
    assert_eq!(walked(&dir, &DockerIgnore::default()).len(), 18);
}

#[test]
fn the_file_is_read_from_the_context_and_must_stay_inside_the_source() {
    let root = tree(&["app/.dockerignore", "elsewhere/x"])
        .canonicalize()
        .unwrap();
    std::fs::write(root.join("app/.dockerignore"), "*.log\n").unwrap();
    let read = DockerIgnore::read(&root, &root.join("app"), 1024).unwrap();
    assert!(read.excludes("a.log") && !read.excludes("a.py"));
    let none = DockerIgnore::read(&root, &root.join("elsewhere"), 1024).unwrap();
    assert!(none.rules.is_empty(), "no file, no rules");
    let outside = tree(&["secret"]);
    std::os::unix::fs::symlink(outside.join("secret"), root.join(".dockerignore")).unwrap();
    let err = DockerIgnore::read(&root, &root, 1024).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(".dockerignore must be a regular file"),
        "{err}"
    );
    std::fs::write(root.join("app/.dockerignore"), "x\n".repeat(600)).unwrap();
    let err = DockerIgnore::read(&root, &root.join("app"), 1024).unwrap_err();
    assert!(
        err.to_string().starts_with("app/.dockerignore must be"),
        "{err}"
    );
}
