//! Reads `.terraform.lock.hcl`: the providers a run selected and the hashes Terraform verified.
//!
//! A small reader for the HCL subset Terraform writes there (`hclwrite` output): `provider
//! "<address>" { version = "...", constraints = "...", hashes = ["h1:...", "zh:..."] }`, with
//! `#`, `//` and `/* */` comments. Other blocks and attributes are skipped, so a newer Terraform
//! adding fields does not break it. Pure: text in, providers out.

/// One `provider` block of the lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedProvider {
    /// `hostname/namespace/type`, lower-case, e.g. `registry.terraform.io/hashicorp/null`.
    pub address: String,
    pub version: String,
    /// `h1:` and `zh:` hashes as written.
    pub hashes: Vec<String>,
}

impl LockedProvider {
    /// The `h1:` hashes (of unpacked packages, comparable with a directory).
    pub fn h1_hashes(&self) -> impl Iterator<Item = &str> {
        self.hashes
            .iter()
            .map(String::as_str)
            .filter(|h| h.starts_with("h1:"))
    }
}

/// Where and why the lock file could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockFileSyntax {
    pub line: usize,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, LockFileSyntax> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let fail = |line, detail: &str| LockFileSyntax {
        line,
        detail: detail.to_string(),
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'/') => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        Some('/') if prev == '*' => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            prev = c;
                        }
                        None => return Err(fail(line, "unterminated comment")),
                    }
                }
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c @ ('"' | '\\')) => s.push(c),
                            _ => return Err(fail(line, "unsupported escape in a string")),
                        },
                        Some('\n') | None => return Err(fail(line, "unterminated string")),
                        Some(c) => s.push(c),
                    }
                }
                tokens.push((line, Token::Str(s)));
            }
            '=' | '{' | '}' | '[' | ']' | ',' => tokens.push((line, Token::Punct(c))),
            _ => {
                let mut word = String::from(c);
                while let Some(c) = chars.next_if(|&c| {
                    !c.is_whitespace()
                        && !matches!(c, '=' | '{' | '}' | '[' | ']' | ',' | '"' | '#')
                }) {
                    word.push(c);
                }
                tokens.push((line, Token::Word(word)));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(1, |(l, _)| *l)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).map(|(_, t)| t.clone());
        self.at += 1;
        t
    }

    fn fail<T>(&self, detail: &str) -> Result<T, LockFileSyntax> {
        Err(LockFileSyntax {
            line: self.line(),
            detail: detail.to_string(),
        })
    }

    fn expect(&mut self, c: char) -> Result<(), LockFileSyntax> {
        match self.next() {
            Some(Token::Punct(p)) if p == c => Ok(()),
            _ => {
                self.at -= 1;
                self.fail(&format!("expected '{c}'"))
            }
        }
    }

    /// A value: a string, a word (number, bool), or a list of values. Strings are returned.
    fn value(&mut self) -> Result<Vec<String>, LockFileSyntax> {
        match self.next() {
            Some(Token::Str(s)) => Ok(vec![s]),
            Some(Token::Word(_)) => Ok(Vec::new()),
            Some(Token::Punct('[')) => {
                let mut out = Vec::new();
                loop {
                    if self.peek() == Some(&Token::Punct(']')) {
                        self.next();
                        return Ok(out);
                    }
                    out.extend(self.value()?);
                    match self.next() {
                        Some(Token::Punct(',')) => {}
                        Some(Token::Punct(']')) => return Ok(out),
                        _ => {
                            self.at -= 1;
                            return self.fail("expected ',' or ']' in a list");
                        }
                    }
                }
            }
            _ => {
                self.at -= 1;
                self.fail("expected a value")
            }
        }
    }

    /// A body up to and including its `}`: attributes (name → strings) of this level.
    fn body(&mut self) -> Result<Vec<(String, Vec<String>)>, LockFileSyntax> {
        let mut attrs = Vec::new();
        loop {
            match self.next() {
                Some(Token::Punct('}')) => return Ok(attrs),
                Some(Token::Word(name)) => {
                    if self.peek() == Some(&Token::Punct('=')) {
                        self.next();
                        attrs.push((name, self.value()?));
                    } else {
                        self.skip_block()?;
                    }
                }
                _ => {
                    self.at -= 1;
                    return self.fail("expected an attribute, a block or '}'");
                }
            }
        }
    }

    /// Labels and a body of a block we do not use.
    fn skip_block(&mut self) -> Result<(), LockFileSyntax> {
        while let Some(Token::Str(_)) = self.peek() {
            self.next();
        }
        self.expect('{')?;
        self.body().map(drop)
    }
}

/// Parses the lock file's text.
pub fn parse(text: &str) -> Result<Vec<LockedProvider>, LockFileSyntax> {
    let mut p = Parser {
        tokens: tokenize(text)?,
        at: 0,
    };
    let mut providers = Vec::new();
    while let Some(token) = p.next() {
        match token {
            Token::Word(kind) if kind == "provider" => {
                let Some(Token::Str(address)) = p.next() else {
                    p.at -= 1;
                    return p.fail("expected the provider's address after 'provider'");
                };
                p.expect('{')?;
                let attrs = p.body()?;
                let get = |name: &str| {
                    attrs
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let Some(version) = get("version").into_iter().next() else {
                    return p.fail(&format!("provider {address:?} has no version"));
                };
                providers.push(LockedProvider {
                    address: address.to_ascii_lowercase(),
                    version,
                    hashes: get("hashes"),
                });
            }
            Token::Word(_) => {
                if p.peek() == Some(&Token::Punct('=')) {
                    p.next();
                    p.value()?;
                } else {
                    p.skip_block()?;
                }
            }
            _ => {
                p.at -= 1;
                return p.fail("expected a block");
            }
        }
    }
    Ok(providers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = r#"# This file is maintained automatically by "terraform init".
# Manual edits may be lost in future updates.

provider "registry.terraform.io/hashicorp/aws" {
  version     = "5.31.0"
  constraints = ">= 4.0.0, ~> 5.0"
  hashes = [
    "h1:ltxyuBWIy9cq0kIKDJH1jeWJy/y7XJLjS4QrsQK4plA=",
    "zh:0cdb9c2083bf0902442384f7309367791e4640581652dda456f2d6d7abf0de8d",
  ]
}

provider "registry.terraform.io/hashicorp/null" {
  version = "2.1.2"
  hashes = [
    "h1:CFnENdqQu4g3LJNevA32aDxcUz2qGkRGQpFfkI8TCdE=",
  ]
}
"#;

    #[test]
    fn reads_what_terraform_writes() {
        let providers = parse(REAL).expect("parse");
        assert_eq!(providers.len(), 2);
        assert_eq!(providers[0].address, "registry.terraform.io/hashicorp/aws");
        assert_eq!(providers[0].version, "5.31.0");
        assert_eq!(providers[0].hashes.len(), 2);
        assert_eq!(
            providers[1].h1_hashes().collect::<Vec<_>>(),
            ["h1:CFnENdqQu4g3LJNevA32aDxcUz2qGkRGQpFfkI8TCdE="]
        );
    }

    #[test]
    fn skips_what_it_does_not_know_and_reports_lines() {
        let text = "future \"x\" { a = 1\n nested { b = [true, \"s\"] } }\n/* c\n */\n\
                    provider \"example.com/ns/t\" { version = \"1.0.0\" // note\n }\n";
        let providers = parse(text).expect("parse");
        assert_eq!(providers.len(), 1);
        assert!(providers[0].hashes.is_empty());

        let cases = [
            (
                "provider \"a/b/c\" {\n version = \"1\"\n hashes = [\"x\" \"y\"]\n}",
                3,
            ),
            ("provider \"a/b/c\" {\n hashes = []\n}", 3),
            ("provider {\n}", 1),
            ("provider \"a/b/c\" {\n version = \"1\n}", 2),
        ];
        for (text, line) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text}: {err:?}");
        }
    }
}
