//! The close handshake (docs/knul.md, "Close"): a graceful close ends only
//! when the peer confirmed it read up to the end of this side's stream, so
//! a clean result is a delivery guarantee.
//!
//! - [`close_gracefully`]: this side's close — drain the send ring, send
//!   `close`, wait (at most `CLOSE_TIMEOUT`) for the confirmation;
//! - [`supervise`]: the control stream's reader — answers pings, takes the
//!   peer's `close` or confirmation;
//! - `respond_to_close`: the peer's close — deliver everything it sent up to
//!   its stream's end, then confirm (with the count of packets this side
//!   dropped when both sides closed at once).

use super::codes::{CLOSE_PROTOCOL, FLAG_FINAL, FLAG_RELIABLE};
use super::control::{control_packet, read_control};
use super::errors::{connection_error, protocol_error, write_error};
use super::state::{Ended, Link, PeerClose};
use crate::error::{KernelError, KernelResult};
use crate::proto::ErrorCode;
use crate::transport::knul::Kind;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a close may take by default before it gives up and reports
/// that delivery was not confirmed (`link.close({ timeoutMs })` sets it).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one control packet write may take.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes one control packet, bounded in time (a peer that does not read
/// its control stream cannot hold a close forever).
async fn write_control(link: &Link, kind: Kind, flags: u16, payload: &[u8]) -> KernelResult<()> {
    let packet = control_packet(kind, flags, payload);
    let write = async {
        let mut send = link.control_send.lock().await;
        send.write_all(&packet).await.map_err(write_error)
    };
    tokio::time::timeout(CONTROL_WRITE_TIMEOUT, write)
        .await
        .map_err(|_| {
            KernelError::new(
                ErrorCode::Connection,
                "the peer does not read its control stream (a control packet waited 5 s)",
            )
        })?
}

/// A `close` payload: `[code u32]`, for a confirmation `[discarded u32]`,
/// then the UTF-8 reason (at most 1024 bytes).
fn close_payload(code: u32, discarded: Option<u32>, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(CLOSE_REASON_MAX_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_le_bytes().to_vec();
    if let Some(discarded) = discarded {
        payload.extend_from_slice(&discarded.to_le_bytes());
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Longest close reason, in bytes.
pub const CLOSE_REASON_MAX_BYTES: usize = 1024;

/// Reads a `close` payload: `[code u32]` (a confirmation: then
/// `[discarded u32]`), then a UTF-8 reason of at most 1024 bytes. Anything
/// else is a protocol error.
fn parse_close(payload: &[u8], last: bool) -> KernelResult<PeerClose> {
    let what = if last { "confirmation" } else { "close" };
    let fixed = if last { 8 } else { 4 };
    let word = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
    if payload.len() < fixed {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer's {what} has {} payload bytes (at least {fixed})",
                payload.len()
            ),
        ));
    }
    let reason = &payload[fixed..];
    if reason.len() > CLOSE_REASON_MAX_BYTES {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer's {what} reason has {} bytes (at most {CLOSE_REASON_MAX_BYTES})",
                reason.len()
            ),
        )
        .with_detail("field", "reason"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| {
        protocol_error(
            CLOSE_PROTOCOL,
            format!("the peer's {what} reason is not UTF-8"),
        )
        .with_detail("field", "reason")
    })?;
    Ok(PeerClose {
        code: word(0),
        reason: reason.to_owned(),
        last,
        discarded: if last { word(4) } else { 0 },
    })
}

/// Reads the control stream: answers pings, takes the peer's `close`, and
/// ends the link when the connection is lost.
pub async fn supervise(link: Arc<Link>, control: quinn::RecvStream) {
    read_control_stream(&link, control).await;
    link.control_exited.set();
    link.close_progress.notify_waiters();
}

async fn read_control_stream(link: &Arc<Link>, mut control: quinn::RecvStream) {
    loop {
        match read_control(&mut control).await {
            Ok((header, payload)) => match header.kind {
                Kind::Ping => {
                    // Answered only when the control stream is free: a peer
                    // that floods pings without reading pongs gets fewer.
                    if let Ok(mut send) = link.control_send.try_lock() {
                        let pong = control_packet(Kind::Pong, FLAG_RELIABLE, &payload);
                        let _ = tokio::time::timeout(CONTROL_WRITE_TIMEOUT, send.write_all(&pong))
                            .await;
                    }
                }
                Kind::Pong => {}
                Kind::Close => {
                    let close = match parse_close(&payload, header.flags & FLAG_FINAL != 0) {
                        Ok(close) => close,
                        Err(error) => return link.fail(error),
                    };
                    // A confirmation answers this side's close: legitimate once
                    // this side started closing (its close may still be on its way
                    // out when the peer's answer already arrives).
                    if close.last && !link.closing.load(Ordering::SeqCst) {
                        return link.fail(protocol_error(
                            CLOSE_PROTOCOL,
                            "the peer confirmed a close this side never sent".into(),
                        ));
                    }
                    let repeated = link
                        .lock_peer_close()
                        .as_ref()
                        .is_some_and(|earlier| !earlier.last && !close.last);
                    if repeated {
                        continue; // only the first close counts
                    }
                    let respond = (!close.last).then(|| (close.code, close.reason.clone()));
                    *link.lock_peer_close() = Some(close);
                    link.close_progress.notify_waiters();
                    if let Some((code, reason)) = respond {
                        link.responding.store(true, Ordering::SeqCst);
                        tokio::spawn(respond_to_close(Arc::clone(link), code, reason));
                    }
                }
                other => {
                    return link.fail(protocol_error(
                        CLOSE_PROTOCOL,
                        format!("the peer sent a {other:?} packet on the control stream"),
                    ))
                }
            },
            Err(error) if error.details.contains_key("endOfStream") => return,
            Err(error) if error.code == ErrorCode::Protocol => return link.fail(error),
            Err(error) => {
                // The connection is gone. The receive pump sees the same loss
                // and knows more (e.g. that it cut a packet short): let it
                // report first.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), link.receive_exited.wait()).await;
                return link.fail(error);
            }
        }
    }
}

/// The peer started closing (or both sides did): read everything it sent,
/// up to the end of its stream, then confirm with a final `close`. A peer
/// that started alone closes the connection once it has the confirmation.
async fn respond_to_close(link: Arc<Link>, code: u32, reason: String) {
    // As long as it takes: this side's JS decides how fast it reads (the
    // peer gives up after its own close timeout and closes the connection).
    tokio::select! {
        _ = link.receive_exited.wait() => {}
        lost = link.conn.closed() => {
            let error = connection_error(&lost);
            return link.end_with_error(error, true);
        }
    }
    if link.is_ended() {
        return;
    }
    let received = link
        .receive_outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or(Ok(()));
    if let Err(error) = received {
        // The peer's stream did not end cleanly (e.g. it gave up waiting and
        // closed the connection): packets were lost, whatever the code says.
        return link.end_with_error(error, true);
    }
    // The peer drops what this side still sends; stop sending.
    link.send_ring.close();
    // When this side closes too, its own `close` goes first.
    loop {
        let notified = link.close_progress.notified();
        if !link.closing.load(Ordering::SeqCst)
            || link.close_sent.load(Ordering::SeqCst)
            || link.is_ended()
        {
            break;
        }
        notified.await;
    }
    // Packets this side dropped unread: skipped after its own close, plus
    // reliable ones still in the ring (JS stopped reading when it closed;
    // the ring no longer moves on either side here).
    let mut discarded = link.counters.discarded.load(Ordering::SeqCst);
    if link.discarding.load(Ordering::SeqCst) {
        discarded += link.recv_ring.queued_records_where(is_reliable_record);
    }
    let confirm = close_payload(
        code,
        Some(discarded.min(u64::from(u32::MAX)) as u32),
        &reason,
    );
    if let Err(error) =
        write_control(&link, Kind::Close, FLAG_RELIABLE | FLAG_FINAL, &confirm).await
    {
        // No close task of this side would end the link otherwise.
        return link.end_with_error(error, true);
    }
    // Nothing follows the confirmation on the control stream.
    let acked = {
        let mut send = link.control_send.lock().await;
        let _ = send.finish();
        matches!(send.stopped().await, Ok(None))
    };
    if acked {
        link.final_acked.store(true, Ordering::SeqCst);
        link.close_progress.notify_waiters();
    }
    if link.closing.load(Ordering::SeqCst) {
        // Both sides closed at once: this side's close path ends the link.
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.conn.closed()).await;
    let error = (code >= CLOSE_PROTOCOL).then(|| {
        KernelError::new(
            ErrorCode::Connection,
            format!("the peer closed the link with code {code}: {reason}"),
        )
        .with_detail("closeCode", code.to_string())
        .with_detail("reason", reason.clone())
    });
    link.end(Ended {
        code,
        reason,
        by_peer: true,
        error,
    });
}

/// Whether a receive-ring record (a KNUL packet) came on the reliable stream.
fn is_reliable_record(record: &[u8]) -> bool {
    record
        .get(6)
        .is_some_and(|flags| u16::from(*flags) & FLAG_RELIABLE != 0)
}

/// The result the peer's confirmation carries, once it arrived.
fn confirmation(link: &Link) -> Option<KernelResult<()>> {
    let discarded = link
        .lock_peer_close()
        .as_ref()
        .filter(|close| close.last)
        .map(|close| close.discarded)?;
    Some(match discarded {
        0 => Ok(()),
        discarded => Err(KernelError::new(
            ErrorCode::Connection,
            format!(
                "the peer closed at the same time and dropped {discarded} packets it had not read"
            ),
        )
        .with_detail("discarded", discarded.to_string())),
    })
}

/// This side's graceful close: deliver what JS published, tell the peer,
/// wait for its confirmation that it read everything, close the connection.
pub async fn close_gracefully(link: Arc<Link>, code: u32, reason: String, timeout: Duration) {
    let handshake = async {
        // JS published every packet before asking to close: the send pump
        // drains the ring, finishes the stream, and waits for the acks.
        link.send_ring.close();
        link.send_exited.wait().await;
        let sent = link
            .send_outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(Ok(()));
        sent?;
        write_control(
            &link,
            Kind::Close,
            FLAG_RELIABLE,
            &close_payload(code, None, &reason),
        )
        .await?;
        link.close_sent.store(true, Ordering::SeqCst);
        link.close_progress.notify_waiters();
        // The peer confirms once its JS has read up to the end of our stream.
        // When it closed too, it waits for our confirmation as well: this
        // side closes the connection only once that one was acknowledged.
        loop {
            let notified = link.close_progress.notified();
            let answered =
                !link.responding.load(Ordering::SeqCst) || link.final_acked.load(Ordering::SeqCst);
            if let Some(outcome) = confirmation(&link) {
                if answered {
                    return outcome;
                }
            }
            tokio::select! {
                _ = notified => {}
                lost = link.conn.closed() => {
                    // The peer closes once it has everything: its confirmation
                    // may still sit unread in the control stream.
                    let _ = tokio::time::timeout(Duration::from_secs(1), link.control_exited.wait()).await;
                    return confirmation(&link).unwrap_or_else(|| Err(connection_error(&lost)));
                }
            }
        }
    };
    let outcome = match tokio::time::timeout(timeout, handshake).await {
        Ok(outcome) => outcome,
        Err(_) => Err(KernelError::new(
            ErrorCode::Connection,
            format!(
                "the peer did not confirm within {} ms that it read every packet: some may not have been delivered",
                timeout.as_millis()
            ),
        )
        .with_detail("timeoutMs", timeout.as_millis().to_string())),
    };
    match outcome {
        Ok(()) => link.end(Ended {
            code,
            reason,
            by_peer: false,
            error: None,
        }),
        Err(error) => link.end_with_error(error, false),
    }
}
