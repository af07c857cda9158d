//! The route table: which native action (or JS) answers a request. Pure
//! data and matching, no I/O, so it is unit-tested without sockets.

use crate::error::{KernelError, KernelResult};
use crate::proto::{http_route, HttpMatch, HttpRoute};

/// What a route matches; every `Some` field must match.
#[derive(Debug, Default, Clone)]
pub struct Matcher {
    /// Any of these methods (upper case); empty = any method.
    methods: Vec<String>,
    /// Host without port, lower case.
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
}

impl Matcher {
    pub fn from_proto(proto: Option<&HttpMatch>, index: usize) -> KernelResult<Matcher> {
        let Some(proto) = proto else {
            return Ok(Matcher::default());
        };
        let field = |name: &str| format!("routes[{index}].match.{name}");
        for method in &proto.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                return Err(KernelError::invalid_argument(format!(
                    "{} must hold upper-case method names, got {method:?}",
                    field("methods")
                ))
                .with_detail("field", field("methods")));
            }
        }
        for (name, value) in [("path", &proto.path), ("pathPrefix", &proto.path_prefix)] {
            if !value.is_empty() && !value.starts_with('/') {
                return Err(KernelError::invalid_argument(format!(
                    "{} must start with '/', got {value:?}",
                    field(name)
                ))
                .with_detail("field", field(name)));
            }
        }
        let host = &proto.host;
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(KernelError::invalid_argument(format!(
                "{} must be a host name without a port, got {host:?}",
                field("host")
            ))
            .with_detail("field", field("host")));
        }
        let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_string());
        Ok(Matcher {
            methods: proto.methods.clone(),
            host: non_empty(&proto.host.to_ascii_lowercase()),
            path: non_empty(&proto.path),
            path_prefix: non_empty(&proto.path_prefix),
        })
    }

    /// `host` is the request's host without port, in any case.
    pub fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self
                .host
                .as_deref()
                .is_none_or(|want| want.eq_ignore_ascii_case(host))
            && self.path.as_deref().is_none_or(|want| want == path)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
    }
}

/// A route's action, by index into the server's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `responses[i]`.
    Respond(usize),
    /// `pools[i]`.
    Proxy(usize),
    /// The JS handler.
    Js,
    /// No route and no handler.
    NotFound,
}

pub struct RouteTable {
    routes: Vec<(Matcher, Action)>,
    fallback: Action,
}

impl RouteTable {
    /// Builds the table; `respond`/`proxy` indices count those actions in order.
    pub fn new(routes: &[HttpRoute], js_handler: bool) -> KernelResult<RouteTable> {
        let mut table = Vec::with_capacity(routes.len());
        let (mut responds, mut proxies) = (0, 0);
        for (index, route) in routes.iter().enumerate() {
            let matcher = Matcher::from_proto(route.r#match.as_ref(), index)?;
            let action = match &route.action {
                Some(http_route::Action::Respond(_)) => {
                    responds += 1;
                    Action::Respond(responds - 1)
                }
                Some(http_route::Action::Proxy(_)) => {
                    proxies += 1;
                    Action::Proxy(proxies - 1)
                }
                None => {
                    return Err(KernelError::invalid_argument(format!(
                        "routes[{index}] needs respond or proxy"
                    ))
                    .with_detail("field", format!("routes[{index}]")))
                }
            };
            table.push((matcher, action));
        }
        Ok(RouteTable {
            routes: table,
            fallback: if js_handler {
                Action::Js
            } else {
                Action::NotFound
            },
        })
    }

    pub fn route(&self, method: &str, host: &str, path: &str) -> Action {
        self.routes
            .iter()
            .find(|(matcher, _)| matcher.matches(method, host, path))
            .map_or(self.fallback, |(_, action)| *action)
    }
}

/// The host of a `Host`/`:authority` value, without port (IPv6 brackets kept).
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{HttpProxy, HttpRespond};

    fn route(m: HttpMatch, proxy: bool) -> HttpRoute {
        HttpRoute {
            r#match: Some(m),
            action: Some(if proxy {
                http_route::Action::Proxy(HttpProxy::default())
            } else {
                http_route::Action::Respond(HttpRespond::default())
            }),
        }
    }

    #[test]
    fn first_match_wins_and_falls_back() {
        let routes = [
            route(
                HttpMatch {
                    path: "/health".into(),
                    ..Default::default()
                },
                false,
            ),
            route(
                HttpMatch {
                    path_prefix: "/api/".into(),
                    methods: vec!["GET".into(), "POST".into()],
                    host: "API.local".into(),
                    ..Default::default()
                },
                true,
            ),
            route(
                HttpMatch {
                    path_prefix: "/".into(),
                    methods: vec!["DELETE".into()],
                    ..Default::default()
                },
                false,
            ),
        ];
        let table = RouteTable::new(&routes, true).unwrap();
        assert_eq!(table.route("GET", "x", "/health"), Action::Respond(0));
        assert_eq!(table.route("GET", "x", "/health/"), Action::Js);
        assert_eq!(
            table.route("POST", "api.LOCAL", "/api/v1"),
            Action::Proxy(0)
        );
        assert_eq!(table.route("PUT", "api.local", "/api/v1"), Action::Js);
        assert_eq!(table.route("GET", "other", "/api/v1"), Action::Js);
        assert_eq!(table.route("DELETE", "other", "/x"), Action::Respond(1));
        let table = RouteTable::new(&routes, false).unwrap();
        assert_eq!(table.route("GET", "x", "/nope"), Action::NotFound);
    }

    #[test]
    fn bad_matchers_name_their_field() {
        let bad = route(
            HttpMatch {
                path: "health".into(),
                ..Default::default()
            },
            false,
        );
        let error = RouteTable::new(&[bad], false).err().unwrap();
        assert_eq!(error.details.get("field").unwrap(), "routes[0].match.path");
        let bad = route(
            HttpMatch {
                methods: vec!["get".into()],
                ..Default::default()
            },
            false,
        );
        let error = RouteTable::new(&[bad], false).err().unwrap();
        assert_eq!(
            error.details.get("field").unwrap(),
            "routes[0].match.methods"
        );
    }

    #[test]
    fn a_host_with_a_port_is_refused() {
        let bad = route(
            HttpMatch {
                host: "a.local:8080".into(),
                ..Default::default()
            },
            false,
        );
        let error = RouteTable::new(&[bad], false).err().unwrap();
        assert_eq!(error.details.get("field").unwrap(), "routes[0].match.host");
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
