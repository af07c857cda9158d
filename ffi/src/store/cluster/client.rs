//! Talking to etcd: connecting to the members, the typed errors etcd's
//! failures mean, and which failures are worth retrying before a deadline.

use crate::error::KernelError;
use crate::proto::ErrorCode;
use etcd_client::{Client, ConnectOptions, Error};
use std::time::Duration;

/// Largest gRPC message read from etcd (a page of the snapshot, a watch
/// response of one big transaction): above etcd's 1.5 MiB request limit.
pub const MAX_DECODING_BYTES: usize = 64 << 20;

/// `http://host:port` for each endpoint (`host:port` is accepted).
pub fn endpoint_urls(endpoints: &[String]) -> Result<Vec<String>, KernelError> {
    if endpoints.is_empty() {
        return Err(KernelError::invalid_argument(
            "store.cluster.endpoints needs at least one etcd member (\"host:port\")",
        )
        .with_detail("field", "store.cluster.endpoints"));
    }
    endpoints
        .iter()
        .map(|endpoint| {
            if endpoint.starts_with("https://") {
                return Err(KernelError::new(
                    ErrorCode::Unsupported,
                    format!("{endpoint}: TLS to etcd is not supported yet; use plain http:// members on a private network"),
                )
                .with_detail("field", "store.cluster.endpoints"));
            }
            let url = if endpoint.starts_with("http://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            if url.len() <= "http://".len() || url[7..].contains('/') {
                return Err(KernelError::invalid_argument(format!(
                    "store.cluster.endpoints: {endpoint:?} is not \"host:port\""
                ))
                .with_detail("field", "store.cluster.endpoints"));
            }
            Ok(url)
        })
        .collect()
}

/// A client of the members (connections are made lazily, per request).
pub async fn connect(urls: &[String]) -> Result<Client, Error> {
    Client::connect(
        urls,
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                // A member that stops answering (SIGSTOP, a partition) is
                // noticed in ~2 s instead of at TCP's pace.
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
                .with_keep_alive_while_idle(true),
        ),
    )
    .await
}

/// Failures that say nothing about the request itself: a member down, no
/// leader, a leader change, a timeout. The request may or may not have been
/// applied (callers that retry make that safe).
pub fn retryable(error: &Error) -> bool {
    // gRPC codes: CANCELLED 1, UNKNOWN 2, DEADLINE_EXCEEDED 4, ABORTED 10, UNAVAILABLE 14.
    match error {
        Error::TransportError(_) | Error::IoError(_) => true,
        Error::GRpcStatus(status) => matches!(status.code() as i32, 1 | 2 | 4 | 10 | 14),
        _ => false,
    }
}

/// The typed error an etcd failure means, naming `what` was attempted.
pub fn etcd_error(what: &str, endpoints: &[String], error: &Error) -> KernelError {
    let message = match error {
        Error::GRpcStatus(status) => status.message().to_owned(),
        other => other.to_string(),
    };
    if message.contains("too many operations in txn request") {
        return KernelError::invalid_argument(format!(
            "{what}: the cluster refused the transaction: {message} (its --max-txn-ops is lower than store.cluster.maxTxnOps)"
        ))
        .with_detail("reason", "too_many_ops");
    }
    if message.contains("request is too large") || message.contains("message larger than max") {
        return KernelError::invalid_argument(format!(
            "{what}: the cluster refused the transaction: {message} (its --max-request-bytes is lower than store.cluster.maxRequestBytes)"
        ))
        .with_detail("reason", "request_too_large");
    }
    if message.contains("database space exceeded") {
        return KernelError::new(
            ErrorCode::ResourceExhausted,
            format!("{what}: the cluster is out of space ({message}); compact and defragment it, or raise its --quota-backend-bytes"),
        );
    }
    connection_error(what, endpoints, &message)
}

/// `CONNECTION`: the cluster could not be reached (or did not answer) in time.
pub fn connection_error(what: &str, endpoints: &[String], cause: &str) -> KernelError {
    KernelError::new(
        ErrorCode::Connection,
        format!(
            "{what}: the etcd cluster ({}) did not answer in time: {cause}",
            endpoints.join(", ")
        ),
    )
    .with_detail("endpoints", endpoints.join(","))
    .with_detail("reason", "cluster_unreachable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_http_urls_and_bad_ones_are_refused() {
        let urls = endpoint_urls(&["127.0.0.1:2379".into(), "http://h:1".into()]).unwrap();
        assert_eq!(urls, ["http://127.0.0.1:2379", "http://h:1"]);
        assert_eq!(
            endpoint_urls(&[]).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            endpoint_urls(&["https://h:1".into()]).unwrap_err().code,
            ErrorCode::Unsupported
        );
        assert!(endpoint_urls(&["h:1/path".into()]).is_err());
    }
}
