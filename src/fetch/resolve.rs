//! The guarded DNS resolver: one lookup, every answer checked, connections pinned to checked addresses.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{address_allowed, FetchError};

/// Refusal raised inside [`GuardedResolver`]; carried through reqwest's error chain and
/// recovered as the typed [`FetchError`].
#[derive(Debug)]
pub(super) struct GuardError(pub(super) FetchError);

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for GuardError {}

/// The DNS resolver reqwest connects through: it resolves a name once (the system resolver, or a
/// static test map) and refuses the whole answer if any address is not allowed, so every
/// connection goes to a checked address.
pub(super) struct GuardedResolver {
    /// `allow_private_networks`: private addresses pass (metadata and the like never do).
    pub(super) allow_private: bool,
    /// Test answers by lower-case name, checked like real DNS answers.
    pub(super) overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let allow_private = self.allow_private;
        let overrides = self.overrides.clone();
        Box::pin(async move {
            let addrs = resolve_checked(&host, allow_private, &overrides)
                .await
                .map_err(|e| Box::new(GuardError(e)) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolves `host` and checks every address; port 0 (reqwest fills in the URL's port).
async fn resolve_checked(host: &str, allow_private: bool, overrides: &HashMap<String, Vec<IpAddr>>) -> Result<Vec<SocketAddr>, FetchError> {
    let ips: Vec<IpAddr> = match overrides.get(host) {
        Some(ips) => ips.clone(),
        None => tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| FetchError::Dns { host: host.to_string(), message: e.to_string() })?
            .map(|sa| sa.ip())
            .collect(),
    };
    if ips.is_empty() {
        return Err(FetchError::Dns { host: host.to_string(), message: "no addresses".into() });
    }
    for ip in &ips {
        if let Err(reason) = address_allowed(*ip, allow_private) {
            return Err(FetchError::Blocked { host: host.to_string(), addr: *ip, reason });
        }
    }
    Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
}
