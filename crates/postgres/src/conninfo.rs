//! The connection parameters factstore reads itself before tokio-postgres parses the rest:
//! `sslmode` (tokio-postgres refuses `verify-ca` and `verify-full`) and `sslrootcert` (which
//! it does not know). Both forms of libpq's connection string are read: the URL
//! (`postgres://…?sslmode=verify-full&sslrootcert=/etc/ca.pem`) and `key=value` pairs
//! (`host=db sslmode=verify-full sslrootcert='/etc/ca.pem'`).

use crate::PgError;

/// A connection string without its TLS parameters, and those parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// What is left for tokio-postgres.
    pub rest: String,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

/// The parameters taken out of the string.
const TAKEN: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `text` into the TLS parameters and the rest. A parameter given twice counts once,
/// with its last value (as libpq).
pub fn take_tls_params(text: &str) -> Result<ConnInfo, PgError> {
    let mut info = ConnInfo {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    let mut kept = Vec::new();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => info.sslmode = Some(value),
        _ => info.sslrootcert = Some(value),
    };
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let (base, query) = match text.split_once('?') {
            Some((base, query)) => (base, query),
            None => (text, ""),
        };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            if TAKEN.contains(&key.as_str()) {
                take(&key, percent_decode(value)?);
            } else {
                kept.push(pair);
            }
        }
        info.rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
    } else {
        for (key, value, raw) in key_values(text)? {
            if TAKEN.contains(&key.as_str()) {
                take(&key, value);
            } else {
                kept.push(raw);
            }
        }
        info.rest = kept.join(" ");
    }
    Ok(info)
}

/// `%XX` escapes decoded, as in a URL's query; `+` is kept (libpq does not read it as a space).
fn percent_decode(text: &str) -> Result<String, PgError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| PgError::Config(format!("bad %-escape in the PostgreSQL URL: '{text}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| PgError::Config(format!("the PostgreSQL URL has bad UTF-8 in '{text}'")))
}

/// The `key = value` pairs of a libpq key/value string, each with its text as written.
/// Values are bare (up to whitespace) or single-quoted; a backslash escapes the next
/// character in both.
fn key_values(text: &str) -> Result<Vec<(String, String, &str)>, PgError> {
    let bad = |why: &str| PgError::Config(format!("bad PostgreSQL connection string: {why}"));
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |&(o, _)| o);
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            return Ok(pairs);
        }
        let start = i;
        while at(i).is_some_and(|c| c != '=' && !c.is_whitespace()) {
            i += 1;
        }
        let key = text[offset(start)..offset(i)].to_owned();
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(bad(&format!("'{key}' has no '='")));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => return Err(bad(&format!("the value of '{key}' has no closing quote"))),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if at(i + 1).is_some() => {
                        value.extend(at(i + 1));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' && at(i + 1).is_some() {
                    value.extend(at(i + 1));
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push((key, value, &text[offset(start)..offset(i)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> ConnInfo {
        take_tls_params(text).expect("parses")
    }

    #[test]
    fn urls_give_up_their_tls_parameters_and_keep_the_rest() {
        let got =
            info("postgres://u@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(got.rest, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(got.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(got.sslrootcert.as_deref(), Some("/etc/ca.pem"));

        let got = info("postgresql://h/db?sslmode=require");
        assert_eq!(got.rest, "postgresql://h/db");
        assert_eq!(got.sslmode.as_deref(), Some("require"));
        assert_eq!(got.sslrootcert, None);

        let got = info("postgres://h/db");
        assert_eq!(got.rest, "postgres://h/db");
        assert_eq!((got.sslmode, got.sslrootcert), (None, None));

        assert!(take_tls_params("postgres://h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn key_value_strings_give_up_their_tls_parameters_and_keep_the_rest() {
        let got = info("host=h  user=u sslmode = verify-ca sslrootcert='/my certs/ca.pem' dbname=d");
        assert_eq!(got.rest, "host=h user=u dbname=d");
        assert_eq!(got.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(got.sslrootcert.as_deref(), Some("/my certs/ca.pem"));

        let got = info(r"password='it\'s' sslrootcert=/a\ b.pem");
        assert_eq!(got.rest, r"password='it\'s'");
        assert_eq!(got.sslrootcert.as_deref(), Some("/a b.pem"));

        assert!(take_tls_params("host=h sslmode").is_err());
        assert!(take_tls_params("sslrootcert='/open").is_err());
    }
}
