//! A call as the client describes it (route, path parameters, query, JSON body) and
//! the one place its URL is built from the route table. Below both the HTTP transport
//! and the decision stream, so neither imports the other for it.

use quorate_proto::routes::RouteId;
use reqwest::Url;

use crate::error::Error;

/// A call to make: which route, with what.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    pub route: RouteId,
    /// Values of the route's `{param}` segments, in order, not encoded.
    pub params: &'a [&'a str],
    /// Query pairs, not encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// JSON body, already serialized.
    pub body: Option<Vec<u8>>,
}

impl<'a> Request<'a> {
    pub fn new(route: RouteId) -> Self {
        Self {
            route,
            params: &[],
            query: &[],
            body: None,
        }
    }

    pub fn params(mut self, params: &'a [&'a str]) -> Self {
        self.params = params;
        self
    }

    pub fn query(mut self, query: &'a [(&'a str, &'a str)]) -> Self {
        self.query = query;
        self
    }

    pub fn json<B: serde::Serialize + ?Sized>(mut self, body: &B) -> Result<Self, Error> {
        self.body = Some(serde_json::to_vec(body).map_err(|e| Error::Decode(e.to_string()))?);
        Ok(self)
    }
}

/// `base` + the route's path with `params` filled in + `query`. The only URL builder.
pub(crate) fn url(base: &Url, req: &Request<'_>) -> Result<Url, Error> {
    let segments = req
        .route
        .route()
        .segments(req.params)
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::Config(format!("node address {base} cannot be a base URL")))?
        .pop_if_empty()
        .extend(segments);
    url.set_query(None);
    if !req.query.is_empty() {
        url.query_pairs_mut().extend_pairs(req.query);
    }
    Ok(url)
}
