//! Bounded output lines. Build commands are other teams' code: a line may be megabytes long or
//! never end. [`LineCutter`] splits a byte stream into lines while keeping at most `max` bytes
//! of each (the rest is counted, not kept), so an endless line costs a bounded buffer; what was
//! cut is said at the end of the line (`… [line truncated: N bytes]`, N the line's whole size).

use std::borrow::Cow;

/// The end of a cut line, saying how long it was.
pub fn marker(len: usize) -> String {
    format!("… [line truncated: {len} bytes]")
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` without the marker it ends with (a line cut before), and that marker.
fn split_marker(text: &str) -> (&str, Option<&str>) {
    if let Some(at) = text.rfind("… [line truncated: ") {
        let tail = &text[at..];
        let digits = tail
            .strip_prefix("… [line truncated: ")
            .and_then(|r| r.strip_suffix(" bytes]"));
        if digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
            return (&text[..at], Some(tail));
        }
    }
    (text, None)
}

/// `text`, or its first `max` bytes and the marker when it is longer. A line cut before keeps
/// its first marker: the size it tells is the size of what the command printed.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    match split_marker(text) {
        (body, Some(first)) => Cow::Owned(format!("{}{first}", prefix(body, max))),
        (_, None) => Cow::Owned(format!("{}{}", prefix(text, max), marker(text.len()))),
    }
}

/// Splits bytes into lines of at most `max` kept bytes (see the module docs).
#[derive(Debug)]
pub struct LineCutter {
    max: usize,
    /// The kept start of the current line (never more than `max` bytes).
    kept: Vec<u8>,
    /// The current line's whole length so far (kept or not).
    len: usize,
}

impl LineCutter {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            kept: Vec::new(),
            len: 0,
        }
    }

    /// Takes `bytes`, appending every line they complete to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            let (part, complete) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            let room = self.max.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&part[..part.len().min(room)]);
            self.len += part.len();
            match complete {
                Some(next) => {
                    out.push(self.take());
                    bytes = &bytes[next..];
                }
                None => break,
            }
        }
    }

    /// The unfinished last line, if any (the stream ended without a newline).
    pub fn finish(&mut self) -> Option<String> {
        (self.len > 0).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut len = self.len;
        if self.kept.last() == Some(&b'\r') && len == self.kept.len() {
            self.kept.pop();
            len -= 1;
        }
        // Bytes, not `lines()`: output that is not UTF-8 must not end the capture.
        let text = String::from_utf8_lossy(&self.kept);
        let line = if len > self.kept.len() {
            // Cut inside a character leaves a replacement character; the count stays exact.
            format!("{text}{}", marker(len))
        } else {
            text.into_owned()
        };
        self.kept.clear();
        self.len = 0;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut cutter = LineCutter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            cutter.feed(c, &mut out);
        }
        out.extend(cutter.finish());
        out
    }

    #[test]
    fn short_lines_pass_whole_across_chunks() {
        assert_eq!(
            lines(16, &[b"ab", b"c\r\nde", b"f\n\ng"]),
            ["abc", "def", "", "g"]
        );
    }

    #[test]
    fn long_lines_are_cut_and_say_how_long_they_were() {
        let long = [b'x'; 100];
        let out = lines(10, &[&long[..40], &long[40..], b"\nok\n"]);
        assert_eq!(out, [format!("xxxxxxxxxx{}", marker(100)), "ok".to_owned()]);
    }

    #[test]
    fn an_endless_line_keeps_a_bounded_buffer() {
        let mut cutter = LineCutter::new(8);
        let mut out = Vec::new();
        let chunk = [b'y'; 4096];
        for _ in 0..1000 {
            cutter.feed(&chunk, &mut out);
            assert!(cutter.kept.len() <= 8);
        }
        assert!(out.is_empty());
        assert_eq!(
            cutter.finish().unwrap(),
            format!("yyyyyyyy{}", marker(4_096_000))
        );
        assert_eq!(cutter.finish(), None);
    }

    #[test]
    fn cutting_again_keeps_the_first_size() {
        let once = cut(&"z".repeat(5000), 100).into_owned();
        assert_eq!(cut(&once, 10), format!("zzzzzzzzzz{}", marker(5000)));
        let fake = format!("{}… [line truncated: many bytes]", "w".repeat(50));
        assert!(cut(&fake, 10).ends_with(&marker(fake.len())));
    }

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 2), format!("h{}", marker(6)));
    }
}
