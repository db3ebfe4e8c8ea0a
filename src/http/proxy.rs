//! Proxy selection: which proxy (if any) a URL goes through.
//!
//! `HTTPS_PROXY` serves `https://` URLs, `HTTP_PROXY` serves `http://` URLs, and `NO_PROXY` lists hosts
//! that are always reached directly. Pure: the settings are values, the decision is a function.

/// Proxy settings, usually from `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` (either case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy for `http://` URLs (`HTTP_PROXY`).
    pub http: Option<String>,
    /// Proxy for `https://` URLs (`HTTPS_PROXY`).
    pub https: Option<String>,
    /// Hosts reached directly (`NO_PROXY`): comma-separated names, `.suffix` or `*.suffix` for
    /// subdomains, IP addresses, optional `:port`, or `*` for everything.
    pub no_proxy: NoProxy,
}

/// Which way a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct,
    /// Through `HTTP_PROXY`.
    HttpProxy,
    /// Through `HTTPS_PROXY`.
    HttpsProxy,
}

impl ProxySettings {
    /// Decides how to reach `url`.
    pub fn route(&self, url: &str) -> Route {
        let Some((scheme, host, port)) = split_url(url) else {
            return Route::Direct;
        };
        if self.no_proxy.matches(&host, port) {
            return Route::Direct;
        }
        match scheme.as_str() {
            "https" if self.https.is_some() => Route::HttpsProxy,
            "http" if self.http.is_some() => Route::HttpProxy,
            _ => Route::Direct,
        }
    }
}

/// A parsed `NO_PROXY` list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<NoProxyEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NoProxyEntry {
    All,
    /// A host name or address; `subdomains` also matches `*.host`.
    Host {
        host: String,
        port: Option<u16>,
        subdomains: bool,
        exact: bool,
    },
}

impl NoProxy {
    /// Parses a comma-separated `NO_PROXY` value; empty items are ignored.
    pub fn parse(value: &str) -> NoProxy {
        let entries = value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                if item == "*" {
                    return NoProxyEntry::All;
                }
                let (item, port) = split_host_port(item);
                let lower = item.to_ascii_lowercase();
                if let Some(rest) = lower.strip_prefix("*.") {
                    NoProxyEntry::Host {
                        host: rest.to_string(),
                        port,
                        subdomains: true,
                        exact: false,
                    }
                } else if let Some(rest) = lower.strip_prefix('.') {
                    NoProxyEntry::Host {
                        host: rest.to_string(),
                        port,
                        subdomains: true,
                        exact: false,
                    }
                } else {
                    // A bare name matches itself and its subdomains (curl's behaviour).
                    NoProxyEntry::Host {
                        host: lower,
                        port,
                        subdomains: true,
                        exact: true,
                    }
                }
            })
            .collect();
        NoProxy { entries }
    }

    /// Whether `host` (lower-case, brackets stripped) on `port` bypasses the proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.entries.iter().any(|entry| match entry {
            NoProxyEntry::All => true,
            NoProxyEntry::Host {
                host: pattern,
                port: pattern_port,
                subdomains,
                exact,
            } => {
                if pattern_port.is_some_and(|p| p != port) {
                    return false;
                }
                (*exact && host == *pattern)
                    || (*subdomains && host.ends_with(&format!(".{pattern}")))
            }
        })
    }
}

fn split_host_port(item: &str) -> (&str, Option<u16>) {
    if let Some(rest) = item.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host, port);
        }
    }
    match item.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (item, None),
        },
        _ => (item, None),
    }
}

/// Splits `scheme://[user@]host[:port]/...` into its scheme, host and effective port.
pub fn split_url(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_host_port(authority);
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    if host.is_empty() {
        return None;
    }
    Some((
        scheme,
        host.to_ascii_lowercase(),
        port.unwrap_or(default_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(no_proxy: &str) -> ProxySettings {
        ProxySettings {
            http: Some("http://proxy:3128".into()),
            https: Some("http://proxy:3129".into()),
            no_proxy: NoProxy::parse(no_proxy),
        }
    }

    #[test]
    fn routes() {
        let cases = [
            ("", "https://acme.scalr.io/api", Route::HttpsProxy),
            ("", "http://acme.scalr.io/api", Route::HttpProxy),
            ("*", "https://acme.scalr.io/api", Route::Direct),
            ("scalr.io", "https://acme.scalr.io/api", Route::Direct),
            ("scalr.io", "https://scalr.io/", Route::Direct),
            (".scalr.io", "https://scalr.io/", Route::HttpsProxy),
            ("*.scalr.io", "https://a.b.scalr.io/", Route::Direct),
            ("notscalr.io", "https://scalr.io/", Route::HttpsProxy),
            ("10.0.0.1", "https://10.0.0.1:6443/api", Route::Direct),
            ("kubernetes:6443", "https://kubernetes:6443/", Route::Direct),
            (
                "kubernetes:6443",
                "https://kubernetes:443/",
                Route::HttpsProxy,
            ),
            ("[::1]", "https://[::1]:8443/x", Route::Direct),
            (" , localhost ,", "http://LOCALHOST:80/", Route::Direct),
        ];
        for (no_proxy, url, want) in cases {
            assert_eq!(
                settings(no_proxy).route(url),
                want,
                "NO_PROXY={no_proxy:?} {url}"
            );
        }
        assert_eq!(ProxySettings::default().route("https://x/"), Route::Direct);
    }

    #[test]
    fn split_url_handles_ports_userinfo_and_ipv6() {
        assert_eq!(
            split_url("https://u:p@Host.Example:8443/p?q"),
            Some(("https".into(), "host.example".into(), 8443))
        );
        assert_eq!(
            split_url("http://[::1]/"),
            Some(("http".into(), "::1".into(), 80))
        );
        assert_eq!(split_url("ftp://x/"), None);
        assert_eq!(split_url("nourl"), None);
    }
}
